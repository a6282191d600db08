#include "graph_analysis.h"

#include "graph_prepare.h"

#include <torch/csrc/jit/ir/constants.h>

#include <algorithm>
#include <cctype>
#include <functional>
#include <map>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <unordered_map>
#include <utility>

namespace vitfiqa {

using torch::jit::Graph;
using torch::jit::Node;
using torch::jit::Value;
namespace attr = c10::attr;

namespace {

// ---- module scopes ----

// Module instance names of the inlined call stack, outermost first: e.g. {"blocks", "3", "attn"}.
using ScopePath = std::vector<std::string>;
using ScopeMap = std::unordered_map<Node*, ScopePath>;

ScopePath scope_path(Node* n) {
  ScopePath path;
  auto cs = n->callstack();
  if (!cs) return path;
  for (auto& entry : (*cs)->vec()) {
    const auto& info = std::get<2>(entry);
    if (info) path.push_back(info->instance_name());
  }
  return path;
}

bool is_number(const std::string& s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) { return std::isdigit(c); });
}

bool starts_with(const ScopePath& p, const ScopePath& prefix) {
  return p.size() >= prefix.size() && std::equal(prefix.begin(), prefix.end(), p.begin());
}

std::string display_name(const ScopePath& scope) {
  std::string name;
  for (size_t i = 0; i < scope.size(); ++i) name += (i ? "." : "") + scope[i];
  if (name.rfind("SELF.", 0) == 0) name = name.substr(5);  // scripted graphs name the top module SELF
  return name;
}

// The scope path with numeric instance names wildcarded: "blocks/#/attn/", the same for every block.
std::string scope_pattern(const ScopePath& p) {
  std::string pat;
  for (auto& s : p) pat += (is_number(s) ? std::string("#") : s) + "/";
  return pat;
}

Node* top_level(Node* n, Graph& g) {
  while (n->owningBlock() != g.block()) n = n->owningBlock()->owningNode();
  return n;
}

// ---- data flow ----

// Values computed from the images' data (through any op, control flow included). Shapes are not data: a
// size, rank or device read off a tensor starts no dependence, so a position table or mask built for the
// input's size counts as a constant, like the parameters it is made of.
std::unordered_set<Value*> data_dependent_values(Graph& g, Value* images) {
  static const std::unordered_set<c10::Symbol> shape_ops{c10::aten::size, c10::aten::dim,    c10::aten::numel,
                                                         c10::aten::len,  c10::prim::device,
                                                         c10::prim::dtype, c10::aten::sym_size};
  std::unordered_set<Value*> dep{images};
  std::function<void(torch::jit::Block*)> walk = [&](torch::jit::Block* b) {
    for (Node* n : b->nodes()) {
      for (auto* inner : n->blocks()) walk(inner);
      if (shape_ops.count(n->kind())) continue;
      if (reads_any(n, dep))
        for (Value* o : n->outputs()) dep.insert(o);
    }
  };
  walk(g.block());
  return dep;
}

// Every value `n` reads, directly or through what computed it.
std::unordered_set<Value*> ancestors(Node* n) {
  std::unordered_set<Value*> seen;
  std::vector<Value*> stack;
  collect_reads(n, stack);
  while (!stack.empty()) {
    Value* v = stack.back();
    stack.pop_back();
    if (!seen.insert(v).second) continue;
    collect_reads(v->node(), stack);
  }
  return seen;
}

// ---- attention sites ----

bool is_attention_op(Node* n) {
  return n->kind() == c10::aten::softmax || n->kind() == c10::aten::scaled_dot_product_attention;
}

int count_nested_attention(torch::jit::Block* b) {
  int count = 0;
  for (Node* n : b->nodes())
    for (auto* inner : n->blocks()) {
      for (Node* m : inner->nodes()) count += is_attention_op(m);
      count += count_nested_attention(inner);
    }
  return count;
}

void collect_kinds(torch::jit::Block* b, std::map<std::string, int>& counts) {
  for (Node* n : b->nodes()) {
    counts[n->kind().toQualString()]++;
    for (auto* inner : n->blocks()) collect_kinds(inner, counts);
  }
}

