// pybind11 surface. Models are passed as paths or bytes, never as ScriptModule objects (pybind11 ABI).
#include <torch/extension.h>

#include "capture.h"
#include "methods.h"
#include "quality_model.h"

namespace py = pybind11;
using namespace vitfiqa;

namespace {

py::object ivalue_to_py(const at::IValue& v) {
  if (v.isTensor()) return py::cast(v.toTensor());
  if (v.isTuple()) {
    py::list items;
    for (const auto& e : v.toTupleRef().elements()) items.append(ivalue_to_py(e));
    return py::tuple(items);
  }
  if (v.isNone()) return py::none();
  if (v.isDouble()) return py::float_(v.toDouble());
  if (v.isInt()) return py::int_(v.toInt());
  throw std::invalid_argument(std::string("unsupported model output type ") + v.tagKind());
}

py::dict info_dict(const CaptureModel& m) {
  const auto& i = m.info();
  py::dict d;
  d["num_blocks"] = i.num_blocks;
  d["attention_kind"] = i.attention_kind == AttentionKind::Softmax ? "softmax" : "scaled_dot_product_attention";
  d["has_hierarchy"] = i.has_hierarchy;
  d["has_final_norm"] = i.has_final_norm;
  d["final_norm"] = i.final_norm;
  d["final_norm_ops"] = i.final_norm_ops;
  d["has_patch_embedding_conv"] = i.has_patch_conv;
  d["patch_size"] = i.patch_size;
  d["position_tokens"] = i.position_tokens;
  d["num_outputs"] = i.num_outputs;
  d["block_names"] = i.block_names;
  d["biased_attention_blocks"] = i.biased_blocks;
  d["notes"] = i.notes;
  d["device"] = m.device().str();
  d["dtype"] = std::string(c10::toString(m.dtype()));
  return d;
}

CaptureRequest make_request(std::vector<int64_t> logits_blocks, std::vector<int64_t> probs_blocks,
                            std::vector<int64_t> token_blocks, bool final_norm, std::vector<int64_t> exit_blocks,
                            int64_t exit_output, bool model_output, const std::string& attn_logits) {
  CaptureRequest r;
  check_attn_logits(attn_logits);
  r.attn_logits = attn_logits;
  r.logits_blocks = std::move(logits_blocks);
  r.probs_blocks = std::move(probs_blocks);
  r.token_blocks = std::move(token_blocks);
  r.tokens_final_norm = final_norm;
  r.exit_blocks = std::move(exit_blocks);
  r.exit_output = exit_output;
  r.model_output = model_output;
  return r;
}

}  // namespace

// The plain forward of either model class: run without the GIL, outputs (tensor or nested tuple) to Python.
template <class Model>
py::object forward_to_py(Model& self, const at::Tensor& images) {
  at::IValue out;
  {
    py::gil_scoped_release release;
    out = self.forward(images);
  }
  return ivalue_to_py(out);
}

