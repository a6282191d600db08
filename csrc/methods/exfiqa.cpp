// EX-FIQA, one unit: the quality head read at every exit and fused; its options, kernels and registration
// (definition: docs/methods.md).
#include "methods/exfiqa.h"

#include <stdexcept>

#include "methods.h"
#include "methods/vitfiqa.h"
#include "util.h"

namespace vitfiqa {

namespace {

struct ExfiqaOptions {
  std::vector<int64_t> exits;                // {} : all blocks
  std::string normalization = "none";        // none | zscore | minmax (over the batch)
};

const bool kOptions = register_config_section("exfiqa", 30, {
    config_option("exits", &ExfiqaOptions::exits, "EX-FIQA exit blocks (0-based; empty: all)", {}, "exits"),
    config_option("normalization", &ExfiqaOptions::normalization, "EX-FIQA per-exit normalisation over the batch",
                  exit_normalizations(), "exit_normalization"),
});

// ---- kernels ----

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

at::Tensor normalize_exits(const at::Tensor& s, const std::string& normalization) {
  for (const auto& [name, normalize] : exit_normalizers()) {
    if (name != normalization) continue;
    if (!normalize) return s;
    if (s.size(1) < 2) throw std::invalid_argument("exit normalisation '" + normalization + "' needs at least two images");
    return normalize(s);
  }
  throw std::invalid_argument("unknown exit normalisation '" + normalization + "' (" + join(exit_normalizations()) + ")");
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

std::string default_exit_normalization() { return ExfiqaOptions{}.normalization; }

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

namespace {

// ---- the method ----

std::vector<int64_t> exit_blocks(const ScoreConfig& c, const ModelInfo& info) {
  const auto& exits = c.section<ExfiqaOptions>().exits;
  return exits.empty() ? all_blocks(info.num_blocks) : resolve_blocks(exits, info.num_blocks, "exfiqa.exits");
}

std::vector<int64_t> exit_depths(const ScoreConfig& c, const ModelInfo& info) {
  auto depths = exit_blocks(c, info);
  for (auto& d : depths) d += 1;  // 1-based: the papers' l and the depth weights of EX-FIQA-FW
  return depths;
}

std::string exit_column(int64_t depth) { return "exfiqa_exit" + std::to_string(depth); }

// The two fusions' score columns: EX-FIQA-F (mean) and EX-FIQA-FW (depth-weighted).
const ScoreColumn kMeanFused{"exfiqa_F", "EX-FIQA (F)"};
const ScoreColumn kDepthFused{"exfiqa_FW", "EX-FIQA (FW)"};

Method exfiqa_method() {
  Method m;
  m.name = "exfiqa";
  m.title = "EX-FIQA";
  m.score_columns = {kMeanFused, kDepthFused};
  m.description = "EX-FIQA: quality head at every exit, fused by mean (exfiqa_F) and depth weights (exfiqa_FW)";
  m.validate = [](const ScoreConfig& c, const ModelInfo& info) {
    check_choices(c, "exfiqa");
    exit_blocks(c, info);
  };
  m.plan = [](const ScoreConfig& c, const ModelInfo& info, CaptureRequest& req) {
    auto blocks = exit_blocks(c, info);
    req.exit_blocks.insert(req.exit_blocks.end(), blocks.begin(), blocks.end());
    req.exit_output = c.quality_output;
  };
  m.columns = [](const ScoreConfig& c, const ModelInfo& info) {
    std::vector<std::string> cols{kMeanFused.name, kDepthFused.name};  // then one per exit
    for (int64_t d : exit_depths(c, info)) cols.push_back(exit_column(d));
    return cols;
  };
  m.finish = [](const FinishContext& ctx, ScoreResult& out) {
    std::vector<at::Tensor> rows;
    for (int64_t b : exit_blocks(ctx.config, ctx.info)) rows.push_back(quality_scalar(ctx.capture.exits.at(b), ctx.batch));
    auto matrix = at::stack(rows);
    auto depths = exit_depths(ctx.config, ctx.info);
    const auto& norm = ctx.config.section<ExfiqaOptions>().normalization;
    add_score(out, kMeanFused.name, fuse_exits(matrix, depths, "mean", norm));
    add_score(out, kDepthFused.name, fuse_exits(matrix, depths, "depth", norm));
    out.exits = matrix;
    out.exit_depths = depths;
    out.exit_columns.clear();
    for (int64_t d : depths) out.exit_columns.push_back(exit_column(d));
  };
  m.batch_dependence = [](const ScoreConfig& c) -> std::string {
    if (c.section<ExfiqaOptions>().normalization == "none") return "";
    return config_field("exfiqa.normalization").label() + " over a batch makes scores depend on batching; use 'none' "
           "and vitfiqa.fuse_exits over the whole data set";
  };
  return m;
}

}  // namespace

VITFIQA_REGISTER_METHOD(exfiqa_method());

}  // namespace vitfiqa
