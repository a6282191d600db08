// EX-FIQA: fusion of the quality head read at every block exit of a ViT-FIQA model.
#include <stdexcept>

#include "methods.h"

namespace vitfiqa {

namespace {

at::Tensor zscore(const at::Tensor& s) {
  auto sd = s.std(1, /*unbiased=*/false, true);
  return (s - s.mean(1, true)) / sd.clamp_min(1e-12);
}

at::Tensor minmax(const at::Tensor& s) {
  auto lo = std::get<0>(s.min(1, true));
  auto hi = std::get<0>(s.max(1, true));
  return (s - lo) / (hi - lo).clamp_min(1e-12);
}

// The one table of exit normalisations: name -> what it does over the batch axis (nullptr: nothing).
using ExitNormalizer = at::Tensor (*)(const at::Tensor&);
const std::vector<std::pair<std::string, ExitNormalizer>>& exit_normalizers() {
  static const std::vector<std::pair<std::string, ExitNormalizer>> table{
      {"none", nullptr}, {"zscore", &zscore}, {"minmax", &minmax}};
  return table;
}

}  // namespace

const std::vector<std::string>& exit_normalizations() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> n;
    for (const auto& entry : exit_normalizers()) n.push_back(entry.first);
    return n;
  }();
  return names;
}

at::Tensor normalize_exits(const at::Tensor& s, const std::string& normalization) {
  for (const auto& [name, normalize] : exit_normalizers()) {
    if (name != normalization) continue;
    if (!normalize) return s;
    if (s.size(1) < 2) throw std::invalid_argument("exit normalisation '" + normalization + "' needs at least two images");
    return normalize(s);
  }
  std::string known;
  for (const auto& n : exit_normalizations()) known += (known.empty() ? "" : ", ") + n;
  throw std::invalid_argument("unknown exit normalisation '" + normalization + "' (" + known + ")");
}

at::Tensor quality_scalar(const at::Tensor& exit_output, int64_t batch) {
  auto t = exit_output.reshape({batch, -1});
  if (t.size(1) != 1)
    throw std::invalid_argument("the quality output has " + std::to_string(t.size(1)) +
                                " values per image; ViT-FIQA models return (embedding, quality[B,1]) - pick it with quality_output");
  return t.squeeze(1).to(at::kDouble);
}

at::Tensor fuse_exits(const at::Tensor& exit_scores, const std::vector<int64_t>& depths, const std::string& fusion,
                      const std::string& normalization) {
  if (exit_scores.dim() != 2 || exit_scores.size(0) == 0)
    throw std::invalid_argument("exit scores must be a non-empty [L,B] matrix");
  if (static_cast<int64_t>(depths.size()) != exit_scores.size(0))
    throw std::invalid_argument("one depth per exit is needed");
  auto s = normalize_exits(exit_scores.to(at::kDouble), normalization);
  if (fusion == "mean") return s.mean(0);
  if (fusion == "depth") {
    auto w = at::tensor(std::vector<double>(depths.begin(), depths.end()), s.options());
    if ((w <= 0).any().item<bool>()) throw std::invalid_argument("exit depths must be positive (1-based)");
    w = w / w.sum();
    return (s * w.unsqueeze(1)).sum(0);
  }
  throw std::invalid_argument("unknown exit fusion '" + fusion + "' (mean, depth)");
}

}  // namespace vitfiqa