// Attention ops in the top-level block (nested ones sit in control flow we cannot tap); refuses a graph with
// none, saying what it has instead.
std::vector<Node*> attention_ops(Graph& g) {
  std::vector<Node*> ops;
  for (Node* n : g.nodes())
    if (is_attention_op(n)) ops.push_back(n);
  if (!ops.empty()) return ops;
  std::map<std::string, int> kinds;
  collect_kinds(g.block(), kinds);
  const int nested = count_nested_attention(g.block());
  bool conv = kinds.count("aten::conv2d") || kinds.count("aten::_convolution");
  std::string msg = "no attention found in the model: vitfiqa needs a Vision Transformer whose attention "
                    "is aten::softmax (explicit) or aten::scaled_dot_product_attention (fused)";
  if (nested) msg += "; " + std::to_string(nested) + " attention op(s) sit inside control flow (if/loop), which cannot be captured";
  else if (conv) msg += "; the graph has convolutions but no attention (a CNN?)";
  throw std::invalid_argument(msg);
}

// Groups the attention ops by module pattern and keeps the most common one: the transformer blocks' attention;
// a stray softmax in a head is ignored (and noted). A second repeated pattern is a second run of attention
// blocks: stages named apart (stage1.#, stage2.#), which would be scored as if they were the model.
std::vector<Node*> block_attention_ops(const std::vector<Node*>& ops, ScopeMap& paths, ModelInfo& info) {
  std::map<std::string, std::vector<Node*>> by_pattern;
  std::vector<std::string> pattern_order;
  for (Node* n : ops) {
    std::string pat = scope_pattern(paths[n]);
    if (!by_pattern.count(pat)) pattern_order.push_back(pat);
    by_pattern[pat].push_back(n);
  }
  std::string best = pattern_order.front();
  for (auto& pat : pattern_order)
    if (by_pattern[pat].size() > by_pattern[best].size()) best = pat;
  for (auto& pat : pattern_order)
    if (pat != best && by_pattern[pat].size() > 1) {
      auto show = [&](const std::string& p) {
        std::string out = p.substr(0, p.size() - 1);
        std::replace(out.begin(), out.end(), '/', '.');
        if (out.rfind("SELF.", 0) == 0) out = out.substr(5);
        return "'" + out + "' x" + std::to_string(by_pattern[p].size());
      };
      throw std::invalid_argument("not a plain ViT: attention blocks in more than one repeated module pattern (" +
                                  show(pattern_order.front() == best ? best : pat) + ", " +
                                  show(pattern_order.front() == best ? pat : best) +
                                  "): stages of blocks, as in hierarchical transformers; vitfiqa scores ViTs whose "
                                  "blocks all read one token sequence");
    }
  const auto& chosen = by_pattern[best];
  if (chosen.size() < ops.size())
    info.notes.push_back(std::to_string(ops.size() - chosen.size()) +
                         " attention-like op(s) outside the transformer blocks were ignored");
  return chosen;
}

// How many leading components of an attention op's scope name its block: up to the last numeric component
// (blocks.3 in blocks.3.attn); without numbers, one below the longest common prefix of all the ops.
size_t block_scope_depth(const std::vector<Node*>& ops, ScopeMap& paths) {
  const ScopePath& first = paths[ops.front()];
  size_t depth = 0;
  for (size_t i = 0; i < first.size(); ++i)
    if (is_number(first[i])) depth = i + 1;
  if (depth > 0) return depth;
  size_t lcp = first.size();
  for (Node* n : ops) {
    const auto& p = paths[n];
    size_t k = 0;
    while (k < lcp && k < p.size() && p[k] == first[k]) ++k;
    lcp = k;
  }
  return ops.size() == 1 ? std::max<size_t>(first.size() - 1, 1) : std::min(lcp + 1, first.size());
}

// The module scope of each block (empty when the graph carries no module hierarchy) and the blocks' names.
std::vector<ScopePath> block_scopes(const std::vector<Node*>& ops, ScopeMap& paths, ModelInfo& info) {
  std::vector<ScopePath> scopes;
  info.has_hierarchy = !paths[ops.front()].empty();
  if (!info.has_hierarchy) {
    info.notes.push_back("the graph carries no module hierarchy (frozen model?): blocks are known only by the "
                         "order of their attention ops, and block outputs cannot be located");
    for (size_t i = 0; i < ops.size(); ++i) info.block_names.push_back("attention_" + std::to_string(i));
    return scopes;
  }
  const size_t depth = block_scope_depth(ops, paths);
  for (Node* n : ops) {
    ScopePath scope(paths[n].begin(), paths[n].begin() + std::min(depth, paths[n].size()));
    if (!scopes.empty() && scopes.back() == scope)
      throw std::invalid_argument("not a plain ViT: block '" + display_name(scope) +
                                  "' has more than one attention op (stages of attention blocks, as in PVT, or "
                                  "several attentions per block); vitfiqa expects one attention per block");
    scopes.push_back(scope);
    info.block_names.push_back(display_name(scope));
  }
  return scopes;
}

