// Scoring in Python: the registered methods, the Scorer and its typed result, and the kernels Python calls over a
// whole data set (fuse_exits, render_heatmaps) or for a model's input size (square_token_grid).
#include <torch/extension.h>

#include <pybind11/stl.h>

#include "bindings/bindings.h"
#include "config.h"
#include "methods/exfiqa.h"
#include "methods/heatmap.h"
#include "quality_model.h"

namespace py = pybind11;

namespace vitfiqa {

namespace {

py::dict tensor_dict(const std::map<std::string, at::Tensor>& m) {
  py::dict d;
  for (const auto& [k, v] : m) d[py::str(k)] = v;
  return d;
}

}  // namespace

void bind_scoring(py::module_& m) {
  m.def("methods", []() {
    py::list out;
    for (const auto& meth : method_registry()) {
      py::dict d;
      d["name"] = meth.name;
      d["title"] = meth.title;
      d["description"] = meth.description;
      py::list columns;
      for (const auto& c : meth.score_columns) columns.append(py::make_tuple(c.name, c.label));
      d["score_columns"] = columns;
      out.append(d);
    }
    return out;
  }, "The registered quality methods: name, title (the paper's name), one-line description and score_columns "
     "[(column, display label)] (the columns it writes whatever the model; EX-FIQA adds one per exit).");
  m.def("check_config", &validate_common, py::arg("config"),
        "The checks that need no model (method names, top-level and heatmap fields); Scorer runs them too.");
  m.def("batch_dependence", &batch_dependence, py::arg("config"),
        "'' or why this config makes an image's score depend on its batch mates.");
  m.def("square_token_grid", &square_token_grid, py::arg("tokens"),
        "(prefix, side): tokens = prefix (0-8 CLS/quality/register tokens, the smallest) + a side x side patch grid; "
        "None when there is none. The scorer's own search.");

  py::class_<ScoreResult>(m, "ScoreResult", "One batch's outputs (vitfiqa.QualityResult maps it 1:1)")
      .def_property_readonly("scores", [](const ScoreResult& r) {
        py::dict d;  // insertion order = column order
        for (size_t i = 0; i < r.scores.size(); ++i) d[py::str(r.score_names[i])] = r.scores[i];
        return d;
      })
      .def_property_readonly("heatmaps", [](const ScoreResult& r) { return tensor_dict(r.heatmaps); })
      .def_property_readonly("heatmap_grids", [](const ScoreResult& r) { return tensor_dict(r.heatmap_grids); })
      .def_property_readonly("exits", [](const ScoreResult& r) -> py::object {
        return r.exits.defined() ? py::cast(r.exits) : py::none();
      })
      .def_readonly("exit_depths", &ScoreResult::exit_depths)
      .def_readonly("exit_columns", &ScoreResult::exit_columns)
      .def_property_readonly("captures", [](const ScoreResult& r) { return tensor_dict(r.captures); });

  py::class_<Scorer>(m, "Scorer", "A ScoreConfig validated against one model, ready to score batches")
      .def(py::init<CaptureModel&, ScoreConfig>(), py::arg("model"), py::arg("config"), py::keep_alive<1, 2>())
      .def("score", &Scorer::score, py::arg("images"), py::call_guard<py::gil_scoped_release>())
      .def("columns", &Scorer::columns)
      .def_property_readonly("config", &Scorer::config);

  m.def(
      "fuse_exits",
      [](const at::Tensor& exit_scores, const std::vector<int64_t>& depths, const std::string& fusion,
         const std::string& normalization) { return fuse_exits(exit_scores, depths, fusion, normalization); },
      py::arg("exit_scores"), py::arg("depths"), py::arg("fusion") = "depth",
      py::arg("normalization") = default_exit_normalization());
  m.def("render_heatmaps", &render_heatmaps, py::arg("grids"), py::arg("size"), py::arg("mode"),
        py::arg("value_range"));
}

}  // namespace vitfiqa
