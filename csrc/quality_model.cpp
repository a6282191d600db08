#include "quality_model.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>

#include "methods.h"

namespace vitfiqa {

namespace {

std::vector<Method>& registry() {
  static std::vector<Method> methods;  // function-local: filled from other files' static initialisers
  return methods;
}

std::string method_names() {
  std::string out;
  for (const auto& m : method_registry()) out += (out.empty() ? "" : ", ") + m.name;
  return out;
}

void sort_unique(std::vector<int64_t>& v) {
  std::sort(v.begin(), v.end());
  v.erase(std::unique(v.begin(), v.end()), v.end());
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
  for (int64_t p = 0; p <= 8 && p < n; ++p) {
    auto side = static_cast<int64_t>(std::lround(std::sqrt(static_cast<double>(n - p))));
    if (side * side == n - p) return {p, {side, side}};
  }
  throw std::invalid_argument("cannot tell prefix tokens from patches for " + std::to_string(n) +
                              " tokens; pass prefix_tokens and grid");
}

void check_finite(const std::string& name, const at::Tensor& t) {
  if (!at::isfinite(t).all().item<bool>())
    throw std::invalid_argument("method output '" + name + "' is not finite (NaN or Inf in the model's activations?)");
}

}  // namespace

void validate_common(const ScoreConfig& c) {
  if (c.methods.empty() && !c.return_captures) throw std::invalid_argument("no method requested");
  for (const auto& m : c.methods) find_method(m);
  if (c.prefix_tokens < -1) config_error("prefix_tokens", "must be -1 (from the patch grid) or a token count");
  if (!c.grid.empty() && (c.grid.size() != 2 || c.grid[0] <= 0 || c.grid[1] <= 0))
    config_error("grid", "must be empty (from the model) or two positive integers (h, w)");
  if (!c.heatmaps) return;  // the heatmap section serves heatmaps only
  check_choices(c, "heatmap");
  const auto& h = c.heatmap;
  if (!h.size.empty() && (h.size.size() != 2 || h.size[0] <= 0 || h.size[1] <= 0))
    config_error("heatmap.size", "must be empty (the input's size) or two positive integers (height, width)");
  if (!h.range.empty()) {
    if (h.normalize != "global")
      config_error("heatmap.range", "is a fixed global range: it goes with heatmap.normalize (heatmap_normalize) "
                                    "'global'");
    if (h.range.size() != 2 || !std::isfinite(h.range[0]) || !std::isfinite(h.range[1]) || !(h.range[1] >= h.range[0]))
      config_error("heatmap.range", "must be a value range of two finite numbers (low, high) with low <= high");
  }
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
  const auto& h = ctx.config.heatmap;
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
  sort_unique(request_.logits_blocks);
  sort_unique(request_.probs_blocks);
  sort_unique(request_.token_blocks);
  sort_unique(request_.distance_blocks);
  sort_unique(request_.exit_blocks);
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
  std::vector<int64_t> heatmap_size = config_.heatmap.size;
  if (heatmap_size.empty()) heatmap_size = {images.size(2), images.size(3)};
  FinishContext ctx{config_, model_.info(), cap, images.size(0), prefix, grid, heatmap_size};
  ScoreResult out;
  for (const Method* m : methods_) m->finish(ctx, out);
  return out;
}

}  // namespace vitfiqa
