// ViTNT-FIQA, one unit: its options, its kernels and its registration (definition: docs/methods.md).
// The score is the stability of L2-normalised, final-norm patch tokens across consecutive selected blocks. The per-
// token step distances are computed in the capture graph by the op vitfiqa::patch_step_distance (ops.cpp), so only
// two blocks' tokens are alive at a time; this file reduces them.
#include <cmath>
#include <optional>
#include <stdexcept>

#include "methods.h"
#include "methods/heatmap.h"

namespace vitfiqa {

namespace {

struct VitntOptions {
  std::vector<int64_t> blocks;               // {} : all blocks
  double scale = 8.0;                        // s in 2 / (1 + exp(s d))
  std::string weighting = "uniform";         // uniform | attention
  std::string attention_blocks = "last";     // attention of the last selected block | all selected blocks
};

const bool kOptions = register_config_section("vitnt", 20, {
    config_option("blocks", &VitntOptions::blocks, "ViTNT-FIQA blocks (0-based; empty: all)"),
    config_option("scale", &VitntOptions::scale, "ViTNT-FIQA s in 2 / (1 + exp(s d))"),
    config_option("weighting", &VitntOptions::weighting, "ViTNT-FIQA patch weights: uniform or attention received",
                  {"uniform", "attention"}),
    config_option("attention_blocks", &VitntOptions::attention_blocks, "attention weighting: the last selected "
                  "block's attention (official default) or the mean over all selected blocks", {"last", "all"}),
});

// ---- kernels ----

struct VitntResult {
  at::Tensor score;          // [B]
  at::Tensor patch_quality;  // [B,P] q[p] = 2 / (1 + exp(s d[p]))
  at::Tensor patch_distance; // [B,P] mean step distance d[p]
};

// steps: patch_step_distance of consecutive selected blocks (final-norm outputs), each [B,N].
// weights: optional [B,P] patch weights summing to 1 (attention weighting); uniform mean when absent.
VitntResult vitnt_score(const std::vector<at::Tensor>& steps, int64_t prefix, double scale,
                        const std::optional<at::Tensor>& weights) {
  if (steps.empty()) throw std::invalid_argument("ViTNT-FIQA needs at least two selected blocks");
  const int64_t n = steps.front().size(1) - prefix;
  if (n <= 0) throw std::invalid_argument("no patch tokens left after skipping " + std::to_string(prefix) + " prefix tokens");
  at::Tensor dist = steps.front().narrow(1, prefix, n).clone();
  for (size_t t = 1; t < steps.size(); ++t) dist.add_(steps[t].narrow(1, prefix, n));
  dist.div_(static_cast<double>(steps.size()));
  auto q = 2.0 / (1.0 + at::exp(dist * scale));
  at::Tensor score;
  if (weights) {
    if (weights->sizes() != q.sizes())
      throw std::invalid_argument("ViTNT-FIQA patch weights have shape " + c10::str(weights->sizes()) + ", expected " +
                                  c10::str(q.sizes()));
    score = (q * weights->to(at::kDouble)).sum(1);
  } else {
    score = q.mean(1);
  }
  return {score, q, dist};
}

// Attention weighting: post-softmax attention, head-mean, summed over queries, averaged over the given blocks
// (official last_block_attention_only=False; one block = the default), patch keys, normalised to 1.
at::Tensor patch_attention_weights(const std::vector<at::Tensor>& probs, int64_t prefix) {
  if (probs.empty()) throw std::invalid_argument("attention weighting needs the attention of at least one block");
  at::Tensor received;  // [B,N]: what each key receives over all queries, head-mean, averaged over blocks
  for (const auto& p : probs) {
    auto r = p.mean(1, false, at::kDouble).sum(1);
    received = received.defined() ? received + r : r;
  }
  received = received / static_cast<double>(probs.size());
  auto patches = received.narrow(1, prefix, received.size(1) - prefix);
  return patches / patches.sum(1, true);
}

// ---- the method ----

std::vector<int64_t> vitnt_blocks(const ScoreConfig& c, const ModelInfo& info) {
  const auto& blocks = c.section<VitntOptions>().blocks;
  return blocks.empty() ? all_blocks(info.num_blocks) : resolve_blocks(blocks, info.num_blocks, "vitnt.blocks");
}

// Blocks whose post-softmax attention weights the patches (attention weighting only).
std::vector<int64_t> weight_blocks(const ScoreConfig& c, const ModelInfo& info) {
  const auto& o = c.section<VitntOptions>();
  if (o.weighting != "attention") return {};
  auto blocks = vitnt_blocks(c, info);
  return o.attention_blocks == "all" ? blocks : std::vector<int64_t>{blocks.back()};
}

Method vitnt_method() {
  Method m;
  m.name = "vitnt";
  m.title = "ViTNT-FIQA";
  m.description = "ViTNT-FIQA: stability of normalised patch tokens across consecutive selected blocks";
  m.validate = [](const ScoreConfig& c, const ModelInfo& info) {
    check_choices(c, "vitnt");
    const double scale = c.section<VitntOptions>().scale;
    if (vitnt_blocks(c, info).size() < 2) config_error("vitnt.blocks", "must select at least two blocks (ViTNT-FIQA needs at least two selected blocks)");
    if (!std::isfinite(scale) || scale <= 0) config_error("vitnt.scale", "must be a positive number");
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
    auto r = vitnt_score(cap.token_distances, ctx.prefix, ctx.config.section<VitntOptions>().scale, weights);
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
