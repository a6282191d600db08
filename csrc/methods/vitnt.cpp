// ViTNT-FIQA as a registered method (kernels: vitnt_fiqa.cpp; definition: docs/methods.md).
#include <cmath>

#include "methods.h"
#include "quality_model.h"

namespace vitfiqa {

namespace {

std::vector<int64_t> vitnt_blocks(const ScoreConfig& c, const ModelInfo& info) {
  return c.vitnt.blocks.empty() ? all_blocks(info.num_blocks) : resolve_blocks(c.vitnt.blocks, info.num_blocks, "vitnt.blocks");
}

// Blocks whose post-softmax attention weights the patches (attention weighting only).
std::vector<int64_t> weight_blocks(const ScoreConfig& c, const ModelInfo& info) {
  if (c.vitnt.weighting != "attention") return {};
  auto blocks = vitnt_blocks(c, info);
  return c.vitnt.attention_blocks == "all" ? blocks : std::vector<int64_t>{blocks.back()};
}

Method vitnt_method() {
  Method m;
  m.name = "vitnt";
  m.title = "ViTNT-FIQA";
  m.description = "ViTNT-FIQA: stability of normalised patch tokens across consecutive selected blocks";
  m.validate = [](const ScoreConfig& c, const ModelInfo& info) {
    check_choices(c, "vitnt");
    if (vitnt_blocks(c, info).size() < 2) config_error("vitnt.blocks", "must select at least two blocks (ViTNT-FIQA needs at least two selected blocks)");
    if (!std::isfinite(c.vitnt.scale) || c.vitnt.scale <= 0) config_error("vitnt.scale", "must be a positive number");
  };
  m.plan = [](const ScoreConfig& c, const ModelInfo& info, CaptureRequest& req) {
    auto blocks = vitnt_blocks(c, info);
    // One chain of step distances per pass: a second method asking for another would change ViTNT's steps.
    if (!req.distance_blocks.empty() && req.distance_blocks != blocks)
      throw std::logic_error("two methods ask for step distances over different blocks in one capture pass");
    req.distance_blocks = blocks;
    if (c.return_captures) req.token_blocks.insert(req.token_blocks.end(), blocks.begin(), blocks.end());
    auto probs = weight_blocks(c, info);
    req.probs_blocks.insert(req.probs_blocks.end(), probs.begin(), probs.end());
  };
  m.finish = [](const FinishContext& ctx, ScoreResult& out) {
    const auto& cap = ctx.capture;
    std::optional<at::Tensor> weights;
    auto blocks = weight_blocks(ctx.config, ctx.info);
    if (!blocks.empty()) {
      std::vector<at::Tensor> probs;
      for (int64_t b : blocks) probs.push_back(cap.probs.count(b) ? cap.probs.at(b) : attention_probs(cap.attention.at(b)));
      weights = patch_attention_weights(probs, ctx.prefix);
    }
    auto r = vitnt_score(cap.token_distances, ctx.prefix, ctx.config.vitnt.scale, weights);
    add_score(out, "vitnt", r.score);
    if (ctx.config.heatmaps) add_heatmap(ctx, out, "vitnt", token_grid(r.patch_quality, 0, ctx.grid));
    if (ctx.config.return_captures) {
      add_capture(out, "vitnt_patch_quality", r.patch_quality, /*check_finite=*/true);
      for (int64_t b : vitnt_blocks(ctx.config, ctx.info))
        add_capture(out, "block_tokens." + std::to_string(b), cap.tokens.at(b), /*check_finite=*/false);
    }
  };
  return m;
}

}  // namespace

VITFIQA_REGISTER_METHOD(vitnt_method());

}  // namespace vitfiqa
