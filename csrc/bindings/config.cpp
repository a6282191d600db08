// ScoreConfig in Python: every field of the table (config.h) is a real attribute. Top-level fields are properties of
// ScoreConfig; each section (attn, vitnt, exfiqa, heatmap, ...) is a property whose value is a view of that section,
// an instance of a class made here from the table (AttnSection, ...) with one property per field. Attributes, dicts
// and strings all go through the field table, so dir(), tab completion and the stub (_core.pyi) see the fields.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cctype>

#include "bindings/bindings.h"
#include "config.h"
#include "util.h"

namespace py = pybind11;

namespace vitfiqa {

namespace {

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
  if (name.empty()) return false;
  for (const auto& s : config_sections())
    if (s == name) return true;
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
    const std::string section = f.section();
    if (section.empty()) {
      out[py::str(f.name)] = value_to_py(f.get(c));
      continue;
    }
    py::str key(section);
    if (!out.contains(key)) out[key] = py::dict();
    out[key].cast<py::dict>()[py::str(f.name.substr(section.size() + 1))] = value_to_py(f.get(c));
  }
  return out;
}

// A Python function as a method of a class made with type() (a builtin function does not bind to instances).
py::object instance_method(const py::cpp_function& fn) {
  return py::reinterpret_steal<py::object>(PyInstanceMethod_New(fn.ptr()));
}

py::object property(const py::cpp_function& fget, const py::cpp_function& fset, const std::string& doc) {
  return py::module_::import("builtins").attr("property")(fget, fset, py::none(), doc);
}

// "vitnt" -> "VitntSection": the class of cfg.vitnt.
std::string section_class_name(const std::string& section) {
  std::string name = section;
  name[0] = static_cast<char>(std::toupper(static_cast<unsigned char>(name[0])));
  return name + "Section";
}

ScoreConfig& owner_of(py::handle view) { return view.attr("_config").cast<ScoreConfig&>(); }

// The class of one section's views: __slots__ ("_config": the ScoreConfig it reads and writes), one property per
// field (doc: the field's doc), and a repr listing the fields.
py::object make_section_class(const py::module_& m, const std::string& section) {
  py::dict ns;
  std::vector<std::string> names;
  for (const auto& f : config_fields()) {
    if (f.section() != section) continue;
    const std::string name = f.name;
    py::cpp_function fget([name](py::handle self) { return value_to_py(config_field(name).get(owner_of(self))); });
    py::cpp_function fset([name](py::handle self, py::handle v) { set_field(owner_of(self), name, v); });
    const std::string short_name = name.substr(section.size() + 1);
    ns[py::str(short_name)] = property(fget, fset, f.doc);
    names.push_back(short_name);
  }
  ns["__slots__"] = py::make_tuple("_config");
  ns["__module__"] = m.attr("__name__");
  ns["__doc__"] = "The '" + section + "' section of a ScoreConfig (config." + section + "): " + join(names) +
                  ". Reads and writes the config it came from.";
  ns["__repr__"] = instance_method(py::cpp_function([section](py::handle self) {
    std::vector<std::string> items;
    const ScoreConfig& c = owner_of(self);
    for (const auto& f : config_fields())
      if (f.section() == section)
        items.push_back(f.name.substr(section.size() + 1) + "=" + std::string(py::repr(value_to_py(f.get(c)))));
    return section + "(" + join(items) + ")";
  }));
  py::object type = py::reinterpret_borrow<py::object>(reinterpret_cast<PyObject*>(&PyType_Type));
  py::object object = py::reinterpret_borrow<py::object>(reinterpret_cast<PyObject*>(&PyBaseObject_Type));
  return type(section_class_name(section), py::make_tuple(object), ns);
}

ScoreConfig from_kwargs(const py::dict& d) {
  ScoreConfig c;
  update_from_dict(c, d);
  return c;
}

}  // namespace

void bind_config(py::module_& m) {
  py::class_<ScoreConfig> cls(m, "ScoreConfig",
                              "Every scoring option, in per-method sections (attn, vitnt, exfiqa, heatmap) plus "
                              "top-level fields; ScoreConfig.fields() lists names, types, defaults and docs. Build it "
                              "from keyword arguments (sections as dicts), from_dict (nested or dotted keys) or "
                              "set('vitnt.blocks', '0:20'); None resets a field to its default.");
  cls.def(py::init([](py::kwargs kwargs) { return from_kwargs(kwargs); }))
      .def_static("from_dict", [](const py::dict& d) { return from_kwargs(d); }, py::arg("data"),
                  "From nested ({'attn': {'block': 3}}) or dotted ({'attn.block': 3}) keys; the rest default.")
      .def("to_dict", &config_to_dict, "Nested dict of every field (sections as dicts), for JSON/TOML and Ray.")
      .def("update", [](ScoreConfig& c, const py::dict& d) { update_from_dict(c, d); }, py::arg("data"),
           "Set the fields named in a nested or dotted dict.")
      .def("set", &set_field, py::arg("name"), py::arg("value"),
           "Set one field by dotted name; a string is parsed ('0:20', '0,3,5', '-1', 'qk', 'true'), None = default.")
      .def("get", [](const ScoreConfig& c, const std::string& name) { return value_to_py(config_field(name).get(c)); },
           py::arg("name"), "One field's value by dotted name.")
      .def("copy", [](const ScoreConfig& c) { return ScoreConfig(c); })
      .def("__copy__", [](const ScoreConfig& c) { return ScoreConfig(c); })
      .def("__deepcopy__", [](const ScoreConfig& c, py::handle) { return ScoreConfig(c); }, py::arg("memo"))
      .def("__eq__", [](const ScoreConfig& a, py::handle b) {
        return py::isinstance<ScoreConfig>(b) && a == b.cast<const ScoreConfig&>();
      })
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
          d["section"] = f.section();
          out.append(d);
        }
        return out;
      }, "The field table: name (dotted), keyword (QualityModel.score), type, default, doc, choices, section "
         "('' for the top-level fields).")
      .def(py::pickle([](const ScoreConfig& c) { return config_to_dict(c); },
                      [](const py::dict& d) { return from_kwargs(d); }));

  // One property per top-level field and per section, from the table.
  for (const auto& f : config_fields()) {
    if (!f.section().empty()) continue;
    const std::string name = f.name;
    cls.def_property(
        name.c_str(),
        py::cpp_function([name](const ScoreConfig& c) { return value_to_py(config_field(name).get(c)); }),
        py::cpp_function([name](ScoreConfig& c, py::handle v) { set_field(c, name, v); }), f.doc.c_str());
  }
  for (const auto& section : config_sections()) {
    if (section.empty()) continue;
    py::object view_class = make_section_class(m, section);
    m.attr(section_class_name(section).c_str()) = view_class;
    cls.def_property(
        section.c_str(),
        py::cpp_function([view_class](py::object self) {
          py::object view = view_class.attr("__new__")(view_class);
          view.attr("_config") = self;
          return view;
        }),
        py::cpp_function([section](ScoreConfig& c, py::handle v) {
          if (!py::isinstance<py::dict>(v))
            throw py::attribute_error("assign a section's fields one by one, or a dict");
          update_from_dict(c, v.cast<py::dict>(), section + ".");
        }),
        ("The '" + section + "' section (" + section_class_name(section) + ")").c_str());
  }
}

}  // namespace vitfiqa
