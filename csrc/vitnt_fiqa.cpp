// ViTNT-FIQA: stability of L2-normalised patch embeddings across consecutive (selected) blocks.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <stdexcept>

#include "methods.h"

namespace vitfiqa {

namespace {

// ||u/|u| - v/|v||| per token of two [B,N,C] float32 CPU tensors (unit stride along C), where u, v are the
// rows themselves or, with kLayerNorm, layer_norm(row) * weight + bias (statistics in float64). One pass of
// statistics and one of dot products over a row that stays in L1; no temporaries. With float32 inputs every
// product is exact in double and sums keep ~1e-16 relative error, so 2 - 2cos suffers none of the
// cancellation it would in float32, even for tiny distances. dist is [B*N] float64, accumulated into.
template <bool kLayerNorm>
void add_step_distances_cpu(const at::Tensor& a, const at::Tensor& b, const float* w, const float* bias, double eps,
                            at::Tensor& dist) {
  const int64_t n = a.size(1), cols = a.size(2);
  const float* pa = a.data_ptr<float>();
  const float* pb = b.data_ptr<float>();
  double* out = dist.data_ptr<double>();
  at::parallel_for(0, a.size(0) * n, 64, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float* x = pa + (r / n) * a.stride(0) + (r % n) * a.stride(1);
      const float* y = pb + (r / n) * b.stride(0) + (r % n) * b.stride(1);
      double mx = 0, my = 0, rx = 1, ry = 1;
      if (kLayerNorm) {
        double sx = 0, sxx = 0, sy = 0, syy = 0;
        for (int64_t c = 0; c < cols; ++c) {
          const double xv = x[c], yv = y[c];
          sx += xv;
          sxx += xv * xv;
          sy += yv;
          syy += yv * yv;
        }
        mx = sx / cols;
        my = sy / cols;
        rx = 1.0 / std::sqrt(std::max(sxx / cols - mx * mx, 0.0) + eps);
        ry = 1.0 / std::sqrt(std::max(syy / cols - my * my, 0.0) + eps);
      }
      double uu = 0, vv = 0, uv = 0;
      for (int64_t c = 0; c < cols; ++c) {
        double u = x[c], v = y[c];
        if (kLayerNorm) {
          const double wc = w ? w[c] : 1.0, bc = bias ? bias[c] : 0.0;
          u = (u - mx) * rx * wc + bc;
          v = (v - my) * ry * wc + bc;
        }
        uu += u * u;
        vv += v * v;
        uv += u * v;
      }
      const double nu = std::max(std::sqrt(uu), 1e-12), nv = std::max(std::sqrt(vv), 1e-12);
      // |u/nu - v/nv|^2 = uu/nu^2 + vv/nv^2 - 2 uv/(nu nv); equals 2 - 2cos unless a norm was clamped.
      const double sq = uu / (nu * nu) + vv / (nv * nv) - 2.0 * uv / (nu * nv);
      out[r] += std::sqrt(std::max(sq, 0.0));
    }
  });
}

at::Tensor float_rows(const at::Tensor& t) {
  auto f = t.to(at::kFloat);
  return f.stride(-1) == 1 ? f : f.contiguous();
}

}  // namespace

at::Tensor patch_step_distance_ln(const at::Tensor& a, const at::Tensor& b, const std::optional<at::Tensor>& weight,
                                  const std::optional<at::Tensor>& bias, double eps) {
  TORCH_CHECK(a.dim() == 3 && a.sizes() == b.sizes(), "patch_step_distance_ln: token tensors must be [B,N,C] of one shape, got ",
              a.sizes(), " and ", b.sizes());
  if (!a.device().is_cpu()) {
    auto ln = [&](const at::Tensor& t) {
      return at::layer_norm(t, {t.size(2)}, weight, bias, eps);
    };
    return patch_step_distance(ln(a), ln(b));
  }
  at::Tensor w, bi;
  if (weight && weight->defined()) w = float_rows(*weight);
  if (bias && bias->defined()) bi = float_rows(*bias);
  at::Tensor dist = at::zeros({a.size(0) * a.size(1)}, a.options().dtype(at::kDouble));
  add_step_distances_cpu<true>(float_rows(a), float_rows(b), w.defined() ? w.data_ptr<float>() : nullptr,
                               bi.defined() ? bi.data_ptr<float>() : nullptr, eps, dist);
  return dist.view({a.size(0), a.size(1)});
}

at::Tensor patch_step_distance(const at::Tensor& a, const at::Tensor& b) {
  TORCH_CHECK(a.dim() == 3 && a.sizes() == b.sizes(), "patch_step_distance: token tensors must be [B,N,C] of one shape, got ",
              a.sizes(), " and ", b.sizes());
  if (a.device().is_cpu()) {
    // CPU: fused single pass over the pair (the tokens are the largest data the methods touch).
    at::Tensor dist = at::zeros({a.size(0) * a.size(1)}, a.options().dtype(at::kDouble));
    add_step_distances_cpu<false>(float_rows(a), float_rows(b), nullptr, nullptr, 0.0, dist);
    return dist.view({a.size(0), a.size(1)});
  }
  // Accelerators: the same definition with tensor ops.
  auto unit = [](const at::Tensor& t) {
    auto f = t.to(at::kFloat);
    return f / f.norm(2, -1, true).clamp_min(1e-12);
  };
  return at::linalg_vector_norm(unit(b) - unit(a), 2, {-1}, false, at::kDouble);
}

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

}  // namespace vitfiqa

TORCH_LIBRARY(vitfiqa, m) {
  m.def("patch_step_distance(Tensor a, Tensor b) -> Tensor", &vitfiqa::patch_step_distance);
  m.def("patch_step_distance_ln(Tensor a, Tensor b, Tensor? weight, Tensor? bias, float eps) -> Tensor",
        &vitfiqa::patch_step_distance_ln);
}
