// ATTN-FIQA: magnitude of the final block's pre-softmax attention logits, and the per-patch heatmap.
#include <cmath>
#include <stdexcept>

#include "methods.h"

namespace vitfiqa {

namespace {

// The additive mask's contribution, broadcast to [B,H,N,N] and reduced like the logits.
at::Tensor mask_dd(const AttentionCapture& a) {
  const auto& q = a.q;
  return a.mask->to(at::kDouble).expand({q.size(0), q.size(1), q.size(2), a.k.size(2)});
}

at::ScalarType row_sum_dtype(const at::Tensor& logits) {
  return logits.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

}  // namespace

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

at::Tensor attention_logits(const AttentionCapture& a) {
  if (a.kind == AttentionKind::Softmax) return a.logits;
  auto l = at::matmul(a.q * a.scale, a.k.transpose(-2, -1));
  if (a.mask && a.mask_in_logits) l = l + *a.mask;
  return l;
}

at::Tensor attention_probs(const AttentionCapture& a) {
  if (a.kind == AttentionKind::Softmax) return at::softmax(a.logits.to(at::kFloat), -1);
  auto l = at::matmul(a.q * a.scale, a.k.transpose(-2, -1));
  if (a.mask) l = l + *a.mask;  // the model's own attention: its mask applies whatever the logits choice
  return at::softmax(l.to(at::kFloat), -1);
}

at::Tensor token_grid(const at::Tensor& per_token, int64_t prefix, const std::vector<int64_t>& grid) {
  if (grid.size() != 2) throw std::invalid_argument("the patch grid is unknown; pass grid=(h, w)");
  int64_t patches = grid[0] * grid[1];
  if (per_token.size(1) - prefix != patches)
    throw std::invalid_argument("token count " + std::to_string(per_token.size(1)) + " minus " + std::to_string(prefix) +
                                " prefix tokens does not fill a " + std::to_string(grid[0]) + "x" +
                                std::to_string(grid[1]) + " patch grid");
  return per_token.narrow(1, prefix, patches).to(at::kFloat).reshape({-1, grid[0], grid[1]});
}

const std::vector<std::string>& heatmap_normalizations() {
  static const std::vector<std::string> modes{"image", "global", "none"};
  return modes;
}

at::Tensor render_heatmaps(const at::Tensor& grids, const std::vector<int64_t>& out_hw, const std::string& mode,
                           const std::vector<double>& value_range) {
  if (!grids.defined() || grids.dim() != 3 || grids.size(0) == 0)
    throw std::invalid_argument("heatmap grids must be a non-empty [B,gh,gw] tensor");
  if (!out_hw.empty() && (out_hw.size() != 2 || out_hw[0] <= 0 || out_hw[1] <= 0))
    throw std::invalid_argument("heatmap size must be two positive integers (height, width)");
  auto map = grids.to(at::kFloat).unsqueeze(1);  // [B,1,gh,gw]
  if (mode != "global" && !value_range.empty())
    throw std::invalid_argument("a heatmap value range is a fixed global range: use it with normalisation 'global'");
  if (mode != "none") {
    at::Tensor lo, hi;
    if (mode == "image") {
      auto flat = map.flatten(1);
      lo = std::get<0>(flat.min(1, true)).view({-1, 1, 1, 1});
      hi = std::get<0>(flat.max(1, true)).view({-1, 1, 1, 1});
    } else if (mode == "global" && value_range.empty()) {
      lo = map.min();
      hi = map.max();
    } else if (mode == "global") {
      if (value_range.size() != 2 || !std::isfinite(value_range[0]) || !std::isfinite(value_range[1]) ||
          !(value_range[1] >= value_range[0]))
        throw std::invalid_argument("heatmap value range must be two finite numbers (low, high) with low <= high");
      lo = at::scalar_tensor(value_range[0], map.options());
      hi = at::scalar_tensor(value_range[1], map.options());
    } else {
      std::string known;
      for (const auto& m : heatmap_normalizations()) known += (known.empty() ? "" : ", ") + m;
      throw std::invalid_argument("unknown heatmap normalisation '" + mode + "' (" + known + ")");
    }
    // The official expression, in float32 like the official numpy arrays; a constant map becomes zeros.
    map = ((map - lo) / (hi - lo + 1e-8f)).clamp(0.0, 1.0);
  }
  if (!out_hw.empty())
    map = at::upsample_bilinear2d(map, {out_hw[0], out_hw[1]}, /*align_corners=*/false);
  return map.squeeze(1);
}

}  // namespace vitfiqa