// The q.k*scale part of a softmax input that adds terms computed without the images (a relative-position
// bias, a fixed mask): walks back through such additions (and dtype casts) to the data-dependent operand.
// Returns nullptr when the softmax input adds nothing of the kind.
Value* unbiased_logits(Value* softmax_input, const std::unordered_set<Value*>& data_dependent) {
  Value* v = softmax_input;
  bool biased = false;
  for (;;) {
    Node* n = v->node();
    auto k = n->kind();
    if ((k == c10::aten::add || k == c10::aten::sub) && n->inputs().size() >= 2 &&
        n->input(1)->type()->isSubtypeOf(*c10::TensorType::get())) {
      bool lhs = data_dependent.count(n->input(0)) > 0, rhs = data_dependent.count(n->input(1)) > 0;
      auto alpha = n->inputs().size() > 2 ? torch::jit::toIValue(n->input(2)) : std::optional<c10::IValue>(c10::IValue(1));
      bool unit_alpha = alpha && ((alpha->isInt() && alpha->toInt() == 1) || (alpha->isDouble() && alpha->toDouble() == 1.0));
      if (lhs && !rhs && unit_alpha) {
        v = n->input(0);
        biased = true;
        continue;
      }
      if (rhs && !lhs && k == c10::aten::add && unit_alpha) {
        v = n->input(1);
        biased = true;
        continue;
      }
      break;
    }
    if (k == c10::aten::to || k == c10::aten::contiguous || k == c10::aten::type_as) {
      v = n->input(0);
      continue;
    }
    break;
  }
  return biased ? v : nullptr;
}

// One site per block; a site is biased when its softmax input (or SDPA's attn_mask) adds terms that do not come
// from q.k. Biased blocks are listed in info, with a note on what attn_logits then changes.
std::vector<AttentionSite> attention_sites(const std::vector<Node*>& ops,
                                           const std::unordered_set<Value*>& data_dependent, ModelInfo& info) {
  std::vector<AttentionSite> sites;
  std::vector<std::string> biased;
  for (size_t b = 0; b < ops.size(); ++b) {
    AttentionSite s{ops[b], static_cast<int64_t>(b)};
    if (s.node->kind() == c10::aten::softmax) {
      s.unbiased_logits = unbiased_logits(s.node->input(0), data_dependent);
      s.biased = s.unbiased_logits != nullptr;
    } else {
      s.biased = !is_none(s.node->namedInput("attn_mask"));
    }
    if (s.biased) {
      info.biased_blocks.push_back(s.block);
      biased.push_back(info.block_names.at(s.block));
    }
    sites.push_back(s);
  }
  if (!biased.empty())
    info.notes.push_back("ATTN-FIQA: the attention of " + std::to_string(biased.size()) + " block(s) (" + biased.front() +
                         (biased.size() > 1 ? ", ..." : "") +
                         ") adds a bias or mask to q.k*scale before the softmax (relative-position bias?); "
                         "attn_logits='qk' (default, the papers' q.k/sqrt(d)) leaves it out, 'full' includes it, "
                         "and the two give different scores");
  return sites;
}

// Explicit or fused, the same in every block; causal attention is refused.
AttentionKind attention_kind(const std::vector<AttentionSite>& sites) {
  bool any_sdpa = false, any_softmax = false;
  for (auto& s : sites) {
    if (s.node->kind() == c10::aten::scaled_dot_product_attention) {
      any_sdpa = true;
      auto causal = torch::jit::toIValue(s.node->namedInput("is_causal"));
      if (!causal || causal->toBool())
        throw std::invalid_argument("causal (or non-constant is_causal) attention is not supported for quality scoring");
    } else {
      any_softmax = true;
    }
  }
  if (any_sdpa && any_softmax) throw std::invalid_argument("the model mixes explicit and fused attention across blocks");
  return any_sdpa ? AttentionKind::ScaledDotProduct : AttentionKind::Softmax;
}

// ---- block outputs ----

