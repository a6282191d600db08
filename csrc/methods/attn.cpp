// ATTN-FIQA as a registered method (kernels: attn_fiqa.cpp; definition: docs/methods.md).
#include "methods.h"
#include "quality_model.h"

namespace vitfiqa {

namespace {

int64_t attn_block(const ScoreConfig& c, const ModelInfo& info) {
  return resolve_blocks({c.attn.block}, info.num_blocks, "attn.block").front();
}

Method attn_method() {
  Method m;
  m.name = "attn";
  m.title = "ATTN-FIQA";
  m.description = "ATTN-FIQA: mean pre-softmax attention logit of one block (default the last)";
  m.validate = [](const ScoreConfig& c, const ModelInfo& info) {
    check_choices(c, "attn");
    check_attn_logits(c.attn.logits);
    attn_block(c, info);
  };
  m.plan = [](const ScoreConfig& c, const ModelInfo& info, CaptureRequest& req) {
    req.logits_blocks.push_back(attn_block(c, info));
    req.attn_logits = c.attn.logits;
  };
  m.finish = [](const FinishContext& ctx, ScoreResult& out) {
    const int64_t block = attn_block(ctx.config, ctx.info);
    const auto& a = ctx.capture.attention.at(block);
    add_score(out, "attn", attn_score(a, ctx.config.attn.tokens == "patches" ? ctx.prefix : 0));
    if (ctx.config.heatmaps) add_heatmap(ctx, out, "attn", token_grid(attn_key_means(a), ctx.prefix, ctx.grid));
    if (ctx.config.return_captures)
      add_capture(out, "attention_logits." + std::to_string(block), attention_logits(a), /*check_finite=*/false);
  };
  return m;
}

}  // namespace

VITFIQA_REGISTER_METHOD(attn_method());

}  // namespace vitfiqa
