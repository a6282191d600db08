// pybind11 surface. Models are passed as paths or bytes, never as ScriptModule objects (pybind11 ABI).
#include <torch/extension.h>

#include <pybind11/stl.h>

#include "capture.h"
#include "config.h"
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

CaptureRequest make_request(std::vector<int64_t> logits_blocks, std::vector<int64_t> probs_blocks,
                            std::vector<int64_t> token_blocks, bool final_norm, std::vector<int64_t> exit_blocks,
                            int64_t exit_output, bool model_output, const std::string& attn_logits,
                            std::vector<int64_t> distance_blocks) {
  CaptureRequest r;
  check_attn_logits(attn_logits);
  r.attn_logits = attn_logits;
  r.logits_blocks = std::move(logits_blocks);
  r.probs_blocks = std::move(probs_blocks);
  r.token_blocks = std::move(token_blocks);
  r.tokens_final_norm = final_norm;
  r.distance_blocks = std::move(distance_blocks);
  r.exit_blocks = std::move(exit_blocks);
  r.exit_output = exit_output;
  r.model_output = model_output;
  return r;
}



// ---- ScoreConfig: attributes, dicts and strings all go through the field table (config.cpp) ----

FieldValue value_from_py(const ConfigField& f, py::handle v) {
  if (v.is_none()) return f.default_value();  // None = the field's default, whatever the field
  if (py::isinstance<py::str>(v)) return f.coerce(FieldValue(v.cast<std::string>()));
  auto wrong = [&]() {
    return std::invalid_argument(f.label() + " must be " + type_name(f.type) + ", got " +
                                 std::string(py::repr(v)));
  };
  bool is_bool = py::isinstance<py::bool_>(v) || std::string(py::str(v.get_type().attr("__name__"))) == "bool_";
  try {
    switch (f.type) {
      case FieldType::Bool:
        if (!is_bool) throw wrong();
        return v.cast<bool>();
      case FieldType::Int:
        if (is_bool) throw wrong();
        return v.cast<int64_t>();
      case FieldType::Float:
        if (is_bool) throw wrong();
        return v.cast<double>();
      case FieldType::String:
        throw wrong();
      case FieldType::IntList:
        return v.cast<std::vector<int64_t>>();
      case FieldType::FloatList:
        return v.cast<std::vector<double>>();
      case FieldType::StringList:
        return v.cast<std::vector<std::string>>();
    }
  } catch (const py::cast_error&) {
    throw wrong();
  }
  throw wrong();
}

py::object value_to_py(const FieldValue& v) {
  return std::visit([](const auto& x) -> py::object { return py::cast(x); }, v);
}

bool is_section(const std::string& name) {
  for (const auto& f : config_fields())
    if (f.name.rfind(name + ".", 0) == 0) return true;
  return false;
}

void set_field(ScoreConfig& c, const std::string& name, py::handle value) {
  const auto& f = config_field(name);
  f.set(c, value_from_py(f, value));
}

// Nested ({"attn": {"block": 3}}) or dotted ({"attn.block": 3}) keys; sections may also be given whole.
void update_from_dict(ScoreConfig& c, const py::dict& d, const std::string& prefix = "") {
  for (auto item : d) {
    std::string key = prefix + py::str(item.first).cast<std::string>();
    if (is_section(key)) {
      if (!py::isinstance<py::dict>(item.second))
        throw std::invalid_argument("score config section '" + key + "' must be a table/dict of its fields, got " +
                                    std::string(py::repr(item.second)));
      update_from_dict(c, item.second.cast<py::dict>(), key + ".");
    } else {
      set_field(c, key, item.second);
    }
  }
}

py::dict config_to_dict(const ScoreConfig& c) {
  py::dict out;
  for (const auto& f : config_fields()) {
    auto dot = f.name.find('.');
    if (dot == std::string::npos) {
      out[py::str(f.name)] = value_to_py(f.get(c));
      continue;
    }
    py::str section(f.name.substr(0, dot));
    if (!out.contains(section)) out[section] = py::dict();
    out[section].cast<py::dict>()[py::str(f.name.substr(dot + 1))] = value_to_py(f.get(c));
  }
  return out;
}

