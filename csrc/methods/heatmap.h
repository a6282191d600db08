// The heatmaps every method shares: the heatmap options section (heatmap.size, heatmap.normalize, heatmap.range)
// and the kernels that turn per-token values into patch grids and grids into normalised heatmaps (heatmap.cpp).
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <string>
#include <vector>

#include "config.h"

namespace vitfiqa {

struct HeatmapOptions {
  std::vector<int64_t> size;                 // {} : the input's H, W
  std::string normalize = "image";           // image | global | none (render_heatmaps)
  std::vector<double> range;                 // {low, high}: a fixed range for "global" instead of the batch's
};

// The model-free checks of the section (validate_common runs them when heatmaps are on).
void validate_heatmap_options(const ScoreConfig& config);

// [B,N] per-token values -> drop prefix tokens -> [B,gh,gw] patch grid (float32, raw values).
at::Tensor token_grid(const at::Tensor& per_token, int64_t prefix, const std::vector<int64_t>& grid);
// Patch grids [B,gh,gw] -> [B,H,W] float32 heatmaps, normalised as the official ATTN-FIQA plot script does:
// on the patch grid, BEFORE the bilinear resize, (g - lo) / (hi - lo + 1e-8) clipped to [0, 1], with
//   "image":  lo, hi = min, max of each image's grid (official normalize_global=False),
//   "global": lo, hi = min, max over every grid given (official normalize_global=True: all images shown),
//             or value_range when given (e.g. a data set's min and max, collected over several calls),
//   "none":   raw values.
// The one vocabulary of modes, in this order; the heatmap.normalize field's choices are these.
const std::vector<std::string>& heatmap_normalizations();
// Then bilinear resize (align_corners=False, as cv2.INTER_LINEAR) to out_hw ({} keeps the grid).
at::Tensor render_heatmaps(const at::Tensor& grids, const std::vector<int64_t>& out_hw, const std::string& mode,
                           const std::vector<double>& value_range);

}  // namespace vitfiqa
