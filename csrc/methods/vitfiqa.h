// ViT-FIQA's kernel, which EX-FIQA reads at every exit (vitfiqa.cpp).
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

namespace vitfiqa {

// The quality head's output at one exit -> [B] float64; a clear error unless it is one value per image.
at::Tensor quality_scalar(const at::Tensor& exit_output, int64_t batch);

}  // namespace vitfiqa
