// ScoreConfig: every scoring option, in per-method sections, with its default written once (below) and one
// field table (config.cpp) that knows each field's dotted name, type, doc, choices, how to parse it from a
// string and print it. Python binds this class itself (vitfiqa.ScoreConfig), so names and defaults are the
// same on both sides.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <variant>
#include <vector>

#include "capture.h"

namespace vitfiqa {

struct AttnConfig {
  int64_t block = -1;                        // ATTN-FIQA block (negative counts from the end)
  std::string tokens = "all";                // all | patches: queries and keys the mean runs over
  std::string logits = kDefaultAttnLogits;   // qk | full (see kDefaultAttnLogits)
};

struct VitntConfig {
  std::vector<int64_t> blocks;               // {} : all blocks
  double scale = 8.0;                        // s in 2 / (1 + exp(s d))
  std::string weighting = "uniform";         // uniform | attention
  std::string attention_blocks = "last";     // attention of the last selected block | all selected blocks
};

struct ExfiqaConfig {
  std::vector<int64_t> exits;                // {} : all blocks
  std::string normalization = "none";        // none | zscore | minmax (over the batch)
};

struct HeatmapConfig {
  std::vector<int64_t> size;                 // {} : the input's H, W
  std::string normalize = "image";           // image | global | none (render_heatmaps)
  std::vector<double> range;                 // {low, high}: a fixed range for "global" instead of the batch's
};

struct ScoreConfig {
  std::vector<std::string> methods{"attn", "vitnt"};  // registered method names (methods.h: method_registry)
  bool heatmaps = false;
  bool return_captures = false;
  int64_t prefix_tokens = -1;                // -1: from the patch grid (N - gh*gw)
  std::vector<int64_t> grid;                 // {} : from the patch embedding's convolution
  int64_t quality_output = -1;               // which model output is the quality (ViT-FIQA: (emb, q))
  AttnConfig attn;
  VitntConfig vitnt;
  ExfiqaConfig exfiqa;
  HeatmapConfig heatmap;

  bool operator==(const ScoreConfig& other) const;  // field by field, through the field table
  std::string to_string() const;  // ScoreConfig(methods='attn,vitnt', heatmaps=false, ..., attn.block=-1, ...)
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

  std::string label() const;          // how errors name the field: "vitnt.blocks (vitnt_blocks)"
  FieldValue default_value() const { return get(ScoreConfig{}); }
  FieldValue parse(const std::string& text) const;  // "0:20", "0,3,5", "-1", "qk", "true", "" (empty list)
  std::string format(const FieldValue& value) const;  // the inverse of parse
  FieldValue coerce(const FieldValue& value) const;   // an int for a float field etc.; else invalid_argument
};

const std::vector<ConfigField>& config_fields();
const ConfigField& config_field(const std::string& name);  // invalid_argument for an unknown name
const char* type_name(FieldType type);

// Errors about a field, named by its label. Every config error is a std::invalid_argument (Python ValueError)
// except a block index outside the model (std::out_of_range, Python IndexError).
[[noreturn]] void config_error(const std::string& name, const std::string& what);
// Checks the String fields of a section ("attn", "vitnt", "" = top level) against their choices.
void check_choices(const ScoreConfig& config, const std::string& section);
// 0-based block indices (negative count from the end) -> sorted, unique, in [0, num_blocks).
std::vector<int64_t> resolve_blocks(const std::vector<int64_t>& blocks, int64_t num_blocks, const std::string& name);
std::vector<int64_t> all_blocks(int64_t num_blocks);

}  // namespace vitfiqa
