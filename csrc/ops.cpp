// The TorchScript ops vitfiqa::patch_step_distance and vitfiqa::patch_step_distance_ln (ViTNT-FIQA's per-token
// step distance between two blocks), which the rewritten capture graph calls (graph_rewrite.cpp) to reduce each
// pair of token blocks as soon as both exist. Registered the PyTorch way: each schema once, then a kernel per
// dispatch key: CPU, a fused single pass over the pair (the tokens are the largest data the methods touch); CUDA,
// the same definition in tensor ops; Meta, shapes only (fake tensors, torch.compile); Autograd, the stock
// not-implemented kernel: the ops are not differentiable, and a backward through them raises instead of
// silently dropping their gradient.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/autograd_not_implemented_fallback.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>

#include "ops.h"

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

// The checks every kernel makes (SymInt sizes: the Meta kernel sees symbolic shapes under torch.compile).
void check_token_pair(const char* op, const at::Tensor& a, const at::Tensor& b) {
  TORCH_CHECK(a.dim() == 3 && a.sym_sizes() == b.sym_sizes(), op, ": token tensors must be [B,N,C] of one shape, got ",
              a.sym_sizes(), " and ", b.sym_sizes());
}

void check_norm_parameter(const char* what, const at::Tensor& a, const std::optional<at::Tensor>& p) {
  if (!p || !p->defined()) return;
  TORCH_CHECK(p->dim() == 1 && p->sym_size(0) == a.sym_size(2), "patch_step_distance_ln: the norm's ", what,
              " must be 1-D with the tokens' ", a.sym_size(2), " channels, got shape ", p->sym_sizes());
}

at::Tensor cpu_patch_step_distance(const at::Tensor& a, const at::Tensor& b) {
  check_token_pair("patch_step_distance", a, b);
  at::Tensor dist = at::zeros({a.size(0) * a.size(1)}, a.options().dtype(at::kDouble));
  add_step_distances_cpu<false>(float_rows(a), float_rows(b), nullptr, nullptr, 0.0, dist);
  return dist.view({a.size(0), a.size(1)});
}

at::Tensor cpu_patch_step_distance_ln(const at::Tensor& a, const at::Tensor& b, const std::optional<at::Tensor>& weight,
                                      const std::optional<at::Tensor>& bias, double eps) {
  check_token_pair("patch_step_distance_ln", a, b);
  check_norm_parameter("weight", a, weight);
  check_norm_parameter("bias", a, bias);
  at::Tensor w, bi;
  if (weight && weight->defined()) w = float_rows(*weight);
  if (bias && bias->defined()) bi = float_rows(*bias);
  at::Tensor dist = at::zeros({a.size(0) * a.size(1)}, a.options().dtype(at::kDouble));
  add_step_distances_cpu<true>(float_rows(a), float_rows(b), w.defined() ? w.data_ptr<float>() : nullptr,
                               bi.defined() ? bi.data_ptr<float>() : nullptr, eps, dist);
  return dist.view({a.size(0), a.size(1)});
}

// Accelerators: the same definition with tensor ops (float32 unit vectors, float64 norm of the difference).
at::Tensor tensor_ops_patch_step_distance(const at::Tensor& a, const at::Tensor& b) {
  check_token_pair("patch_step_distance", a, b);
  auto unit = [](const at::Tensor& t) {
    auto f = t.to(at::kFloat);
    return f / f.norm(2, -1, true).clamp_min(1e-12);
  };
  return at::linalg_vector_norm(unit(b) - unit(a), 2, {-1}, false, at::kDouble);
}

at::Tensor tensor_ops_patch_step_distance_ln(const at::Tensor& a, const at::Tensor& b,
                                             const std::optional<at::Tensor>& weight,
                                             const std::optional<at::Tensor>& bias, double eps) {
  check_token_pair("patch_step_distance_ln", a, b);
  check_norm_parameter("weight", a, weight);
  check_norm_parameter("bias", a, bias);
  auto ln = [&](const at::Tensor& t) { return at::layer_norm(t, {t.size(2)}, weight, bias, eps); };
  return tensor_ops_patch_step_distance(ln(a), ln(b));
}

at::Tensor meta_patch_step_distance(const at::Tensor& a, const at::Tensor& b) {
  check_token_pair("patch_step_distance", a, b);
  return at::empty_symint({a.sym_size(0), a.sym_size(1)}, a.options().dtype(at::kDouble));
}

at::Tensor meta_patch_step_distance_ln(const at::Tensor& a, const at::Tensor& b, const std::optional<at::Tensor>& weight,
                                       const std::optional<at::Tensor>& bias, double /*eps*/) {
  check_norm_parameter("weight", a, weight);
  check_norm_parameter("bias", a, bias);
  return meta_patch_step_distance(a, b);
}

}  // namespace

// The C++ entry points go through the dispatcher, like the graph's calls: one kernel per device, chosen in one place.
at::Tensor patch_step_distance(const at::Tensor& a, const at::Tensor& b) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("vitfiqa::patch_step_distance", "")
                             .typed<at::Tensor(const at::Tensor&, const at::Tensor&)>();
  return op.call(a, b);
}

at::Tensor patch_step_distance_ln(const at::Tensor& a, const at::Tensor& b, const std::optional<at::Tensor>& weight,
                                  const std::optional<at::Tensor>& bias, double eps) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("vitfiqa::patch_step_distance_ln", "")
                             .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                                               const std::optional<at::Tensor>&, double)>();
  return op.call(a, b, weight, bias, eps);
}

}  // namespace vitfiqa

TORCH_LIBRARY(vitfiqa, m) {
  m.def("patch_step_distance(Tensor a, Tensor b) -> Tensor");
  m.def("patch_step_distance_ln(Tensor a, Tensor b, Tensor? weight, Tensor? bias, float eps) -> Tensor");
}

TORCH_LIBRARY_IMPL(vitfiqa, CPU, m) {
  m.impl("patch_step_distance", &vitfiqa::cpu_patch_step_distance);
  m.impl("patch_step_distance_ln", &vitfiqa::cpu_patch_step_distance_ln);
}

TORCH_LIBRARY_IMPL(vitfiqa, CUDA, m) {
  m.impl("patch_step_distance", &vitfiqa::tensor_ops_patch_step_distance);
  m.impl("patch_step_distance_ln", &vitfiqa::tensor_ops_patch_step_distance_ln);
}

TORCH_LIBRARY_IMPL(vitfiqa, Meta, m) {
  m.impl("patch_step_distance", &vitfiqa::meta_patch_step_distance);
  m.impl("patch_step_distance_ln", &vitfiqa::meta_patch_step_distance_ln);
}

TORCH_LIBRARY_IMPL(vitfiqa, Autograd, m) {
  m.impl("patch_step_distance", torch::autograd::autogradNotImplementedFallback());
  m.impl("patch_step_distance_ln", torch::autograd::autogradNotImplementedFallback());
}
