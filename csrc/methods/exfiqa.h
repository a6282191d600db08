// EX-FIQA's fusion kernels, which Python also calls over a whole data set (vitfiqa.fuse_exits; exfiqa.cpp).
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <string>
#include <vector>

namespace vitfiqa {

// The one vocabulary of exit normalisations (over the batch axis): none, zscore, minmax; the exfiqa.normalization
// field's choices are these.
const std::vector<std::string>& exit_normalizations();
// The default normalisation: the exfiqa.normalization field's default.
std::string default_exit_normalization();
// exit_scores [L,B] for exits at 1-based depths `depths`; fusion "mean" (EX-FIQA-F) or "depth" (EX-FIQA-FW,
// w_l proportional to l), after the normalisation of each exit over the batch.
at::Tensor fuse_exits(const at::Tensor& exit_scores, const std::vector<int64_t>& depths, const std::string& fusion,
                      const std::string& normalization);

}  // namespace vitfiqa