// Tensors computed inside `scope` from the images' data and used outside it. Constants, parameters and what is
// built from them alone (the tracer's 0-dim `scale` constant created in blocks.0.attn and reused by every block,
// a relative-position table) are not candidates.
std::vector<Value*> values_leaving_scope(Graph& g, const ScopePath& scope, ScopeMap& node_paths,
                                         const std::unordered_set<Value*>& data_dependent) {
  std::vector<Value*> escaping;
  for (Node* n : g.nodes()) {
    if (!starts_with(node_paths[n], scope)) continue;
    if (n->kind() == c10::prim::Constant || n->kind() == c10::prim::GetAttr) continue;
    for (Value* v : n->outputs()) {
      if (!v->type()->isSubtypeOf(*c10::TensorType::get()) || !data_dependent.count(v)) continue;
      bool escapes = false;
      for (auto& use : v->uses()) {
        Node* u = top_level(use.user, g);
        if (u == g.return_node() || !starts_with(node_paths[u], scope)) escapes = true;
      }
      if (escapes) escaping.push_back(v);
    }
  }
  return escaping;
}

// Where v is made, relative to a block scope: its op and the wildcarded rest of its scope.
std::string place_in_block(Value* v, const ScopePath& scope, ScopeMap& node_paths) {
  const auto& p = node_paths[v->node()];
  std::string r = v->node()->kind().toQualString();
  for (size_t i = scope.size(); i < p.size(); ++i) r += "/" + (is_number(p[i]) ? std::string("#") : p[i]);
  return r;
}

// Each block's output, found by data flow. Of several candidates leaving a block (a block returning its
// attention weights beside the hidden state), the output is the residual stream: the one the next block's
// attention reads; for the last block, the one made like the previous block's output (same op at the same place
// in the block).
std::vector<Value*> locate_block_outputs(Graph& g, const std::vector<ScopePath>& scopes,
                                         const std::vector<AttentionSite>& sites, ScopeMap& node_paths,
                                         const std::unordered_set<Value*>& data_dependent) {
  std::vector<Value*> outputs;
  for (size_t b = 0; b < scopes.size(); ++b) {
    const auto& scope = scopes[b];
    std::vector<Value*> escaping = values_leaving_scope(g, scope, node_paths, data_dependent);
    std::vector<Value*> kept;
    if (escaping.size() > 1 && b + 1 < scopes.size()) {
      auto feeds_next = ancestors(sites[b + 1].node);
      for (Value* v : escaping)
        if (feeds_next.count(v)) kept.push_back(v);
      escaping = kept;
    } else if (escaping.size() > 1 && b > 0) {
      std::string like = place_in_block(outputs.back(), scopes[b - 1], node_paths);
      for (Value* v : escaping)
        if (place_in_block(v, scope, node_paths) == like) kept.push_back(v);
      escaping = kept;
    }
    if (escaping.size() != 1)
      throw std::invalid_argument("could not locate the output of block '" + display_name(scope) + "' (" +
                                  std::to_string(escaping.size()) + " tensors computed from the images leave it" +
                                  (escaping.size() > 1 ? " and feed the next block" : "") + ")");
    outputs.push_back(escaping.front());
  }
  return outputs;
}

