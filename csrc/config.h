// ScoreConfig: every scoring option, in one field table that knows each field's dotted name, type, doc, choices,
// how to parse it from a string and print it. The table is assembled from sections that their owners register:
// the scorer's top-level fields (quality_model.cpp), each method's options with the method (csrc/methods/<name>.cpp)
// and the heatmap options (csrc/methods/heatmap.cpp). A section is a plain struct whose member initialisers are its
// defaults; ScoreConfig holds one of each, read with config.section<T>(). This file is the codec only (config.cpp).
// Python binds this class itself (vitfiqa.ScoreConfig), so names and defaults are the same on both sides.
#pragma once

#include <any>
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <type_traits>
#include <typeindex>
#include <variant>
#include <vector>

namespace vitfiqa {

struct ScoreConfig {
  // The top-level fields (the scorer's: their rows are registered in quality_model.cpp).
  std::vector<std::string> methods{"attn", "vitnt"};  // registered method names (methods.h: method_registry)
  bool heatmaps = false;
  bool return_captures = false;
  int64_t prefix_tokens = -1;                // -1: from the patch grid (N - gh*gw)
  std::vector<int64_t> grid;                 // {} : from the patch embedding's convolution
  int64_t quality_output = -1;               // which model output is the quality (ViT-FIQA: (emb, q))

  // A registered section's options (its defaults until set).
  template <class T>
  const T& section() const {
    auto it = sections_.find(std::type_index(typeid(T)));
    if (it == sections_.end()) {
      static const T defaults{};
      return defaults;
    }
    return std::any_cast<const T&>(it->second);
  }
  template <class T>
  T& section() {
    std::any& slot = sections_[std::type_index(typeid(T))];
    if (!slot.has_value()) slot = T{};
    return std::any_cast<T&>(slot);
  }

  bool operator==(const ScoreConfig& other) const;  // field by field, through the field table
  std::string to_string() const;  // ScoreConfig(methods='attn,vitnt', heatmaps=false, ..., attn.block=-1, ...)

 private:
  std::map<std::type_index, std::any> sections_;
};

// ---- the field table ----
enum class FieldType { Bool, Int, Float, String, IntList, FloatList, StringList };
using FieldValue = std::variant<bool, int64_t, double, std::string, std::vector<int64_t>, std::vector<double>,
                                std::vector<std::string>>;

struct ConfigField {
  std::string name;                   // dotted: "vitnt.blocks"
  std::string keyword;                // QualityModel.score keyword argument: "vitnt_blocks"
  FieldType type;
  std::string doc;
  std::vector<std::string> choices;   // String fields with a fixed vocabulary (checked by check_choices)
  std::function<FieldValue(const ScoreConfig&)> get;
  std::function<void(ScoreConfig&, const FieldValue&)> set;  // value of this field's type (see coerce)

  std::string section() const;        // "vitnt" for "vitnt.blocks", "" for a top-level field
  std::string label() const;          // how errors name the field: its one (dotted) name, "vitnt.blocks"
  FieldValue default_value() const { return get(ScoreConfig{}); }
  FieldValue parse(const std::string& text) const;  // "0:20", "0,3,5", "-1", "qk", "true", "" (empty list)
  std::string format(const FieldValue& value) const;  // the inverse of parse
  FieldValue coerce(const FieldValue& value) const;   // an int for a float field etc.; else invalid_argument
};

// One field of a section: config_option("blocks", &VitntOptions::blocks, "doc", {choices}, "keyword"). The keyword
// (QualityModel.score's argument) defaults to the dotted name with '_' for '.'. For the top-level fields the
// section type is ScoreConfig itself.
template <class T, class V>
ConfigField config_option(const char* name, V T::*member, const char* doc, std::vector<std::string> choices = {},
                          const char* keyword = nullptr) {
  using Alternatives = std::variant<bool, int64_t, double, std::string, std::vector<int64_t>, std::vector<double>,
                                    std::vector<std::string>>;
  static_assert(std::is_same_v<Alternatives, FieldValue>);
  auto owner = [](auto& c) -> auto& {
    if constexpr (std::is_same_v<T, ScoreConfig>) return c;
    else return c.template section<T>();
  };
  ConfigField f;
  f.name = name;
  f.keyword = keyword ? keyword : "";
  f.type = static_cast<FieldType>(FieldValue(V{}).index());
  f.doc = doc;
  f.choices = std::move(choices);
  f.get = [member, owner](const ScoreConfig& c) -> FieldValue { return owner(c).*member; };
  f.set = [member, owner](ScoreConfig& c, const FieldValue& v) { owner(c).*member = std::get<V>(v); };
  return f;
}

// Adds a section's fields to the table (at load time, from a static initialiser in the owner's file): section ""
// for the top-level fields; rank orders the sections in the table (to_dict, repr, fields(), the docs): top level 0,
// then ascending (attn 10, vitnt 20, exfiqa 30, heatmap 90; a new method takes e.g. 50), ties by name. Returns
// true; a section or field registered twice is a std::logic_error.
bool register_config_section(const std::string& section, int rank, std::vector<ConfigField> fields);

const std::vector<ConfigField>& config_fields();
const ConfigField& config_field(const std::string& name);  // invalid_argument for an unknown name
std::vector<std::string> config_sections();                // the registered section names, in table order
const char* type_name(FieldType type);

// Errors about a field, named by its label. Every config error is a std::invalid_argument (Python ValueError)
// except a block index outside the model (std::out_of_range, Python IndexError).
[[noreturn]] void config_error(const std::string& name, const std::string& what);
// Checks the String fields of a section ("attn", "vitnt", "" = top level) against their choices.
void check_choices(const ScoreConfig& config, const std::string& section);

}  // namespace vitfiqa
