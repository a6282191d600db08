#include "config.h"
#include "methods.h"  // the vocabularies the kernels own (heatmap and exit normalisations)

#include <algorithm>
#include <charconv>
#include <cmath>
#include <stdexcept>
#include <type_traits>

namespace vitfiqa {

namespace {

template <class T>
constexpr FieldType field_type() {
  if constexpr (std::is_same_v<T, bool>) return FieldType::Bool;
  else if constexpr (std::is_same_v<T, int64_t>) return FieldType::Int;
  else if constexpr (std::is_same_v<T, double>) return FieldType::Float;
  else if constexpr (std::is_same_v<T, std::string>) return FieldType::String;
  else if constexpr (std::is_same_v<T, std::vector<int64_t>>) return FieldType::IntList;
  else if constexpr (std::is_same_v<T, std::vector<double>>) return FieldType::FloatList;
  else return FieldType::StringList;
}

// One row of the table from a member accessor; the keyword defaults to the dotted name with '_' for '.'.
template <class Access>
ConfigField field(const char* name, const char* keyword, const char* doc, Access member,
                  std::vector<std::string> choices = {}) {
  using T = std::remove_reference_t<decltype(member(std::declval<ScoreConfig&>()))>;
  ConfigField f;
  f.name = name;
  f.keyword = keyword ? keyword : f.name;
  std::replace(f.keyword.begin(), f.keyword.end(), '.', '_');
  f.type = field_type<T>();
  f.doc = doc;
  f.choices = std::move(choices);
  f.get = [member](const ScoreConfig& c) -> FieldValue { return member(const_cast<ScoreConfig&>(c)); };
  f.set = [member](ScoreConfig& c, const FieldValue& v) { member(c) = std::get<T>(v); };
  return f;
}

#define VITFIQA_MEMBER(path) [](ScoreConfig& c) -> auto& { return c.path; }

std::string trim(const std::string& s) {
  auto b = s.find_first_not_of(" \t\r\n"), e = s.find_last_not_of(" \t\r\n");
  return b == std::string::npos ? "" : s.substr(b, e - b + 1);
}

std::vector<std::string> split_list(const std::string& text) {
  std::vector<std::string> out;
  std::string t = trim(text);
  if (t.empty()) return out;
  size_t start = 0;
  while (true) {
    auto comma = t.find(',', start);
    out.push_back(trim(t.substr(start, comma == std::string::npos ? std::string::npos : comma - start)));
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return out;
}

bool parse_int(const std::string& s, int64_t& out) {
  auto t = trim(s);
  auto r = std::from_chars(t.data(), t.data() + t.size(), out);
  return !t.empty() && r.ec == std::errc() && r.ptr == t.data() + t.size();
}

bool parse_double(const std::string& s, double& out) {
  auto t = trim(s);
  if (t.empty()) return false;
  try {
    size_t used = 0;
    out = std::stod(t, &used);
    return used == t.size();
  } catch (const std::exception&) {
    return false;
  }
}

std::string format_double(double v) {
  char buf[64];
  auto r = std::to_chars(buf, buf + sizeof(buf), v);  // shortest text that reads back to the same double
  return std::string(buf, r.ptr);
}

}  // namespace

const std::vector<ConfigField>& config_fields() {
  static const std::vector<ConfigField> table{
      field("methods", nullptr, "quality methods to compute (vitfiqa.METHODS lists them)", VITFIQA_MEMBER(methods)),
      field("heatmaps", nullptr, "also return per-method heatmaps", VITFIQA_MEMBER(heatmaps)),
      field("return_captures", nullptr, "also return the raw captures the methods read", VITFIQA_MEMBER(return_captures)),
      field("prefix_tokens", nullptr, "CLS/quality/register tokens before the patches; -1: from the patch grid",
            VITFIQA_MEMBER(prefix_tokens)),
      field("grid", nullptr, "patch grid (h, w); empty: from the patch embedding", VITFIQA_MEMBER(grid)),
      field("quality_output", nullptr, "which model output is the quality (ViT-FIQA: (embedding, quality) -> -1)",
            VITFIQA_MEMBER(quality_output)),
      field("attn.block", nullptr, "ATTN-FIQA block (0-based, negative counts from the end)", VITFIQA_MEMBER(attn.block)),
      field("attn.tokens", nullptr, "ATTN-FIQA mean over all tokens (the papers) or patch tokens only",
            VITFIQA_MEMBER(attn.tokens), {"all", "patches"}),
      field("attn.logits", nullptr, "where the softmax input adds a bias or mask: qk = q.k*scale alone (the papers), "
            "full = the whole softmax input (checked by the capture: check_attn_logits)", VITFIQA_MEMBER(attn.logits)),
      field("vitnt.blocks", nullptr, "ViTNT-FIQA blocks (0-based; empty: all)", VITFIQA_MEMBER(vitnt.blocks)),
      field("vitnt.scale", nullptr, "ViTNT-FIQA s in 2 / (1 + exp(s d))", VITFIQA_MEMBER(vitnt.scale)),
      field("vitnt.weighting", nullptr, "ViTNT-FIQA patch weights: uniform or attention received",
            VITFIQA_MEMBER(vitnt.weighting), {"uniform", "attention"}),
      field("vitnt.attention_blocks", nullptr, "attention weighting: the last selected block's attention (official "
            "default) or the mean over all selected blocks", VITFIQA_MEMBER(vitnt.attention_blocks), {"last", "all"}),
      field("exfiqa.exits", "exits", "EX-FIQA exit blocks (0-based; empty: all)", VITFIQA_MEMBER(exfiqa.exits)),
      field("exfiqa.normalization", "exit_normalization", "EX-FIQA per-exit normalisation over the batch",
            VITFIQA_MEMBER(exfiqa.normalization), exit_normalizations()),
      field("heatmap.size", nullptr, "heatmap (height, width); empty: the input's", VITFIQA_MEMBER(heatmap.size)),
      field("heatmap.normalize", nullptr, "min-max on the patch grid: per image, global (over the call, or "
            "heatmap.range), or none", VITFIQA_MEMBER(heatmap.normalize), heatmap_normalizations()),
      field("heatmap.range", nullptr, "(low, high): a fixed global range, e.g. a data set's", VITFIQA_MEMBER(heatmap.range)),
  };
  return table;
}

#undef VITFIQA_MEMBER

const ConfigField& config_field(const std::string& name) {
  for (const auto& f : config_fields())
    if (f.name == name) return f;
  std::string known;
  for (const auto& f : config_fields()) known += (known.empty() ? "" : ", ") + f.name;
  throw std::invalid_argument("unknown score config field '" + name + "' (fields: " + known + ")");
}

const char* type_name(FieldType type) {
  switch (type) {
    case FieldType::Bool: return "bool";
    case FieldType::Int: return "int";
    case FieldType::Float: return "float";
    case FieldType::String: return "str";
    case FieldType::IntList: return "list[int]";
    case FieldType::FloatList: return "list[float]";
    case FieldType::StringList: return "list[str]";
  }
  return "?";
}

std::string ConfigField::label() const { return keyword == name ? name : name + " (" + keyword + ")"; }

void config_error(const std::string& name, const std::string& what) {
  throw std::invalid_argument(config_field(name).label() + " " + what);
}

FieldValue ConfigField::parse(const std::string& text) const {
  auto bad = [&](const std::string& expected) -> std::invalid_argument {
    return std::invalid_argument(label() + ": cannot read '" + text + "' as " + expected);
  };
  switch (type) {
    case FieldType::Bool: {
      std::string t = trim(text);
      std::transform(t.begin(), t.end(), t.begin(), ::tolower);
      if (t == "true" || t == "1" || t == "yes" || t == "on") return true;
      if (t == "false" || t == "0" || t == "no" || t == "off") return false;
      throw bad("true or false");
    }
    case FieldType::Int: {
      int64_t v;
      if (!parse_int(text, v)) throw bad("an integer");
      return v;
    }
    case FieldType::Float: {
      double v;
      if (!parse_double(text, v)) throw bad("a number");
      return v;
    }
    case FieldType::String: return trim(text);
    case FieldType::IntList: {  // "0,3,5", "0:20" (start:stop[:step], stop excluded as in Python), mixed
      std::vector<int64_t> out;
      for (const auto& item : split_list(text)) {
        auto colon = item.find(':');
        if (colon == std::string::npos) {
          int64_t v;
          if (!parse_int(item, v)) throw bad("integers: 0,3,5 or start:stop[:step]");
          out.push_back(v);
          continue;
        }
        auto second = item.find(':', colon + 1);
        int64_t start, stop, step = 1;
        bool ok = parse_int(item.substr(0, colon), start) &&
                  parse_int(item.substr(colon + 1, second == std::string::npos ? std::string::npos : second - colon - 1), stop) &&
                  (second == std::string::npos || parse_int(item.substr(second + 1), step));
        if (!ok || step <= 0) throw bad("integers: 0,3,5 or start:stop[:step] with a positive step");
        for (int64_t v = start; v < stop; v += step) out.push_back(v);
        if (start >= stop) throw bad("a non-empty range start:stop (stop excluded)");
      }
      return out;
    }
    case FieldType::FloatList: {
      std::vector<double> out;
      for (const auto& item : split_list(text)) {
        double v;
        if (!parse_double(item, v)) throw bad("numbers: 0.5,1.5");
        out.push_back(v);
      }
      return out;
    }
    case FieldType::StringList: {
      std::vector<std::string> out;
      for (auto& item : split_list(text))
        if (!item.empty()) out.push_back(item);
      return out;
    }
  }
  throw bad(type_name(type));
}

std::string ConfigField::format(const FieldValue& value) const {
  return std::visit(
      [](const auto& v) -> std::string {
        using T = std::decay_t<decltype(v)>;
        if constexpr (std::is_same_v<T, bool>) return v ? "true" : "false";
        else if constexpr (std::is_same_v<T, int64_t>) return std::to_string(v);
        else if constexpr (std::is_same_v<T, double>) return format_double(v);
        else if constexpr (std::is_same_v<T, std::string>) return v;
        else {
          std::string out;
          for (const auto& e : v) {
            if (!out.empty()) out += ",";
            if constexpr (std::is_same_v<T, std::vector<std::string>>) out += e;
            else if constexpr (std::is_same_v<T, std::vector<double>>) out += format_double(e);
            else out += std::to_string(e);
          }
          return out;
        }
      },
      value);
}

FieldValue ConfigField::coerce(const FieldValue& value) const {
  auto wrong = [&]() -> std::invalid_argument {
    return std::invalid_argument(label() + " must be " + type_name(type) + ", got " +
                                 (std::holds_alternative<std::string>(value) ? "'" + std::get<std::string>(value) + "'"
                                                                             : format(value)));
  };
  if (std::holds_alternative<std::string>(value) && type != FieldType::String) return parse(std::get<std::string>(value));
  switch (type) {
    case FieldType::Float:
      if (auto* i = std::get_if<int64_t>(&value)) return static_cast<double>(*i);
      break;
    case FieldType::FloatList:
      if (auto* l = std::get_if<std::vector<int64_t>>(&value)) return std::vector<double>(l->begin(), l->end());
      break;
    case FieldType::IntList:  // an empty list arrives as whichever list type matched first
    case FieldType::StringList:
      if (auto* l = std::get_if<std::vector<double>>(&value); l && l->empty())
        return type == FieldType::IntList ? FieldValue(std::vector<int64_t>{}) : FieldValue(std::vector<std::string>{});
      if (auto* l = std::get_if<std::vector<int64_t>>(&value); l && l->empty() && type == FieldType::StringList)
        return std::vector<std::string>{};
      break;
    default:
      break;
  }
  if (value.index() != static_cast<size_t>(type)) throw wrong();
  return value;
}

bool ScoreConfig::operator==(const ScoreConfig& other) const {
  for (const auto& f : config_fields())
    if (f.get(*this) != f.get(other)) return false;
  return true;
}

std::string ScoreConfig::to_string() const {
  std::string out = "ScoreConfig(";
  bool first = true;
  for (const auto& f : config_fields()) {
    auto v = f.get(*this);
    std::string text = f.format(v);
    bool plain = f.type == FieldType::Bool || f.type == FieldType::Int || f.type == FieldType::Float;
    out += (first ? "" : ", ") + f.name + "=" + (plain ? text : "'" + text + "'");
    first = false;
  }
  return out + ")";
}

void check_choices(const ScoreConfig& config, const std::string& section) {
  for (const auto& f : config_fields()) {
    auto dot = f.name.find('.');
    std::string sec = dot == std::string::npos ? "" : f.name.substr(0, dot);
    if (sec != section || f.choices.empty()) continue;
    auto v = std::get<std::string>(f.get(config));
    if (std::find(f.choices.begin(), f.choices.end(), v) == f.choices.end()) {
      std::string list;
      for (size_t i = 0; i < f.choices.size(); ++i)
        list += (i == 0 ? "'" : i + 1 == f.choices.size() ? " or '" : ", '") + f.choices[i] + "'";
      throw std::invalid_argument(f.label() + " must be " + list + ", got '" + v + "' (" + f.doc + ")");
    }
  }
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
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

std::vector<int64_t> all_blocks(int64_t num_blocks) {
  std::vector<int64_t> v(num_blocks);
  for (int64_t i = 0; i < num_blocks; ++i) v[i] = i;
  return v;
}

}  // namespace vitfiqa