// Refuses models that are not one token sequence running through every block: between two consecutive
// blocks the residual stream may only be cast, copied or reshaped; a convolution, pooling, concatenation or
// projection there (Swin's patch merging, PiT's pooling, PVT's stages) changes the tokens, so per-token
// methods would compare different things. Shifted windows (aten::roll inside a block) are refused too.
void check_plain_token_sequence(Graph& g, const std::vector<ScopePath>& scopes, ScopeMap& node_paths,
                                const std::vector<Value*>& block_outputs, const std::vector<AttentionSite>& sites) {
  static const std::unordered_set<c10::Symbol> passthrough{
      c10::aten::to,      c10::aten::contiguous, c10::aten::dropout,      c10::aten::clone,
      c10::aten::detach,  c10::aten::type_as,    c10::aten::view,         c10::aten::reshape,
      c10::aten::size,    c10::prim::ListConstruct, c10::prim::ListUnpack, c10::prim::TupleConstruct,
      c10::prim::TupleUnpack, c10::prim::TupleIndex, c10::prim::NumToTensor, c10::aten::Int,
      c10::aten::__getitem__, c10::prim::Constant, c10::aten::feature_dropout, c10::aten::alpha_dropout};
  auto in_any_block = [&](Node* n) {
    for (auto& sc : scopes)
      if (starts_with(node_paths[n], sc)) return true;
    return false;
  };
  for (Node* n : g.nodes()) {
    if (n->kind() == c10::aten::roll && in_any_block(n))
      throw std::invalid_argument("not a plain ViT: shifted-window attention (aten::roll in '" +
                                  display_name(node_paths[n]) +
                                  "', as in Swin); vitfiqa scores ViTs whose attention spans the whole token sequence");
  }
  for (size_t b = 0; b + 1 < scopes.size(); ++b) {
    auto feeds_next = ancestors(sites[b + 1].node);
    std::unordered_set<Value*> downstream{block_outputs[b]};
    for (Node* n = block_outputs[b]->node()->next(); n != sites[b + 1].node && n != g.return_node(); n = n->next()) {
      if (!reads_any(n, downstream)) continue;
      for (Value* o : n->outputs()) downstream.insert(o);
      bool between = std::any_of(n->outputs().begin(), n->outputs().end(), [&](Value* o) { return feeds_next.count(o) > 0; });
      if (!between || in_any_block(n) || passthrough.count(n->kind())) continue;
      std::string where = node_paths[n].empty() ? std::string("the model's forward") : "'" + display_name(node_paths[n]) + "'";
      throw std::invalid_argument("not a plain ViT: between blocks '" + display_name(scopes[b]) + "' and '" +
                                  display_name(scopes[b + 1]) + "' the tokens pass through " +
                                  n->kind().toQualString() + " in " + where +
                                  " (token pooling or merging between stages, as in Swin, PiT or PVT); vitfiqa "
                                  "scores ViTs whose blocks all read one token sequence");
    }
  }
}

// ---- final norm ----

// Ops that pass a tensor's values through unchanged (dtype casts, layout, views, eval-mode dropout): the
// official face ViTs write `self.norm(x.float())`, and other models reshape or `contiguous()` first.
// `view` marks the ones that may change the shape (their shape arguments are kept as the model wrote them).
bool is_value_preserving(Node* n, bool* view) {
  static const std::unordered_set<std::string> same_shape{"aten::to", "aten::type_as", "aten::contiguous",
                                                          "aten::clone", "aten::detach", "aten::alias"};
  static const std::unordered_set<std::string> views{"aten::view", "aten::reshape", "aten::view_as",
                                                     "aten::reshape_as", "aten::flatten", "aten::unflatten",
                                                     "aten::squeeze", "aten::unsqueeze"};
  static const std::unordered_set<std::string> dropouts{"aten::dropout", "aten::feature_dropout",
                                                        "aten::alpha_dropout", "aten::feature_alpha_dropout"};
  const std::string kind = n->kind().toQualString();
  if (n->outputs().size() != 1 || !n->output()->type()->isSubtypeOf(*c10::TensorType::get())) return false;
  if (same_shape.count(kind)) {
    *view = false;
    return true;
  }
  if (views.count(kind)) {
    *view = true;
    return true;
  }
  if (dropouts.count(kind)) {  // dropout(x, p, train): an identity only when train is a constant False
    auto train = torch::jit::toIValue(n->input(2));
    *view = false;
    return train && train->isBool() && !train->toBool();
  }
  return false;
}

// A cast to float32 (or a cast that names no dtype): the fused LayerNorm + distance kernel reads float32.
bool is_float_cast_or_copy(Node* n) {
  if (n->kind() != c10::aten::to) return n->kind() != c10::aten::type_as;
  auto index = n->schema().argumentIndexWithName("dtype");
  if (!index) return false;  // to(other): the dtype comes from another tensor
  Value* dtype = n->input(*index);
  if (is_none(dtype)) return true;
  auto v = torch::jit::toIValue(dtype);
  return v && v->isInt() && static_cast<at::ScalarType>(v->toInt()) == at::kFloat;
}

// The chain as the final norm, described in info (source: where it came from).
FinalNormChain final_norm_chain(const std::vector<Node*>& nodes, const std::string& source, ModelInfo& info) {
  FinalNormChain chain{nodes};
  Node* norm = chain.norm();
  info.has_final_norm = true;
  info.final_norm = source;
  info.final_norm_ops.clear();
  // layer_norm(x, [C], weight, bias, eps) on the raw block output, or after casts to float32 / copies
  // only: fusable into the distance kernel (which reads float32 rows and applies the norm itself).
  auto shape = torch::jit::toIValue(norm->input(1));
  auto eps = torch::jit::toIValue(norm->input(4));
  chain.fusable = shape && shape->isIntList() && shape->toIntList().size() == 1 && eps && eps->isDouble();
  for (size_t i = 0; i + 1 < nodes.size(); ++i) {
    info.final_norm_ops.push_back(nodes[i]->kind().toQualString());
    bool view = false;
    is_value_preserving(nodes[i], &view);
    if (view || !is_float_cast_or_copy(nodes[i])) chain.fusable = false;
  }
  return chain;
}

