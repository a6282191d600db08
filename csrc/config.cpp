// The field table's codec: parse and print values, assemble the table from the sections their owners register.
#include "config.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <stdexcept>
#include <type_traits>

#include "util.h"

namespace vitfiqa {

namespace {

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

struct Section {
  std::string name;
  int rank;
};

// The table and the sections in table order; function-local: filled from other files' static initialisers.
std::vector<ConfigField>& table() {
  static std::vector<ConfigField> fields;
  return fields;
}

std::vector<Section>& sections() {
  static std::vector<Section> s;
  return s;
}

}  // namespace

bool register_config_section(const std::string& section, int rank, std::vector<ConfigField> fields) {
  auto& secs = sections();
  for (const auto& s : secs)
    if (s.name == section) throw std::logic_error("score config section '" + section + "' is registered twice");
  // The section's place: sorted by rank, then name (static initialisers run in no fixed order across files).
  auto at = std::find_if(secs.begin(), secs.end(),
                         [&](const Section& s) { return s.rank > rank || (s.rank == rank && s.name > section); });
  const bool last = at == secs.end();
  const std::string next = last ? "" : at->name;  // the section this one goes before
  secs.insert(at, Section{section, rank});
  for (auto& f : fields) {
    if (!section.empty()) f.name = section + "." + f.name;
    if (f.keyword.empty()) {
      f.keyword = f.name;
      std::replace(f.keyword.begin(), f.keyword.end(), '.', '_');
    }
    for (const auto& other : table())
      if (other.name == f.name || other.keyword == f.keyword)
        throw std::logic_error("score config field '" + f.name + "' (" + f.keyword + ") is registered twice");
  }
  auto& t = table();
  auto pos = last ? t.end() : std::find_if(t.begin(), t.end(), [&](const ConfigField& f) { return f.section() == next; });
  t.insert(pos, std::make_move_iterator(fields.begin()), std::make_move_iterator(fields.end()));
  return true;
}

const std::vector<ConfigField>& config_fields() { return table(); }

std::vector<std::string> config_sections() {
  std::vector<std::string> out;
  for (const auto& s : sections()) out.push_back(s.name);
  return out;
}

const ConfigField& config_field(const std::string& name) {
  for (const auto& f : config_fields())
    if (f.name == name) return f;
  std::vector<std::string> known;
  for (const auto& f : config_fields()) known.push_back(f.name);
  throw std::invalid_argument("unknown score config field '" + name + "' (fields: " + join(known) + ")");
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

std::string ConfigField::section() const {
  auto dot = name.find('.');
  return dot == std::string::npos ? "" : name.substr(0, dot);
}

std::string ConfigField::label() const { return name; }  // one name per option (old keywords only warn)

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
          std::vector<std::string> items;
          for (const auto& e : v) {
            if constexpr (std::is_same_v<T, std::vector<std::string>>) items.push_back(e);
            else if constexpr (std::is_same_v<T, std::vector<double>>) items.push_back(format_double(e));
            else items.push_back(std::to_string(e));
          }
          return join(items, ",");
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
  std::vector<std::string> items;
  for (const auto& f : config_fields()) {
    std::string text = f.format(f.get(*this));
    bool plain = f.type == FieldType::Bool || f.type == FieldType::Int || f.type == FieldType::Float;
    items.push_back(f.name + "=" + (plain ? text : "'" + text + "'"));
  }
  return "ScoreConfig(" + join(items) + ")";
}

void check_choices(const ScoreConfig& config, const std::string& section) {
  for (const auto& f : config_fields()) {
    if (f.section() != section || f.choices.empty()) continue;
    auto v = std::get<std::string>(f.get(config));
    if (std::find(f.choices.begin(), f.choices.end(), v) == f.choices.end()) {
      std::string list;
      for (size_t i = 0; i < f.choices.size(); ++i)
        list += (i == 0 ? "'" : i + 1 == f.choices.size() ? " or '" : ", '") + f.choices[i] + "'";
      throw std::invalid_argument(f.label() + " must be " + list + ", got '" + v + "' (" + f.doc + ")");
    }
  }
}

}  // namespace vitfiqa
