// What a quality method is and what it may use: a method is ONE unit, csrc/methods/<name>.cpp, holding its options
// section (a struct registered as rows of the config's field table: config.h), its kernels, and its Method (validate,
// plan, finish) registered with VITFIQA_REGISTER_METHOD; the scorer (quality_model.h) runs them. Definitions:
// docs/methods.md.
#pragma once

#include <ATen/ATen.h>

#include <functional>
#include <map>
#include <string>
#include <vector>

#include "capture_types.h"
#include "config.h"

namespace vitfiqa {

// What scoring one batch returns.
struct ScoreResult {
  std::vector<std::string> score_names;             // in column order (the methods' order in the config)
  std::vector<at::Tensor> scores;                   // [B] float64, one per name
  std::map<std::string, at::Tensor> heatmaps;       // method -> [B,H,W] float32
  std::map<std::string, at::Tensor> heatmap_grids;  // method -> [B,gh,gw] raw patch-grid values
  at::Tensor exits;                                 // [L,B] per-exit scores (undefined when no method gives them)
  std::vector<int64_t> exit_depths;                 // 1-based depth of each exit row
  std::vector<std::string> exit_columns;            // the column name of each exit row
  std::map<std::string, at::Tensor> captures;       // raw captures by name (return_captures)
};

// What a method's finish step reads: the config, the model, the one capture pass and the token layout.
struct FinishContext {
  const ScoreConfig& config;
  const ModelInfo& info;
  const CaptureResult& capture;
  int64_t batch;                       // B
  int64_t prefix;                      // prefix tokens (CLS, quality, registers) before the patches
  std::vector<int64_t> grid;           // patch grid {gh, gw} ({} when unknown)
  std::vector<int64_t> heatmap_size;   // {H, W} of rendered heatmaps ({} keeps the grid)
};

// A per-image score column a method always writes (whatever the model), with its display label.
struct ScoreColumn {
  std::string name;   // e.g. "exfiqa_FW"
  std::string label;  // for tables and plot legends, e.g. "EX-FIQA (FW)"
};

// A quality method. Adding one: a file in csrc/methods/ that fills this struct and registers it with
// VITFIQA_REGISTER_METHOD (see README, "Adding a method").
struct Method {
  std::string name;         // the config's method name; also its score column unless columns() says more
  std::string title;        // the paper's name, for tables and plots, e.g. "ViTNT-FIQA" (default: name)
  std::string description;  // one line
  // Its score columns that do not depend on the model, labelled (default: one column named after the method,
  // labelled with its title). Each column belongs to one method.
  std::vector<ScoreColumn> score_columns;
  // Checks the method's own config section against the model; called only when the method is requested
  // (options of methods not requested are ignored).
  std::function<void(const ScoreConfig&, const ModelInfo&)> validate;
  // Adds what the method needs from the capture pass to the one request all methods share.
  std::function<void(const ScoreConfig&, const ModelInfo&, CaptureRequest&)> plan;
  // The per-image columns the method writes into a results table, in order (default: score_columns' names;
  // a method whose columns depend on the model, like EX-FIQA's exits, says them here).
  std::function<std::vector<std::string>(const ScoreConfig&, const ModelInfo&)> columns;
  // Turns the capture into outputs (add_score, add_heatmap, add_capture, or the exits fields).
  std::function<void(const FinishContext&, ScoreResult&)> finish;
  // Optional: why this config makes an image's score depend on its batch mates ("" = it does not).
  std::function<std::string(const ScoreConfig&)> batch_dependence;
};

bool register_method(Method method);            // at load time, from VITFIQA_REGISTER_METHOD
const std::vector<Method>& method_registry();   // sorted by name
const Method& find_method(const std::string& name);  // invalid_argument naming the registered ones

#define VITFIQA_CONCAT_(a, b) a##b
#define VITFIQA_CONCAT(a, b) VITFIQA_CONCAT_(a, b)
#define VITFIQA_REGISTER_METHOD(make_method) \
  static const bool VITFIQA_CONCAT(vitfiqa_method_registered_, __LINE__) = ::vitfiqa::register_method(make_method)

// Output helpers for finish(): each checks the values are finite (NaN/Inf in the activations is an error).
void add_score(ScoreResult& out, const std::string& name, const at::Tensor& score);
// A method's per-patch grid [B,gh,gw]: kept in heatmap_grids and rendered (config.heatmap) into heatmaps.
void add_heatmap(const FinishContext& ctx, ScoreResult& out, const std::string& method, const at::Tensor& grid);
// check_finite=false for raw model values (logits, tokens), which the model may legitimately hold.
void add_capture(ScoreResult& out, const std::string& name, const at::Tensor& value, bool check_finite);

// 0-based block indices (negative count from the end) -> sorted, unique, in [0, num_blocks); an index outside the
// model is a std::out_of_range naming the field (its dotted name).
std::vector<int64_t> resolve_blocks(const std::vector<int64_t>& blocks, int64_t num_blocks, const std::string& name);
std::vector<int64_t> all_blocks(int64_t num_blocks);

// The shared heatmap section's options and kernels: methods/heatmap.h.

}  // namespace vitfiqa