// The first layer_norm (in graph order) reached from the last block's output along top-level, value-preserving
// uses, depth first; an empty chain if there is none.
FinalNormChain find_final_norm(Graph& g, Value* last_block_output, ModelInfo& info) {
  Node* found = nullptr;
  std::vector<Node*> path, chain;
  std::function<void(Value*)> walk = [&](Value* v) {
    for (auto& use : v->uses()) {
      Node* u = use.user;
      if (u->owningBlock() != g.block() || use.offset != 0) continue;
      if (u->kind() == c10::aten::layer_norm) {
        if (!found || u->isBefore(found)) {
          found = u;
          chain = path;
          chain.push_back(u);
        }
        continue;
      }
      bool view = false;
      if (path.size() < 16 && is_value_preserving(u, &view)) {
        path.push_back(u);
        walk(u->output());
        path.pop_back();
      }
    }
  };
  walk(last_block_output);
  if (!found) return {};
  std::string name = display_name(scope_path(found));
  return final_norm_chain(chain, name.empty() ? "layer_norm after the last block" : name, info);
}

// LayerNorm modules a user could name with final_norm= when forward applies none to the last block's output:
// first those forward applies after the last block (a norm after pooling: CLIP's post_layernorm, BEiT's
// pooler.layernorm, timm's fc_norm), in graph order; if there are none, the LayerNorm submodules outside the
// blocks (a norm forward leaves out, as the ATTN-FIQA / ViTNT-FIQA repositories' ViT does).
std::vector<std::string> final_norm_candidates(Graph& g, const torch::jit::Module& module,
                                              const std::vector<ScopePath>& blocks, Value* last_block_output) {
  std::vector<std::string> names;
  auto inside_block = [&](const ScopePath& p) {
    return std::any_of(blocks.begin(), blocks.end(), [&](const ScopePath& b) { return starts_with(p, b); });
  };
  auto add = [&](const std::string& name) {
    if (!name.empty() && std::find(names.begin(), names.end(), name) == names.end()) names.push_back(name);
  };
  Node* last = top_level(last_block_output->node(), g);
  for (Node* n : g.nodes()) {
    if (n->kind() != c10::aten::layer_norm || !last->isBefore(n)) continue;
    ScopePath p = scope_path(n);
    if (!inside_block(p)) add(display_name(p));
  }
  if (!names.empty()) return names;
  std::vector<std::string> block_names;
  for (const auto& b : blocks) block_names.push_back(display_name(b));
  for (const auto& sub : module.named_modules()) {
    const auto& type = sub.value.type()->name();
    if (sub.name.empty() || !type || type->name().find("LayerNorm") == std::string::npos) continue;
    // A scripted ModuleList loop names its blocks by index alone ("0", not "blocks.0"), so a block's name is
    // matched as whole dotted components anywhere in the module path, not only as its prefix.
    const std::string dotted = "." + sub.name + ".";
    bool in_block = std::any_of(block_names.begin(), block_names.end(), [&](const std::string& b) {
      return !b.empty() && dotted.find("." + b + ".") != std::string::npos;
    });
    if (!in_block) add(sub.name);
  }
  return names;
}

}  // namespace

// "final_norm='<the candidate>'" (or the candidates, or a generic module path) for messages.
std::string final_norm_suggestion(const std::vector<std::string>& candidates) {
  if (candidates.empty())
    return "final_norm='module.path' (the model has no LayerNorm outside its blocks to suggest)";
  std::string s = "final_norm='" + candidates.front() + "'";
  if (candidates.size() > 1) {
    s += " (LayerNorms outside the blocks: ";
    for (size_t i = 0; i < candidates.size(); ++i) s += (i ? ", " : "") + candidates[i];
    s += ")";
  }
  return s;
}

