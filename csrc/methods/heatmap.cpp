// The shared heatmaps: the heatmap options section and the grid / render kernels (heatmap.h).
#include "methods/heatmap.h"

#include <cmath>
#include <stdexcept>

#include "util.h"

namespace vitfiqa {

namespace {

// A fixed global range: two finite numbers, low <= high (the one check, for the config and render_heatmaps).
bool is_value_range(const std::vector<double>& r) {
  return r.size() == 2 && std::isfinite(r[0]) && std::isfinite(r[1]) && r[1] >= r[0];
}

const bool kRegistered = register_config_section("heatmap", 90, {
    config_option("size", &HeatmapOptions::size, "heatmap (height, width); empty: the input's"),
    config_option("normalize", &HeatmapOptions::normalize, "min-max on the patch grid: per image, global (over the "
                  "call, or heatmap.range), or none", heatmap_normalizations()),
    config_option("range", &HeatmapOptions::range, "(low, high): a fixed global range, e.g. a data set's"),
});

}  // namespace

void validate_heatmap_options(const ScoreConfig& c) {
  check_choices(c, "heatmap");
  const auto& h = c.section<HeatmapOptions>();
  if (!h.size.empty() && (h.size.size() != 2 || h.size[0] <= 0 || h.size[1] <= 0))
    config_error("heatmap.size", "must be empty (the input's size) or two positive integers (height, width)");
  if (!h.range.empty()) {
    if (h.normalize != "global")
      config_error("heatmap.range", "is a fixed global range: it goes with heatmap.normalize (heatmap_normalize) "
                                    "'global'");
    if (!is_value_range(h.range))
      config_error("heatmap.range", "must be a value range of two finite numbers (low, high) with low <= high");
  }
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
      if (!is_value_range(value_range))
        throw std::invalid_argument("heatmap value range must be two finite numbers (low, high) with low <= high");
      lo = at::scalar_tensor(value_range[0], map.options());
      hi = at::scalar_tensor(value_range[1], map.options());
    } else {
      throw std::invalid_argument("unknown heatmap normalisation '" + mode + "' (" + join(heatmap_normalizations()) + ")");
    }
    // The official expression, in float32 like the official numpy arrays; a constant map becomes zeros.
    map = ((map - lo) / (hi - lo + 1e-8f)).clamp(0.0, 1.0);
  }
  if (!out_hw.empty())
    map = at::upsample_bilinear2d(map, {out_hw[0], out_hw[1]}, /*align_corners=*/false);
  return map.squeeze(1);
}

}  // namespace vitfiqa
