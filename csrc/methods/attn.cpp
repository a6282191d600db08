// ATTN-FIQA, one unit: its options, its kernels and its registration (definition: docs/methods.md).
// The score is the signed mean of one block's pre-softmax attention logits (default the last block), over heads,
// queries and keys; the heatmap is what each key receives.
#include "methods.h"
#include "methods/heatmap.h"

namespace vitfiqa {

namespace {

struct AttnOptions {
  int64_t block = -1;                        // ATTN-FIQA block (negative counts from the end)
  std::string tokens = "all";                // all | patches: queries and keys the mean runs over
  std::string logits = kDefaultAttnLogits;   // qk | full (capture_types.h: kDefaultAttnLogits)
};

const bool kOptions = register_config_section("attn", 10, {
    config_option("block", &AttnOptions::block, "ATTN-FIQA block (0-based, negative counts from the end)"),
    config_option("tokens", &AttnOptions::tokens, "ATTN-FIQA mean over all tokens (the papers) or patch tokens only",
                  {"all", "patches"}),
    config_option("logits", &AttnOptions::logits, "where the softmax input adds a bias or mask: qk = q.k*scale alone "
                  "(the papers), full = the whole softmax input (checked by the capture: check_attn_logits)",
                  attn_logits_modes()),
});

// ---- kernels ----

// The additive mask's contribution, broadcast to [B,H,N,N] and reduced like the logits.
at::Tensor mask_dd(const AttentionCapture& a) {
  const auto& q = a.q;
  return a.mask->to(at::kDouble).expand({q.size(0), q.size(1), q.size(2), a.k.size(2)});
}

at::ScalarType row_sum_dtype(const at::Tensor& logits) {
  return logits.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// Signed mean of the pre-softmax logits over heads, queries and keys, in float64 accumulation. For fused attention
// it uses mean_ij(q_i . k_j) = mean(q) . mean(k): O(N*C) instead of O(N^2*C). first_token > 0 restricts queries
// and keys to tokens [first_token, N) (patch tokens only).
at::Tensor attn_score(const AttentionCapture& a, int64_t first_token) {
  if (a.kind == AttentionKind::Softmax) {
    auto l = a.logits;
    if (first_token > 0) l = l.narrow(2, first_token, l.size(2) - first_token).narrow(3, first_token, l.size(3) - first_token);
    // Two stages: rows of N keys in float32 (cheap, short sums; float64 for float64 models), then float64
    // over heads and queries, where a signed mean of many values would lose digits in float32.
    return l.sum(-1, false, row_sum_dtype(l)).to(at::kDouble).mean({1, 2}) / static_cast<double>(l.size(3));
  }
  auto q = a.q, k = a.k;
  if (first_token > 0) {
    q = q.narrow(2, first_token, q.size(2) - first_token);
    k = k.narrow(2, first_token, k.size(2) - first_token);
  }
  // mean_i mean_j (q_i . k_j) = (mean_i q_i) . (mean_j k_j), per head; then the head mean.
  auto q_mean = q.mean(2, false, at::kDouble);  // [B,H,D]
  auto k_mean = k.mean(2, false, at::kDouble);
  auto score = (q_mean * k_mean).sum(-1).mean(1) * a.scale;
  if (a.mask && a.mask_in_logits) {
    auto m = mask_dd(a);
    if (first_token > 0) m = m.narrow(2, first_token, m.size(2) - first_token).narrow(3, first_token, m.size(3) - first_token);
    score = score + m.mean({1, 2, 3});
  }
  return score;
}

// What each key receives: head-mean, query-mean of the logits, [B,N] (O(N*C) for fused attention).
at::Tensor attn_key_means(const AttentionCapture& a) {
  if (a.kind == AttentionKind::Softmax) {  // [B,N]: per key, mean over heads and queries
    auto l = a.logits;
    return l.sum(2, false, row_sum_dtype(l)).to(at::kDouble).mean(1) / static_cast<double>(l.size(2));
  }
  auto q_mean = a.q.mean(2, true, at::kDouble);                                               // [B,H,1,D]
  auto per_key = at::matmul(q_mean, a.k.to(at::kDouble).transpose(-2, -1)).squeeze(2) * a.scale;  // [B,H,N]
  auto out = per_key.mean(1);
  if (a.mask && a.mask_in_logits) out = out + mask_dd(a).mean(1).mean(1);
  return out;
}

// ---- the method ----

int64_t attn_block(const ScoreConfig& c, const ModelInfo& info) {
  return resolve_blocks({c.section<AttnOptions>().block}, info.num_blocks, "attn.block").front();
}

Method attn_method() {
  Method m;
  m.name = "attn";
  m.title = "ATTN-FIQA";
  m.description = "ATTN-FIQA: mean pre-softmax attention logit of one block (default the last)";
  m.validate = [](const ScoreConfig& c, const ModelInfo& info) {
    check_attn_logits(c.section<AttnOptions>().logits);  // its message first: the capture's own words
    check_choices(c, "attn");
    attn_block(c, info);
  };
  m.plan = [](const ScoreConfig& c, const ModelInfo& info, CaptureRequest& req) {
    req.logits_blocks.push_back(attn_block(c, info));
    req.attn_logits = c.section<AttnOptions>().logits;
  };
  m.finish = [](const FinishContext& ctx, ScoreResult& out) {
    const auto& o = ctx.config.section<AttnOptions>();
    const int64_t block = attn_block(ctx.config, ctx.info);
    const auto& a = ctx.capture.attention.at(block);
    add_score(out, "attn", attn_score(a, o.tokens == "patches" ? ctx.prefix : 0));
    if (ctx.config.heatmaps) add_heatmap(ctx, out, "attn", token_grid(attn_key_means(a), ctx.prefix, ctx.grid));
    if (ctx.config.return_captures)
      add_capture(out, "attention_logits." + std::to_string(block), attention_logits(a), /*check_finite=*/false);
  };
  return m;
}

}  // namespace

VITFIQA_REGISTER_METHOD(attn_method());

}  // namespace vitfiqa
