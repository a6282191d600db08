// C++ entry points of the TorchScript ops vitfiqa::patch_step_distance(_ln) (ViTNT-FIQA's per-token step distance;
// schemas and per-dispatch-key kernels: ops.cpp). The capture graph calls the ops by name (graph_rewrite.cpp).
#pragma once

#include <ATen/ATen.h>

#include <optional>

namespace vitfiqa {

// ||a/|a| - b/|b||| per token of two [B,N,C] token tensors -> [B,N] float64.
at::Tensor patch_step_distance(const at::Tensor& a, const at::Tensor& b);
// The same on raw block outputs with the final LayerNorm (last axis; weight/bias optional) applied on the fly.
// Equals patch_step_distance(LN(a), LN(b)).
at::Tensor patch_step_distance_ln(const at::Tensor& a, const at::Tensor& b, const std::optional<at::Tensor>& weight,
                                  const std::optional<at::Tensor>& bias, double eps);

}  // namespace vitfiqa