// cfg.attn: a view of one section that reads and writes the owner's fields by name.
struct ConfigSection {
  py::object owner;
  std::string name;
  ScoreConfig& config() const { return owner.cast<ScoreConfig&>(); }
};

py::object get_attribute(py::object owner, const std::string& name) {
  if (is_section(name)) return py::cast(ConfigSection{owner, name});
  for (const auto& f : config_fields())
    if (f.name == name) return value_to_py(f.get(owner.cast<ScoreConfig&>()));
  throw py::attribute_error("ScoreConfig has no field '" + name + "'");
}

void set_attribute(ScoreConfig& c, const std::string& name, py::handle value) {
  if (is_section(name)) {
    if (!py::isinstance<py::dict>(value)) throw py::attribute_error("assign a section's fields one by one, or a dict");
    update_from_dict(c, value.cast<py::dict>(), name + ".");
    return;
  }
  for (const auto& f : config_fields())
    if (f.name == name) return f.set(c, value_from_py(f, value));
  throw py::attribute_error("ScoreConfig has no field '" + name + "'");
}

void bind_config(py::module_& m) {
  py::class_<ConfigSection>(m, "ScoreConfigSection", "One section of a ScoreConfig (e.g. config.vitnt)")
      .def("__getattr__", [](const ConfigSection& s, const std::string& f) { return get_attribute(s.owner, s.name + "." + f); })
      .def("__setattr__", [](ConfigSection& s, const std::string& f, py::handle v) { set_attribute(s.config(), s.name + "." + f, v); })
      .def("__repr__", [](const ConfigSection& s) {
        std::string out = s.name + "(";
        bool first = true;
        for (const auto& f : config_fields()) {
          if (f.name.rfind(s.name + ".", 0) != 0) continue;
          out += (first ? "" : ", ") + f.name.substr(s.name.size() + 1) + "=" + std::string(py::repr(value_to_py(f.get(s.config()))));
          first = false;
        }
        return out + ")";
      });

  py::class_<ScoreConfig>(m, "ScoreConfig",
                          "Every scoring option, in per-method sections (attn, vitnt, exfiqa, heatmap) plus top-level "
                          "fields; ScoreConfig.fields() lists names, types, defaults and docs. Build it from keyword "
                          "arguments (sections as dicts), from_dict (nested or dotted keys) or set('vitnt.blocks', "
                          "'0:20'); None resets a field to its default.")
      .def(py::init([](py::kwargs kwargs) {
        ScoreConfig c;
        update_from_dict(c, kwargs);
        return c;
      }))
      .def_static("from_dict", [](const py::dict& d) {
        ScoreConfig c;
        update_from_dict(c, d);
        return c;
      }, py::arg("data"), "From nested ({'attn': {'block': 3}}) or dotted ({'attn.block': 3}) keys; the rest default.")
      .def("to_dict", &config_to_dict, "Nested dict of every field (sections as dicts), for JSON/TOML and Ray.")
      .def("update", [](ScoreConfig& c, const py::dict& d) { update_from_dict(c, d); }, py::arg("data"),
           "Set the fields named in a nested or dotted dict.")
      .def("set", &set_field, py::arg("name"), py::arg("value"),
           "Set one field by dotted name; a string is parsed ('0:20', '0,3,5', '-1', 'qk', 'true'), None = default.")
      .def("get", [](const ScoreConfig& c, const std::string& name) { return value_to_py(config_field(name).get(c)); },
           py::arg("name"))
      .def("copy", [](const ScoreConfig& c) { return ScoreConfig(c); })
      .def("__copy__", [](const ScoreConfig& c) { return ScoreConfig(c); })
      .def("__deepcopy__", [](const ScoreConfig& c, py::handle) { return ScoreConfig(c); }, py::arg("memo"))
      .def("__eq__", [](const ScoreConfig& a, py::handle b) {
        return py::isinstance<ScoreConfig>(b) && a == b.cast<const ScoreConfig&>();
      })
      .def("__getattr__", [](py::object self, const std::string& name) { return get_attribute(self, name); })
      .def("__setattr__", [](ScoreConfig& c, const std::string& name, py::handle v) { set_attribute(c, name, v); })
      .def("to_string", &ScoreConfig::to_string)
      .def("__repr__", &ScoreConfig::to_string)
      .def("__str__", &ScoreConfig::to_string)
      .def_static("format_value", [](const std::string& name, py::handle v) {
        const auto& f = config_field(name);
        return f.format(value_from_py(f, v));
      }, py::arg("name"), py::arg("value"), "A field's value as the text set() reads back.")
      .def_static("fields", []() {
        py::list out;
        for (const auto& f : config_fields()) {
          py::dict d;
          d["name"] = f.name;
          d["keyword"] = f.keyword;
          d["type"] = type_name(f.type);
          d["default"] = value_to_py(f.default_value());
          d["doc"] = f.doc;
          d["choices"] = f.choices;
          out.append(d);
        }
        return out;
      }, "The field table: name (dotted), keyword (QualityModel.score), type, default, doc, choices.")
      .def(py::pickle([](const ScoreConfig& c) { return config_to_dict(c); },
                      [](const py::dict& d) {
                        ScoreConfig c;
                        update_from_dict(c, d);
                        return c;
                      }));
}

