#include "quality_model.h"

#include <algorithm>
#include <cmath>
#include <set>
#include <stdexcept>

#include "methods.h"

namespace vitfiqa {

namespace {

std::vector<int64_t> resolve_blocks(const std::vector<int64_t>& blocks, int64_t num_blocks, const char* what) {
  std::vector<int64_t> out;
  for (int64_t b : blocks) {
    int64_t r = b < 0 ? b + num_blocks : b;
    if (r < 0 || r >= num_blocks)
      throw std::out_of_range(std::string(what) + " block " + std::to_string(b) + " is out of range (model has " +
                              std::to_string(num_blocks) + " blocks)");
    out.push_back(r);
  }
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

std::vector<int64_t> all_blocks(int64_t n) {
  std::vector<int64_t> v(n);
  for (int64_t i = 0; i < n; ++i) v[i] = i;
  return v;
}

// Prefix tokens (CLS, quality, register tokens) and the patch grid for N tokens.
std::pair<int64_t, std::vector<int64_t>> token_layout(int64_t n, const std::vector<int64_t>& conv_grid,
                                                      const ScoreOptions& o) {
  std::vector<int64_t> grid = o.grid.empty() ? conv_grid : o.grid;
  if (o.prefix_tokens >= 0) {
    if (grid.empty()) {
      auto side = static_cast<int64_t>(std::lround(std::sqrt(static_cast<double>(n - o.prefix_tokens))));
      if (side * side == n - o.prefix_tokens) grid = {side, side};
    }
    return {o.prefix_tokens, grid};
  }
  if (!grid.empty()) {
    int64_t prefix = n - grid[0] * grid[1];
    if (prefix < 0)
      throw std::invalid_argument("the patch grid " + std::to_string(grid[0]) + "x" + std::to_string(grid[1]) +
                                  " has more cells than the " + std::to_string(n) + " tokens; pass prefix_tokens");
    return {prefix, grid};
  }
  for (int64_t p = 0; p <= 8 && p < n; ++p) {
    auto side = static_cast<int64_t>(std::lround(std::sqrt(static_cast<double>(n - p))));
    if (side * side == n - p) return {p, {side, side}};
  }
  throw std::invalid_argument("cannot tell prefix tokens from patches for " + std::to_string(n) +
                              " tokens; pass prefix_tokens and grid");
}

}  // namespace

std::map<std::string, at::Tensor> score(CaptureModel& model, const at::Tensor& images, const ScoreOptions& o) {
  static const std::set<std::string> known{"attn", "vitnt", "vitfiqa", "exfiqa"};
  std::set<std::string> methods;
  for (auto& m : o.methods) {
    if (!known.count(m)) throw std::invalid_argument("unknown method '" + m + "' (attn, vitnt, vitfiqa, exfiqa)");
    methods.insert(m);
  }
  if (methods.empty() && !o.return_captures) throw std::invalid_argument("no method requested");
  if (o.vitnt_weighting != "uniform" && o.vitnt_weighting != "attention")
    throw std::invalid_argument("vitnt_weighting must be 'uniform' or 'attention', got '" + o.vitnt_weighting + "'");
  if (o.heatmaps) {  // checked before the forward pass, which could be long
    static const std::set<std::string> modes{"image", "global", "range", "none"};
    if (!modes.count(o.heatmap_normalize))
      throw std::invalid_argument("heatmap normalisation must be image, global, range or none, got '" +
                                  o.heatmap_normalize + "'");
    if ((o.heatmap_normalize == "range") != !o.heatmap_range.empty())
      throw std::invalid_argument("a heatmap value range goes with (and only with) heatmap normalisation 'range'");
  }
  if (o.vitnt_attention_blocks != "last" && o.vitnt_attention_blocks != "all")
    throw std::invalid_argument("vitnt_attention_blocks must be 'last' or 'all', got '" + o.vitnt_attention_blocks + "'");
  if (!std::isfinite(o.vitnt_scale) || o.vitnt_scale <= 0) throw std::invalid_argument("vitnt_scale must be a positive number");

  const int64_t L = model.info().num_blocks;
  CaptureRequest req;
  const bool attn = methods.count("attn"), vitnt = methods.count("vitnt");
  const bool vitfiqa = methods.count("vitfiqa"), exfiqa = methods.count("exfiqa");
  int64_t attn_block = resolve_blocks({o.attn_block}, L, "ATTN-FIQA").front();
  if (attn) req.logits_blocks.push_back(attn_block);
  check_attn_logits(o.attn_logits);
  req.attn_logits = o.attn_logits;
  std::vector<int64_t> vitnt_blocks = o.vitnt_blocks.empty() ? all_blocks(L) : resolve_blocks(o.vitnt_blocks, L, "ViTNT-FIQA");
  if (vitnt) {
    if (vitnt_blocks.size() < 2) throw std::invalid_argument("ViTNT-FIQA needs at least two selected blocks");
    req.token_blocks = vitnt_blocks;
    req.token_distances = true;
    req.tokens_output = o.return_captures;
    if (o.vitnt_weighting == "attention") {
      if (o.vitnt_attention_blocks == "all") req.probs_blocks = vitnt_blocks;
      else req.probs_blocks.push_back(vitnt_blocks.back());
    }
  }
  std::vector<int64_t> exits = o.exits.empty() ? all_blocks(L) : resolve_blocks(o.exits, L, "EX-FIQA exit");
  if (vitfiqa) req.exit_blocks.push_back(L - 1);
  if (exfiqa) req.exit_blocks.insert(req.exit_blocks.end(), exits.begin(), exits.end());
  std::sort(req.exit_blocks.begin(), req.exit_blocks.end());
  req.exit_blocks.erase(std::unique(req.exit_blocks.begin(), req.exit_blocks.end()), req.exit_blocks.end());
  req.exit_output = o.quality_output;

  CaptureResult cap = model.run(images, req);
  std::map<std::string, at::Tensor> out;
  const int64_t B = images.size(0);
  std::vector<int64_t> out_hw = o.heatmap_size.empty() ? std::vector<int64_t>{images.size(2), images.size(3)} : o.heatmap_size;

  int64_t n_tokens = -1;
  if (!cap.attention.empty()) {
    auto& a = cap.attention.begin()->second;
    n_tokens = a.kind == AttentionKind::Softmax ? a.logits.size(-1) : a.q.size(2);
  } else if (!cap.token_distances.empty()) {
    n_tokens = cap.token_distances.front().size(1);
  }
  int64_t prefix = 0;
  std::vector<int64_t> grid;
  if (n_tokens > 0) std::tie(prefix, grid) = token_layout(n_tokens, cap.patch_grid, o);

  if (attn) {
    const auto& a = cap.attention.at(attn_block);
    out["attn"] = attn_score(a, o.attn_patches_only ? prefix : 0);
    if (o.heatmaps) {
      out["attn_heatmap_grid"] = token_grid(attn_key_means(a), prefix, grid);
      out["attn_heatmap"] = render_heatmaps(out["attn_heatmap_grid"], out_hw, o.heatmap_normalize, o.heatmap_range);
    }
    if (o.return_captures) out["attention_logits." + std::to_string(attn_block)] = attention_logits(a);
  }
  if (vitnt) {
    std::optional<at::Tensor> weights;
    if (o.vitnt_weighting == "attention") {
      std::vector<at::Tensor> probs;
      for (int64_t b : req.probs_blocks)
        probs.push_back(cap.probs.count(b) ? cap.probs.at(b) : attention_probs(cap.attention.at(b)));
      weights = patch_attention_weights(probs, prefix);
    }
    auto r = vitnt_score(cap.token_distances, prefix, o.vitnt_scale, weights);
    out["vitnt"] = r.score;
    if (o.heatmaps) {
      out["vitnt_heatmap_grid"] = token_grid(r.patch_quality, 0, grid);
      out["vitnt_heatmap"] = render_heatmaps(out["vitnt_heatmap_grid"], out_hw, o.heatmap_normalize, o.heatmap_range);
    }
    if (o.return_captures) {
      out["vitnt_patch_quality"] = r.patch_quality;
      for (int64_t b : vitnt_blocks) out["block_tokens." + std::to_string(b)] = cap.tokens.at(b);
    }
  }
  auto exit_scalar = [&](int64_t b) {
    auto t = cap.exits.at(b).reshape({B, -1});
    if (t.size(1) != 1)
      throw std::invalid_argument("the quality output has " + std::to_string(t.size(1)) +
                                  " values per image; ViT-FIQA models return (embedding, quality[B,1]) - pick it with quality_output");
    return t.squeeze(1).to(at::kDouble);
  };
  if (vitfiqa) out["vitfiqa"] = exit_scalar(L - 1);
  if (exfiqa) {
    std::vector<at::Tensor> rows;
    std::vector<int64_t> depths;
    for (int64_t b : exits) {
      rows.push_back(exit_scalar(b));
      depths.push_back(b + 1);
    }
    auto matrix = at::stack(rows);
    out["exfiqa_exits"] = matrix;
    out["exfiqa_F"] = fuse_exits(matrix, depths, "mean", o.exit_normalization);
    out["exfiqa_FW"] = fuse_exits(matrix, depths, "depth", o.exit_normalization);
  }
  for (auto& [name, t] : out) {
    if (name.rfind("attention_logits", 0) == 0 || name.rfind("block_tokens", 0) == 0) continue;
    if (!at::isfinite(t).all().item<bool>())
      throw std::invalid_argument("method output '" + name + "' is not finite (NaN or Inf in the model's activations?)");
  }
  return out;
}

}  // namespace vitfiqa
