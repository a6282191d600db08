#include "quality_model.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>

#include "methods/heatmap.h"
#include "util.h"

namespace vitfiqa {

namespace {

// The top-level fields: the scorer's own (ScoreConfig's members).
const bool kOptions = register_config_section("", 0, {
    config_option("methods", &ScoreConfig::methods, "quality methods to compute (vitfiqa.METHODS lists them)"),
    config_option("heatmaps", &ScoreConfig::heatmaps, "also return per-method heatmaps"),
    config_option("return_captures", &ScoreConfig::return_captures, "also return the raw captures the methods read"),
    config_option("prefix_tokens", &ScoreConfig::prefix_tokens,
                  "CLS/quality/register tokens before the patches; -1: from the patch grid"),
    config_option("grid", &ScoreConfig::grid, "patch grid (h, w); empty: from the patch embedding"),
    config_option("quality_output", &ScoreConfig::quality_output,
                  "which model output is the quality (ViT-FIQA: (embedding, quality) -> -1)"),
});

std::vector<Method>& registry() {
  static std::vector<Method> methods;  // function-local: filled from other files' static initialisers
  return methods;
}

std::string method_names() {
  std::vector<std::string> names;
  for (const auto& m : method_registry()) names.push_back(m.name);
  return join(names);
}

// Prefix tokens (CLS, quality, register tokens) and the patch grid for N tokens.
std::pair<int64_t, std::vector<int64_t>> token_layout(int64_t n, const std::vector<int64_t>& conv_grid,
                                                      const ScoreConfig& c) {
  std::vector<int64_t> grid = c.grid.empty() ? conv_grid : c.grid;
  if (c.prefix_tokens >= 0) {
    if (grid.empty()) {
      auto side = static_cast<int64_t>(std::lround(std::sqrt(static_cast<double>(n - c.prefix_tokens))));
      if (side * side == n - c.prefix_tokens) grid = {side, side};
    }
    return {c.prefix_tokens, grid};
  }
  if (!grid.empty()) {
    int64_t prefix = n - grid[0] * grid[1];
    if (prefix < 0)
      throw std::invalid_argument("the patch grid " + std::to_string(grid[0]) + "x" + std::to_string(grid[1]) +
                                  " has more cells than the " + std::to_string(n) + " tokens; pass prefix_tokens");
    return {prefix, grid};
  }
  if (auto found = square_token_grid(n)) return {found->first, {found->second, found->second}};
  throw std::invalid_argument("cannot tell prefix tokens from patches for " + std::to_string(n) +
                              " tokens; pass prefix_tokens and grid");
}

void check_finite(const std::string& name, const at::Tensor& t) {
  if (!at::isfinite(t).all().item<bool>())
    throw std::invalid_argument("method output '" + name + "' is not finite (NaN or Inf in the model's activations?)");
}

}  // namespace

std::optional<std::pair<int64_t, int64_t>> square_token_grid(int64_t n) {
  for (int64_t p = 0; p <= 8 && p < n; ++p) {
    auto side = static_cast<int64_t>(std::lround(std::sqrt(static_cast<double>(n - p))));
    if (side * side == n - p) return std::make_pair(p, side);
  }
  return std::nullopt;
}

std::vector<int64_t> resolve_blocks(const std::vector<int64_t>& blocks, int64_t num_blocks, const std::string& name) {
  std::vector<int64_t> out;
  for (int64_t b : blocks) {
    int64_t r = b < 0 ? b + num_blocks : b;
    if (r < 0 || r >= num_blocks)
      throw std::out_of_range(config_field(name).label() + ": block " + std::to_string(b) +
                              " is out of range (model has " + std::to_string(num_blocks) + " blocks)");
    out.push_back(r);
  }
  return sorted_unique(std::move(out));
}

std::vector<int64_t> all_blocks(int64_t num_blocks) {
  std::vector<int64_t> v(num_blocks);
  for (int64_t i = 0; i < num_blocks; ++i) v[i] = i;
  return v;
}

void validate_common(const ScoreConfig& c) {
  if (c.methods.empty() && !c.return_captures) throw std::invalid_argument("no method requested");
  for (const auto& m : c.methods) find_method(m);
  if (c.prefix_tokens < -1) config_error("prefix_tokens", "must be -1 (from the patch grid) or a token count");
  if (!c.grid.empty() && (c.grid.size() != 2 || c.grid[0] <= 0 || c.grid[1] <= 0))
    config_error("grid", "must be empty (from the model) or two positive integers (h, w)");
  if (!c.heatmaps) return;  // the heatmap section serves heatmaps only
  validate_heatmap_options(c);
}

std::string batch_dependence(const ScoreConfig& c) {
  for (const auto& name : c.methods) {
    const Method& m = find_method(name);
    std::string why = m.batch_dependence ? m.batch_dependence(c) : "";
    if (!why.empty()) return why;
  }
  return "";
}

bool register_method(Method method) {
  auto& r = registry();
  if (method.title.empty()) method.title = method.name;
  if (method.score_columns.empty()) method.score_columns = {{method.name, method.title}};
  for (const auto& m : r) {
    if (m.name == method.name) throw std::logic_error("method '" + method.name + "' is registered twice");
    for (const auto& mine : method.score_columns)
      for (const auto& theirs : m.score_columns)
        if (mine.name == theirs.name)
          throw std::logic_error("score column '" + mine.name + "' is registered by two methods, '" + m.name +
                                 "' and '" + method.name + "'");
  }
  auto at = std::find_if(r.begin(), r.end(), [&](const Method& m) { return m.name > method.name; });
  r.insert(at, std::move(method));
  return true;
}

const std::vector<Method>& method_registry() { return registry(); }

const Method& find_method(const std::string& name) {
  for (const auto& m : method_registry())
    if (m.name == name) return m;
  throw std::invalid_argument("methods: unknown method '" + name + "' (" + method_names() + ")");
}

void add_score(ScoreResult& out, const std::string& name, const at::Tensor& score) {
  check_finite(name, score);
  out.score_names.push_back(name);
  out.scores.push_back(score);
}

void add_heatmap(const FinishContext& ctx, ScoreResult& out, const std::string& method, const at::Tensor& grid) {
  const auto& h = ctx.config.section<HeatmapOptions>();
  auto map = render_heatmaps(grid, ctx.heatmap_size, h.normalize, h.range);
  check_finite(method + " heatmap", grid);
  out.heatmap_grids[method] = grid;
  out.heatmaps[method] = map;
}

void add_capture(ScoreResult& out, const std::string& name, const at::Tensor& value, bool check) {
  if (check) check_finite(name, value);
  out.captures[name] = value;
}

Scorer::Scorer(CaptureModel& model, ScoreConfig config) : model_(model), config_(std::move(config)) {
  const auto& info = model_.info();
  validate_common(config_);
  for (const auto& name : config_.methods) {
    const Method& m = find_method(name);
    if (std::find(methods_.begin(), methods_.end(), &m) != methods_.end()) continue;  // named twice
    if (m.validate) m.validate(config_, info);
    methods_.push_back(&m);
  }
  for (const Method* m : methods_) m->plan(config_, info, request_);
  for (auto* blocks : {&request_.logits_blocks, &request_.probs_blocks, &request_.token_blocks,
                       &request_.distance_blocks, &request_.exit_blocks})
    *blocks = sorted_unique(std::move(*blocks));
}

std::vector<std::string> Scorer::columns() const {
  std::vector<std::string> out;
  for (const Method* m : methods_) {
    if (m->columns) {
      auto cols = m->columns(config_, model_.info());
      out.insert(out.end(), cols.begin(), cols.end());
    } else {
      for (const auto& c : m->score_columns) out.push_back(c.name);
    }
  }
  return out;
}

ScoreResult Scorer::score(const at::Tensor& images) {
  CaptureResult cap = model_.run(images, request_);
  int64_t n_tokens = -1;
  if (!cap.attention.empty()) {
    auto& a = cap.attention.begin()->second;
    n_tokens = a.kind == AttentionKind::Softmax ? a.logits.size(-1) : a.q.size(2);
  } else if (!cap.token_distances.empty()) {
    n_tokens = cap.token_distances.front().size(1);
  } else if (!cap.tokens.empty()) {  // a method that reads block tokens alone
    n_tokens = cap.tokens.begin()->second.size(1);
  }
  int64_t prefix = 0;
  std::vector<int64_t> grid;
  if (n_tokens > 0) std::tie(prefix, grid) = token_layout(n_tokens, cap.patch_grid, config_);
  std::vector<int64_t> heatmap_size = config_.section<HeatmapOptions>().size;
  if (heatmap_size.empty()) heatmap_size = {images.size(2), images.size(3)};
  FinishContext ctx{config_, model_.info(), cap, images.size(0), prefix, grid, heatmap_size};
  ScoreResult out;
  for (const Method* m : methods_) m->finish(ctx, out);
  return out;
}

}  // namespace vitfiqa
