// Models in Python: the capture request (a struct, passed whole), CaptureModel (graph capture) and ScriptModel
// (any TorchScript model run as is). Model outputs (tensor or nested tuple) come back as Python objects.
#include <torch/extension.h>

#include <pybind11/stl.h>

#include "bindings/bindings.h"
#include "capture.h"

namespace py = pybind11;

namespace vitfiqa {

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
  d["final_norm_candidates"] = i.final_norm_candidates;
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

py::dict capture_dict(const CaptureResult& r, bool model_output) {
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
  d["token_distances"] = r.token_distances;
  d["model_output"] = model_output ? ivalue_to_py(r.model_output) : py::none();
  d["patch_grid"] = r.patch_grid;
  return d;
}

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

std::string request_repr(const CaptureRequest& r) {
  auto blocks = [](const std::vector<int64_t>& v) { return std::string(py::repr(py::cast(v))); };
  return "CaptureRequest(logits_blocks=" + blocks(r.logits_blocks) + ", attn_logits='" + r.attn_logits +
         "', probs_blocks=" + blocks(r.probs_blocks) + ", token_blocks=" + blocks(r.token_blocks) +
         ", tokens_final_norm=" + (r.tokens_final_norm ? "True" : "False") + ", distance_blocks=" +
         blocks(r.distance_blocks) + ", exit_blocks=" + blocks(r.exit_blocks) + ", exit_output=" +
         std::to_string(r.exit_output) + ", model_output=" + (r.model_output ? "True" : "False") + ")";
}

}  // namespace

void bind_models(py::module_& m) {
  const CaptureRequest defaults;
  py::class_<CaptureRequest>(m, "CaptureRequest",
                             "What one capture pass returns (csrc/capture_types.h): 0-based, non-negative block "
                             "indices per kind of capture; the graph cache is keyed by the whole request.")
      .def(py::init([](std::vector<int64_t> logits_blocks, std::string attn_logits, std::vector<int64_t> probs_blocks,
                       std::vector<int64_t> token_blocks, bool tokens_final_norm, std::vector<int64_t> distance_blocks,
                       std::vector<int64_t> exit_blocks, int64_t exit_output, bool model_output) {
             CaptureRequest r;
             r.logits_blocks = std::move(logits_blocks);
             r.attn_logits = std::move(attn_logits);
             r.probs_blocks = std::move(probs_blocks);
             r.token_blocks = std::move(token_blocks);
             r.tokens_final_norm = tokens_final_norm;
             r.distance_blocks = std::move(distance_blocks);
             r.exit_blocks = std::move(exit_blocks);
             r.exit_output = exit_output;
             r.model_output = model_output;
             return r;
           }),
           py::kw_only(), py::arg("logits_blocks") = defaults.logits_blocks,
           py::arg("attn_logits") = defaults.attn_logits, py::arg("probs_blocks") = defaults.probs_blocks,
           py::arg("token_blocks") = defaults.token_blocks, py::arg("tokens_final_norm") = defaults.tokens_final_norm,
           py::arg("distance_blocks") = defaults.distance_blocks, py::arg("exit_blocks") = defaults.exit_blocks,
           py::arg("exit_output") = defaults.exit_output, py::arg("model_output") = defaults.model_output)
      .def_readwrite("logits_blocks", &CaptureRequest::logits_blocks, "softmax input / (q, k, scale, mask) of these blocks")
      .def_readwrite("attn_logits", &CaptureRequest::attn_logits, "'qk' | 'full': bias and mask in the logits or not")
      .def_readwrite("probs_blocks", &CaptureRequest::probs_blocks, "post-softmax attention of these blocks")
      .def_readwrite("token_blocks", &CaptureRequest::token_blocks, "these blocks' outputs, returned whole")
      .def_readwrite("tokens_final_norm", &CaptureRequest::tokens_final_norm,
                     "token_blocks passed through the model's final LayerNorm or not")
      .def_readwrite("distance_blocks", &CaptureRequest::distance_blocks,
                     "ViTNT-FIQA's per-token step distances between consecutive blocks of these (final-norm outputs)")
      .def_readwrite("exit_blocks", &CaptureRequest::exit_blocks, "the model head re-applied to these blocks' outputs")
      .def_readwrite("exit_output", &CaptureRequest::exit_output, "which element of the model output the exits compute")
      .def_readwrite("model_output", &CaptureRequest::model_output, "also return the model's own output")
      .def("__eq__", [](const CaptureRequest& a, py::handle b) {
        return py::isinstance<CaptureRequest>(b) && a == b.cast<const CaptureRequest&>();
      })
      .def("__repr__", &request_repr);

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
      .def("forward", &forward_to_py<CaptureModel>, py::arg("images"))
      .def(
          "capture",
          [](CaptureModel& self, const at::Tensor& images, const CaptureRequest& request) {
            check_attn_logits(request.attn_logits);
            CaptureResult r;
            {
              py::gil_scoped_release release;
              r = self.run(images, request);
            }
            return capture_dict(r, request.model_output);
          },
          py::arg("images"), py::arg("request"),
          "Raw captures of one forward pass: attention_logits, attention_probs, block_tokens, exits "
          "({block: tensor}), token_distances, model_output, patch_grid.")
      .def("attribute", [](CaptureModel& self, const std::string& name) { return ivalue_to_py(self.attribute(name)); },
           py::arg("name"), "A module attribute (parameter, buffer or constant) by name, e.g. for inspection.")
      .def(
          "graph",
          [](CaptureModel& self, const CaptureRequest& request) {
            check_attn_logits(request.attn_logits);
            return self.graph_for(request);
          },
          py::arg("request"), "The rewritten capture graph for a request (debugging aid).");

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
      .def("forward", &forward_to_py<ScriptModel>, py::arg("images"));
}

}  // namespace vitfiqa