namespace {

std::invalid_argument final_norm_error(const std::string& path, const std::string& why) {
  return std::invalid_argument("final_norm='" + path + "': " + why);
}

// The submodule at a dotted path and its value in the graph, read through GetAttr nodes at the top of the graph
// (like the hoisted parameter reads).
std::pair<torch::jit::Module, Value*> read_submodule(Graph& g, const torch::jit::Module& module, const std::string& path) {
  std::vector<std::string> parts;
  std::istringstream in(path);
  for (std::string part; std::getline(in, part, '.');) parts.push_back(part);
  if (parts.empty() || path.back() == '.' ||
      std::any_of(parts.begin(), parts.end(), [](const std::string& p) { return p.empty(); }))
    throw final_norm_error(path, "expected a dotted module path such as 'norm' or 'net.norm'");
  torch::jit::Module mod = module;
  Value* obj = g.inputs().at(0);
  std::string walked;
  torch::jit::WithInsertPoint top(g.param_node()->next());
  for (const auto& part : parts) {
    walked += (walked.empty() ? "" : ".") + part;
    if (!mod.hasattr(part) || !mod.attr(part).isModule())
      throw final_norm_error(path, "the model has no submodule '" + walked + "'");
    mod = mod.attr(part).toModule();
    obj = g.insertNode(g.createGetAttr(obj, part))->output();
  }
  return {mod, obj};
}

// The shape a LayerNorm module normalises: its normalized_shape, else its weight's shape.
std::vector<int64_t> normalized_shape(const torch::jit::Module& norm, const std::string& path) {
  std::vector<int64_t> shape;
  if (norm.hasattr("normalized_shape") && norm.attr("normalized_shape").isTuple()) {
    for (const auto& e : norm.attr("normalized_shape").toTupleRef().elements()) shape.push_back(e.toInt());
  } else if (norm.hasattr("weight") && norm.attr("weight").isTensor()) {
    auto sizes = norm.attr("weight").toTensor().sizes();
    shape.assign(sizes.begin(), sizes.end());
  } else {
    throw final_norm_error(path, "the module keeps neither normalized_shape nor a weight, so its normalised shape is unknown");
  }
  return shape;
}

// A layer_norm with the named module's parameters, inserted after the last block's output (for models whose
// forward does not apply the norm there).
FinalNormChain named_final_norm(Graph& g, const torch::jit::Module& module, const std::string& path,
                                Value* last_block_output, ModelInfo& info) {
  const auto submodule = read_submodule(g, module, path);
  const torch::jit::Module& mod = submodule.first;
  Value* obj = submodule.second;
  const std::string type_name = mod.type()->name() ? mod.type()->name()->name() : "";
  if (type_name.find("LayerNorm") == std::string::npos)
    throw final_norm_error(path, "that module is a " + (type_name.empty() ? std::string("module") : type_name) +
                                     ", not a LayerNorm");
  auto param = [&](const char* name) -> Value* {
    torch::jit::WithInsertPoint top(obj->node()->next());
    if (mod.hasattr(name) && mod.attr(name).isTensor()) return g.insertNode(g.createGetAttr(obj, name))->output();
    return g.insertConstant(c10::IValue());
  };
  Value* weight = param("weight");
  Value* bias = param("bias");
  std::vector<int64_t> shape = normalized_shape(mod, path);
  double eps = 1e-5;
  if (mod.hasattr("eps") && mod.attr("eps").isDouble()) {
    eps = mod.attr("eps").toDouble();
  } else {
    info.notes.push_back("final_norm='" + path + "' keeps no eps (traced module): nn.LayerNorm's default 1e-5 is used");
  }
  torch::jit::WithInsertPoint after(last_block_output->node()->next());
  Value* out = g.insert(c10::aten::layer_norm, {last_block_output, shape, weight, bias, eps, true});
  return final_norm_chain({out->node()}, path + " (named by final_norm)", info);
}

// ---- patch embedding ----

// The value of a constant or of a GetAttr chain on self (a parameter, buffer or submodule), if it is one.
std::optional<at::IValue> resolve(Value* v, Graph& g, const torch::jit::Module& module) {
  if (v == g.inputs().at(0)) return module._ivalue();
  if (auto c = torch::jit::toIValue(v)) return c;
  Node* n = v->node();
  if (n->kind() != c10::prim::GetAttr) return std::nullopt;
  auto owner = resolve(n->input(0), g, module);
  if (!owner || !owner->isObject()) return std::nullopt;
  auto obj = owner->toObject();
  const auto& name = n->s(attr::name);
  if (!obj->type()->hasAttribute(name)) return std::nullopt;
  return obj->getAttr(name);
}

// The patch embedding: the first convolution before the first attention (it gives the patch grid).
Node* patch_embedding_conv(Graph& g, Node* first_attention) {
  for (Node* n : g.nodes()) {
    if (n == first_attention) break;
    if (n->kind() == c10::aten::conv2d || n->kind() == c10::aten::_convolution) return n;
  }
  return nullptr;
}

// Patch size and position-embedding length, from which the input size can be inferred when a model
// carries no input contract: a conv with stride == kernel (the patch embedding) and the largest
// [1, N, C] tensor attribute with the conv's C channels.
void describe_patch_embedding(Graph& g, const torch::jit::Module& module, Node* conv, ModelInfo& info) {
  info.has_patch_conv = conv != nullptr;
  if (!conv) return;
  auto weight = resolve(conv->input(1), g, module);
  auto stride = torch::jit::toIValue(conv->input(3));
  if (!weight || !weight->isTensor() || weight->toTensor().dim() != 4 || !stride || !stride->isIntList()) return;
  const auto w = weight->toTensor();
  auto st = stride->toIntVector();
  if (st.size() == 1) st.push_back(st[0]);
  if (st.size() != 2 || st[0] != w.size(2) || st[1] != w.size(3)) return;
  info.patch_size = {w.size(2), w.size(3)};
  const int64_t channels = w.size(0);
  for (Node* n : g.nodes()) {
    if (n->kind() != c10::prim::GetAttr && n->kind() != c10::prim::Constant) continue;
    if (n->outputs().size() != 1 || !n->output()->type()->isSubtypeOf(*c10::TensorType::get())) continue;
    auto t = resolve(n->output(), g, module);
    if (!t || !t->isTensor()) continue;
    const auto& p = t->toTensor();
    if (p.dim() == 3 && p.size(0) == 1 && p.size(2) == channels)
      info.position_tokens = std::max(info.position_tokens, p.size(1));
  }
}

int64_t output_count(Graph& g) {
  if (auto tt = g.outputs().at(0)->type()->cast<c10::TupleType>()) return static_cast<int64_t>(tt->elements().size());
  return 1;
}

}  // namespace

