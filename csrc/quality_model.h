// Scoring: methods are registered units (csrc/methods/*.cpp, methods.h); a Scorer validates a ScoreConfig against the
// model once, lets every requested method plan its part of ONE capture request, runs one capture pass per
// batch and lets every method finish its outputs into a typed ScoreResult. Python sees this, the config and
// CaptureModel.
#pragma once

#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "capture.h"
#include "config.h"
#include "methods.h"

namespace vitfiqa {

// The model-free checks: method names, top-level fields, the heatmap section (when heatmaps are on). The
// Scorer runs them and then each requested method's own validate against the model.
void validate_common(const ScoreConfig& config);
// "" or why the requested methods under this config make an image's score depend on its batch mates.
std::string batch_dependence(const ScoreConfig& config);
// The prefix-token search: n tokens = p prefix tokens (CLS, quality, registers; p = 0..8) + a square patch grid
// side x side, for the smallest such p; nullopt when there is none. The scorer's token layout uses it, and Python's
// input-size guess (QualityModel._size_from_graph) calls it through _core.square_token_grid.
std::optional<std::pair<int64_t, int64_t>> square_token_grid(int64_t n);

class Scorer {
 public:
  // Validates the config against the model (once) and plans the capture request.
  Scorer(CaptureModel& model, ScoreConfig config);
  ScoreResult score(const at::Tensor& images);   // one capture pass, then every method's finish
  std::vector<std::string> columns() const;      // per-image columns of the requested methods, in order
  const ScoreConfig& config() const { return config_; }
  const CaptureRequest& request() const { return request_; }

 private:
  CaptureModel& model_;
  ScoreConfig config_;
  std::vector<const Method*> methods_;
  CaptureRequest request_;
};

}  // namespace vitfiqa