py::dict tensor_dict(const std::map<std::string, at::Tensor>& m) {
  py::dict d;
  for (const auto& [k, v] : m) d[py::str(k)] = v;
  return d;
}

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

  bind_config(m);
  bind_scoring(m);

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
      .def(
          "forward",
          &forward_to_py<CaptureModel>,
          py::arg("images"))
      .def(
          "capture",
          [](CaptureModel& self, const at::Tensor& images, std::vector<int64_t> logits_blocks,
             std::vector<int64_t> probs_blocks, std::vector<int64_t> token_blocks, bool final_norm,
             std::vector<int64_t> exit_blocks, int64_t exit_output, bool model_output, const std::string& attn_logits,
             std::vector<int64_t> distance_blocks) {
            auto req = make_request(logits_blocks, probs_blocks, token_blocks, final_norm, exit_blocks, exit_output,
                                    model_output, attn_logits, distance_blocks);
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
            d["token_distances"] = r.token_distances;
            d["model_output"] = model_output ? ivalue_to_py(r.model_output) : py::none();
            d["patch_grid"] = r.patch_grid;
            return d;
          },
          py::arg("images"), py::arg("logits_blocks") = std::vector<int64_t>{},
          py::arg("probs_blocks") = std::vector<int64_t>{}, py::arg("token_blocks") = std::vector<int64_t>{},
          py::arg("final_norm") = true, py::arg("exit_blocks") = std::vector<int64_t>{},
          py::arg("exit_output") = CaptureRequest{}.exit_output, py::arg("model_output") = false,
          py::arg("attn_logits") = std::string(kDefaultAttnLogits), py::arg("distance_blocks") = std::vector<int64_t>{})
      .def("attribute", [](CaptureModel& self, const std::string& name) { return ivalue_to_py(self.attribute(name)); },
           py::arg("name"), "A module attribute (parameter, buffer or constant) by name, e.g. for inspection.")
      .def(
          "graph",
          [](CaptureModel& self, std::vector<int64_t> logits_blocks, std::vector<int64_t> token_blocks,
             std::vector<int64_t> exit_blocks, bool final_norm, std::vector<int64_t> distance_blocks) {
            return self.graph_for(
                make_request(logits_blocks, {}, token_blocks, final_norm, exit_blocks, CaptureRequest{}.exit_output, false,
                             kDefaultAttnLogits, distance_blocks));
          },
          py::arg("logits_blocks") = std::vector<int64_t>{}, py::arg("token_blocks") = std::vector<int64_t>{},
          py::arg("exit_blocks") = std::vector<int64_t>{}, py::arg("final_norm") = true,
          py::arg("distance_blocks") = std::vector<int64_t>{});

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
      py::arg("exit_scores"), py::arg("depths"), py::arg("fusion") = "depth", py::arg("normalization") = ExfiqaConfig{}.normalization);
  m.def("render_heatmaps", &render_heatmaps, py::arg("grids"), py::arg("size"), py::arg("mode"),
        py::arg("value_range"));
  m.def("normalize_exits", &normalize_exits, py::arg("exit_scores"), py::arg("normalization"));
}