PYBIND11_MODULE(_core, m) {
  m.doc() = "vitfiqa C++ core: TorchScript graph capture and quality-method kernels";

  py::class_<ScoreOptions>(m, "ScoreOptions")
      .def(py::init<>())
      .def_readwrite("methods", &ScoreOptions::methods)
      .def_readwrite("heatmaps", &ScoreOptions::heatmaps)
      .def_readwrite("return_captures", &ScoreOptions::return_captures)
      .def_readwrite("prefix_tokens", &ScoreOptions::prefix_tokens)
      .def_readwrite("grid", &ScoreOptions::grid)
      .def_readwrite("heatmap_size", &ScoreOptions::heatmap_size)
      .def_readwrite("heatmap_normalize", &ScoreOptions::heatmap_normalize)
      .def_readwrite("heatmap_range", &ScoreOptions::heatmap_range)
      .def_readwrite("attn_block", &ScoreOptions::attn_block)
      .def_readwrite("attn_patches_only", &ScoreOptions::attn_patches_only)
      .def_readwrite("attn_logits", &ScoreOptions::attn_logits)
      .def_readwrite("vitnt_blocks", &ScoreOptions::vitnt_blocks)
      .def_readwrite("vitnt_scale", &ScoreOptions::vitnt_scale)
      .def_readwrite("vitnt_weighting", &ScoreOptions::vitnt_weighting)
      .def_readwrite("vitnt_attention_blocks", &ScoreOptions::vitnt_attention_blocks)
      .def_readwrite("exits", &ScoreOptions::exits)
      .def_readwrite("exit_normalization", &ScoreOptions::exit_normalization)
      .def_readwrite("quality_output", &ScoreOptions::quality_output);

  py::class_<CaptureModel>(m, "CaptureModel")
      .def(py::init([](const std::string& path, const std::string& device, const std::string& dtype,
                       const std::string& final_norm) { return new CaptureModel(path, false, device, dtype, final_norm); }),
           py::arg("path"), py::arg("device"), py::arg("dtype"), py::arg("final_norm"),
           py::call_guard<py::gil_scoped_release>())
      .def_static(
          "from_bytes",
          [](const py::bytes& data, const std::string& device, const std::string& dtype, const std::string& final_norm) {
            std::string buf = data;
            py::gil_scoped_release release;
            return new CaptureModel(buf, true, device, dtype, final_norm);
          },
          py::arg("data"), py::arg("device"), py::arg("dtype"), py::arg("final_norm"))
      .def_property_readonly("info", &info_dict)
      .def("score", &vitfiqa::score, py::arg("images"), py::arg("options"), py::call_guard<py::gil_scoped_release>())
      .def(
          "forward",
          &forward_to_py<CaptureModel>,
          py::arg("images"))
      .def(
          "capture",
          [](CaptureModel& self, const at::Tensor& images, std::vector<int64_t> logits_blocks,
             std::vector<int64_t> probs_blocks, std::vector<int64_t> token_blocks, bool final_norm,
             std::vector<int64_t> exit_blocks, int64_t exit_output, bool model_output, const std::string& attn_logits) {
            auto req = make_request(logits_blocks, probs_blocks, token_blocks, final_norm, exit_blocks, exit_output,
                                    model_output, attn_logits);
            CaptureResult r;
            {
              py::gil_scoped_release release;
              r = self.run(images, req);
            }
            py::dict logits, tokens, probs, exits;
            for (auto& [b, a] : r.attention) logits[py::int_(b)] = attention_logits(a);
            for (auto& [b, t] : r.probs) probs[py::int_(b)] = t;
            for (auto& [b, t] : r.tokens) tokens[py::int_(b)] = t;
            for (auto& [b, t] : r.exits) exits[py::int_(b)] = t;
            py::dict d;
            d["attention_logits"] = logits;
            d["attention_probs"] = probs;
            d["block_tokens"] = tokens;
            d["exits"] = exits;
            d["model_output"] = model_output ? ivalue_to_py(r.model_output) : py::none();
            d["patch_grid"] = r.patch_grid;
            return d;
          },
          py::arg("images"), py::arg("logits_blocks") = std::vector<int64_t>{},
          py::arg("probs_blocks") = std::vector<int64_t>{}, py::arg("token_blocks") = std::vector<int64_t>{},
          py::arg("final_norm") = true, py::arg("exit_blocks") = std::vector<int64_t>{}, py::arg("exit_output") = -1,
          py::arg("model_output") = false, py::arg("attn_logits") = std::string(kDefaultAttnLogits))
      .def("attribute", [](CaptureModel& self, const std::string& name) { return ivalue_to_py(self.attribute(name)); },
           py::arg("name"), "A module attribute (parameter, buffer or constant) by name, e.g. for inspection.")
      .def(
          "graph",
          [](CaptureModel& self, std::vector<int64_t> logits_blocks, std::vector<int64_t> token_blocks,
             std::vector<int64_t> exit_blocks, bool final_norm) {
            return self.graph_for(
                make_request(logits_blocks, {}, token_blocks, final_norm, exit_blocks, -1, false, kDefaultAttnLogits));
          },
          py::arg("logits_blocks") = std::vector<int64_t>{}, py::arg("token_blocks") = std::vector<int64_t>{},
          py::arg("exit_blocks") = std::vector<int64_t>{}, py::arg("final_norm") = true);

  py::class_<ScriptModel>(m, "ScriptModel", "Any TorchScript model run as is (embeddings of a CNN or ViT recognizer)")
      .def(py::init([](const std::string& path, const std::string& device, const std::string& dtype) {
             return new ScriptModel(path, false, device, dtype);
           }),
           py::arg("path"), py::arg("device") = "cpu", py::arg("dtype") = "float32",
           py::call_guard<py::gil_scoped_release>())
      .def_static(
          "from_bytes",
          [](const py::bytes& data, const std::string& device, const std::string& dtype) {
            std::string buf = data;
            py::gil_scoped_release release;
            return new ScriptModel(buf, true, device, dtype);
          },
          py::arg("data"), py::arg("device") = "cpu", py::arg("dtype") = "float32")
      .def(
          "forward",
          &forward_to_py<ScriptModel>,
          py::arg("images"));

  m.def(
      "fuse_exits",
      [](const at::Tensor& exit_scores, const std::vector<int64_t>& depths, const std::string& fusion,
         const std::string& normalization) { return fuse_exits(exit_scores, depths, fusion, normalization); },
      py::arg("exit_scores"), py::arg("depths"), py::arg("fusion") = "depth", py::arg("normalization") = "none");
  m.def("render_heatmaps", &render_heatmaps, py::arg("grids"), py::arg("size"), py::arg("mode"),
        py::arg("value_range"));
  m.def("normalize_exits", &normalize_exits, py::arg("exit_scores"), py::arg("normalization"));
}