ModelLayout analyse_graph(const torch::jit::Module& module, const std::string& final_norm) {
  ModelLayout layout;
  layout.base = prepare_forward_graph(module);
  Graph& g = *layout.base;
  ModelInfo& info = layout.info;

  const std::vector<Node*> ops = attention_ops(g);
  ScopeMap paths;
  for (Node* n : ops) paths[n] = scope_path(n);
  const std::vector<Node*> block_ops = block_attention_ops(ops, paths, info);
  const std::vector<ScopePath> scopes = block_scopes(block_ops, paths, info);
  const auto data_dependent = data_dependent_values(g, g.inputs().at(1));
  layout.sites = attention_sites(block_ops, data_dependent, info);
  info.num_blocks = static_cast<int64_t>(block_ops.size());
  info.attention_kind = attention_kind(layout.sites);

  if (info.has_hierarchy) {
    ScopeMap node_paths;
    for (Node* n : g.nodes()) node_paths[n] = scope_path(n);
    layout.block_outputs = locate_block_outputs(g, scopes, layout.sites, node_paths, data_dependent);
    check_plain_token_sequence(g, scopes, node_paths, layout.block_outputs, layout.sites);
    Value* last = layout.block_outputs.back();
    layout.final_norm = final_norm.empty() ? find_final_norm(g, last, info)
                                           : named_final_norm(g, module, final_norm, last, info);
    if (!layout.final_norm.norm()) {  // the model loads and ATTN-FIQA works; only a request for normalised tokens raises
      info.final_norm_candidates = final_norm_candidates(g, module, scopes, last);
      info.notes.push_back("ViTNT-FIQA: no LayerNorm is applied to the last block's output in forward; name the "
                           "one to use with " + final_norm_suggestion(info.final_norm_candidates));
    }
  } else if (!final_norm.empty()) {
    throw std::invalid_argument("final_norm='" + final_norm + "' cannot be used: the graph carries no module "
                                "hierarchy (frozen model?), so block outputs cannot be located");
  }

  layout.patch_conv = patch_embedding_conv(g, layout.sites.front().node);
  describe_patch_embedding(g, module, layout.patch_conv, info);
  info.num_outputs = output_count(g);
  return layout;
}

}  // namespace vitfiqa
