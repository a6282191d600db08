#include "capture.h"

#include <torch/csrc/jit/api/function_impl.h>
#include <torch/csrc/jit/ir/constants.h>
#include <torch/csrc/jit/passes/constant_propagation.h>
#include <torch/csrc/jit/passes/dead_code_elimination.h>
#include <torch/csrc/jit/passes/inliner.h>
#include <torch/csrc/jit/passes/lower_tuples.h>
#include <torch/csrc/jit/serialization/import.h>
#include <ATen/core/grad_mode.h>

#include <algorithm>
#include <cmath>
#include <sstream>
#include <stdexcept>
#include <unordered_map>
#include <unordered_set>

namespace vitfiqa {

using torch::jit::Graph;
using torch::jit::Node;
using torch::jit::Value;
namespace attr = c10::attr;

namespace {

// Torch's messages can quote bytes of a corrupt file; pybind11 turns a message that is not valid UTF-8 into a
// UnicodeDecodeError instead of the ValueError we raise (found by benchmarks/fuzz.py). Keep printable ASCII.
std::string printable(std::string s) {
  for (auto& c : s)
    if (static_cast<unsigned char>(c) < 0x20 || static_cast<unsigned char>(c) > 0x7e) c = '?';
  return s;
}

std::string first_line(const std::string& s) {
  auto pos = s.find('\n');
  return printable(pos == std::string::npos ? s : s.substr(0, pos));
}

// The interpreter's message ends with the original error after a TorchScript traceback.
std::string last_line(const std::string& s) {
  std::istringstream in(s);
  std::string line, last;
  while (std::getline(in, line))
    if (line.find_first_not_of(" \t") != std::string::npos) last = line;
  return printable(last.empty() ? s : last.substr(last.find_first_not_of(" \t")));
}

at::ScalarType parse_dtype(const std::string& dtype) {
  if (dtype == "float32" || dtype == "float") return at::kFloat;
  if (dtype == "float16" || dtype == "half") return at::kHalf;
  if (dtype == "bfloat16") return at::kBFloat16;
  if (dtype == "float64" || dtype == "double") return at::kDouble;
  throw std::invalid_argument("unsupported dtype '" + dtype + "' (use float32, float16, bfloat16 or float64)");
}

at::Device parse_device(const std::string& device) {
  try {
    return at::Device(device);
  } catch (const c10::Error& e) {
    throw std::invalid_argument("invalid device '" + device + "': " + first_line(e.what_without_backtrace()));
  }
}

// Module instance names of the inlined call stack, outermost first: e.g. {"blocks", "3", "attn"}.
using ScopePath = std::vector<std::string>;

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

std::string join(const ScopePath& p, size_t n) {
  std::string out;
  for (size_t i = 0; i < n && i < p.size(); ++i) out += (i ? "." : "") + p[i];
  return out;
}

bool starts_with(const ScopePath& p, const ScopePath& prefix) {
  return p.size() >= prefix.size() && std::equal(prefix.begin(), prefix.end(), p.begin());
}

Node* top_level(Node* n, Graph& g) {
  while (n->owningBlock() != g.block()) n = n->owningBlock()->owningNode();
  return n;
}

bool is_none(Value* v) {
  return v->type()->kind() == c10::TypeKind::NoneType ||
         (v->node()->kind() == c10::prim::Constant && v->node()->output()->type()->kind() == c10::TypeKind::NoneType);
}

// Does n (or anything nested in its blocks) read a value in `vals`?
bool reads_any(Node* n, const std::unordered_set<Value*>& vals) {
  for (Value* in : n->inputs())
    if (vals.count(in)) return true;
  for (auto* b : n->blocks())
    for (Node* inner : b->nodes())
      if (reads_any(inner, vals)) return true;
  for (auto* b : n->blocks())
    for (Value* o : b->outputs())
      if (vals.count(o)) return true;
  return false;
}

void collect_kinds(torch::jit::Block* b, std::map<std::string, int>& counts) {
  for (Node* n : b->nodes()) {
    counts[n->kind().toQualString()]++;
    for (auto* inner : n->blocks()) collect_kinds(inner, counts);
  }
}

// An exception-only guard: an output-less If whose branches only compute and raise (shape checks such as
// BatchNorm's input-rank test). It mutates nothing, so it matters only if what it checks is computed.
bool is_guard(Node* n) {
  if (n->kind() != c10::prim::If || !n->outputs().empty()) return false;
  bool raises = false;
  std::function<bool(torch::jit::Block*)> pure = [&](torch::jit::Block* b) {
    for (Node* inner : b->nodes()) {
      if (inner->kind() == c10::prim::RaiseException) {
        raises = true;
        continue;
      }
      if (inner->kind() == c10::prim::SetAttr || inner->kind() == c10::prim::Print || inner->kind() == c10::aten::warn)
        return false;
      if (auto* schema = inner->maybeSchema(); schema && schema->is_mutable()) return false;
      for (auto* bb : inner->blocks())
        if (!pure(bb)) return false;
    }
    return true;
  };
  for (auto* b : n->blocks())
    if (!pure(b)) return false;
  return raises;
}

void collect_reads(Node* n, std::vector<Value*>& out) {
  for (Value* in : n->inputs()) out.push_back(in);
  for (auto* b : n->blocks()) {
    for (Node* inner : b->nodes()) collect_reads(inner, out);
    for (Value* o : b->outputs()) out.push_back(o);
  }
}

// Dead-code elimination that also drops guards checking values no output needs: a rewritten graph that
// returns early block values must not keep the rest of the network alive just to run its shape checks.
void eliminate_dead_code_and_guards(std::shared_ptr<Graph>& g) {
  torch::jit::EliminateDeadCode(g);
  std::unordered_set<Value*> live(g->outputs().begin(), g->outputs().end());
  std::vector<Node*> guards;
  std::vector<Node*> order(g->nodes().begin(), g->nodes().end());
  for (auto it = order.rbegin(); it != order.rend(); ++it) {
    Node* n = *it;
    bool used = std::any_of(n->outputs().begin(), n->outputs().end(), [&](Value* o) { return live.count(o) > 0; });
    bool unused_effect = std::all_of(n->outputs().begin(), n->outputs().end(), [](Value* o) { return !o->hasUses(); });
    if (is_guard(n)) {
      guards.push_back(n);
      continue;
    }
    if (used || unused_effect) {  // DCE kept an output-less node only for its side effect: a root
      std::vector<Value*> reads;
      collect_reads(n, reads);
      live.insert(reads.begin(), reads.end());
    }
  }
  bool removed = false;
  for (Node* guard : guards) {
    std::vector<Value*> reads;
    collect_reads(guard, reads);
    bool checks_dead = std::any_of(reads.begin(), reads.end(), [&](Value* v) {
      return v->node()->owningBlock() == g->block() && v->node()->kind() != c10::prim::Constant && !live.count(v);
    });
    if (checks_dead) {
      guard->destroy();
      removed = true;
    }
  }
  if (removed) torch::jit::EliminateDeadCode(g);
}

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

std::string display_name(const ScopePath& scope) {
  std::string name = join(scope, scope.size());
  if (name.rfind("SELF.", 0) == 0) name = name.substr(5);  // scripted graphs name the top module SELF
  return name;
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

// Refuses models that are not one token sequence running through every block: between two consecutive
// blocks the residual stream may only be cast, copied or reshaped; a convolution, pooling, concatenation or
// projection there (Swin's patch merging, PiT's pooling, PVT's stages) changes the tokens, so per-token
// methods would compare different things. Shifted windows (aten::roll inside a block) are refused too.
void check_plain_token_sequence(Graph& g, const std::vector<ScopePath>& scopes,
                                std::unordered_map<Node*, ScopePath>& node_paths,
                                const std::vector<Value*>& block_outputs, const std::vector<Node*>& sites) {
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
    auto feeds_next = ancestors(sites[b + 1]);
    std::unordered_set<Value*> downstream{block_outputs[b]};
    for (Node* n = block_outputs[b]->node()->next(); n != sites[b + 1] && n != g.return_node(); n = n->next()) {
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

// Move constants and module/parameter reads (GetAttr chains on self) to the top of the graph. Inlining
// leaves them next to their first use, e.g. the final norm's weight after the last block; hoisted, a
// copy of the final norm or head can be placed right after an early block, whose tokens can then be
// freed as the pass goes on. Safe while nothing in the graph assigns attributes.
void hoist_parameter_reads(Graph& g) {
  for (Node* n : g.nodes())
    if (n->kind() == c10::prim::SetAttr) return;
  Node* anchor = g.param_node();
  std::unordered_set<Value*> hoisted(g.inputs().begin(), g.inputs().end());
  std::vector<Node*> nodes(g.nodes().begin(), g.nodes().end());
  for (Node* n : nodes) {
    bool movable = n->kind() == c10::prim::Constant ||
                   (n->kind() == c10::prim::GetAttr && hoisted.count(n->input(0)));
    if (!movable) continue;
    n->moveAfter(anchor);
    anchor = n;
    for (Value* o : n->outputs()) hoisted.insert(o);
  }
}

// Reads of plain (str, int, float, bool) module attributes become constants, so constant propagation folds
// the branches they select: e.g. the ViT-FIQA class's `if self.mode == "token"` in a scripted forward,
// whose output tuple would otherwise come out of an If. Safe while the graph assigns no attributes: the
// module is private to the CaptureModel and its attributes never change after loading.
void fold_constant_attributes(Graph& g, const torch::jit::Module& module) {
  std::function<bool(torch::jit::Block*)> assigns = [&](torch::jit::Block* b) {
    for (Node* n : b->nodes()) {
      if (n->kind() == c10::prim::SetAttr) return true;
      for (auto* inner : n->blocks())
        if (assigns(inner)) return true;
    }
    return false;
  };
  if (assigns(g.block())) return;
  std::unordered_map<Value*, c10::IValue> objects{{g.inputs().at(0), module._ivalue()}};
  std::function<void(torch::jit::Block*)> fold = [&](torch::jit::Block* b) {
    for (Node* n : b->nodes()) {
      for (auto* inner : n->blocks()) fold(inner);
      if (n->kind() != c10::prim::GetAttr) continue;
      auto owner = objects.find(n->input(0));
      if (owner == objects.end() || !owner->second.isObject()) continue;
      const auto& obj = owner->second.toObjectRef();
      const std::string& name = n->s(attr::name);
      if (!obj.type()->hasAttribute(name)) continue;
      c10::IValue value = obj.getAttr(name);
      if (value.isObject()) {
        objects[n->output()] = value;
      } else if (value.isString() || value.isInt() || value.isDouble() || value.isBool()) {
        torch::jit::WithInsertPoint guard(n);
        n->output()->replaceAllUsesWith(g.insertConstant(value));
      }
    }
  };
  fold(g.block());
}

}  // namespace

void check_attn_logits(const std::string& attn_logits) {
  if (attn_logits != "qk" && attn_logits != "full")
    throw std::invalid_argument("attn_logits must be 'qk' (q.k*scale, the papers' definition) or 'full' (the whole "
                                "softmax input, bias and mask included), got '" + attn_logits + "'");
}

std::string CaptureRequest::key() const {
  std::ostringstream os;
  auto put = [&](const char* name, const std::vector<int64_t>& v) {
    os << name << ':';
    for (auto x : v) os << x << ',';
    os << ';';
  };
  put("L", logits_blocks);
  put("P", probs_blocks);
  put("T", token_blocks);
  put("E", exit_blocks);
  os << "a" << attn_logits << "n" << tokens_final_norm << "t" << tokens_output << "d" << token_distances << "o" << model_output << "x"
     << exit_output;
  return os.str();
}

torch::jit::Module load_script_module(const std::string& path_or_bytes, bool from_bytes, const at::Device& device) {
  try {
    if (from_bytes) {
      std::istringstream in(path_or_bytes);
      return torch::jit::load(in, device);
    }
    return torch::jit::load(path_or_bytes, device);
  } catch (const std::exception& e) {
    // c10::Error from the archive reader, but also torch::jit::ErrorReport (the TorchScript compiler on damaged
    // code records) and std::bad_alloc (a size field gone wrong): all mean a corrupt file (benchmarks/fuzz.py).
    auto* c10_error = dynamic_cast<const c10::Error*>(&e);
    throw std::invalid_argument(std::string("could not load a TorchScript model") +
                                (from_bytes ? " from bytes" : " from '" + path_or_bytes + "'") +
                                " (corrupt file, or not saved with torch.jit.save?): " +
                                first_line(c10_error ? c10_error->what_without_backtrace() : e.what()));
  }
}

CaptureModel::CaptureModel(const std::string& path_or_bytes, bool from_bytes, const std::string& device,
                           const std::string& dtype, const std::string& final_norm)
    : device_(parse_device(device)), dtype_(parse_dtype(dtype)) {
  module_ = load_script_module(path_or_bytes, from_bytes, device_);
  module_.eval();
  if (dtype_ != at::kFloat) {
    // Only floating state is cast: Module::to(dtype) would also turn integer buffers (position ids, index
    // tables of Hugging Face models) into floats, which then fail as indices.
    at::NoGradGuard no_grad;
    for (at::Tensor t : module_.parameters())
      if (t.is_floating_point() && t.scalar_type() != dtype_) t.set_data(t.to(dtype_));
    for (at::Tensor t : module_.buffers())
      if (t.is_floating_point() && t.scalar_type() != dtype_) t.set_data(t.to(dtype_));
  }
  if (!module_.find_method("forward"))
    throw std::invalid_argument("the TorchScript module has no forward method");
  analyse(final_norm);
}

void CaptureModel::analyse(const std::string& final_norm) {
  auto method = module_.get_method("forward");
  auto& fn = method.function();
  const auto& schema = fn.getSchema();
  auto g = torch::jit::toGraphFunction(fn).graph()->copy();
  if (g->inputs().size() < 2)
    throw std::invalid_argument("the model's forward takes no input; vitfiqa calls forward(images)");

  // A function built from a graph loses its default arguments, so optional extra inputs (timm's
  // attn_mask=None, ...) are replaced by their defaults; constant propagation then removes the branches.
  for (size_t i = g->inputs().size() - 1; i >= 2; --i) {
    const auto& arg = schema.arguments().at(i);
    if (!arg.default_value())
      throw std::invalid_argument("the model's forward has a required extra argument '" + arg.name() +
                                  "'; vitfiqa calls forward(images) and supports only optional extras");
    torch::jit::WithInsertPoint guard(g->block()->nodes().front());
    Value* c = g->insertConstant(*arg.default_value());
    g->inputs()[i]->replaceAllUsesWith(c);
    g->eraseInput(i);
  }
  torch::jit::Inline(*g);
  // Blocks that return (tokens, attention) tuples (the ATTN/ViTNT repositories' ViT): after inlining, the
  // tuple is built inside the block and unpacked outside; lowering the pair leaves the tokens as a plain
  // tensor leaving the block.
  torch::jit::LowerSimpleTuples(g);
  // Scoring always runs in eval mode. Folding `training` to False lets constant propagation drop the
  // training-only branches (BatchNorm's num_batches_tracked update, dropout); their side effects would
  // otherwise keep the whole original head alive and defeat early exits.
  std::function<void(torch::jit::Block*)> fold_training = [&](torch::jit::Block* b) {
    for (Node* n : b->nodes()) {
      if (n->kind() == c10::prim::GetAttr && n->s(attr::name) == "training") {
        torch::jit::WithInsertPoint guard(n);
        n->output()->replaceAllUsesWith(g->insertConstant(false));
      }
      for (auto* inner : n->blocks()) fold_training(inner);
    }
  };
  fold_training(g->block());
  fold_constant_attributes(*g, module_);
  torch::jit::ConstantPropagation(g);
  torch::jit::EliminateDeadCode(g);
  hoist_parameter_reads(*g);

  // Attention sites in the top-level block (nested ones sit in control flow we cannot tap).
  std::vector<Node*> candidates;
  int nested = 0;
  std::function<void(torch::jit::Block*, bool)> walk = [&](torch::jit::Block* b, bool top) {
    for (Node* n : b->nodes()) {
      bool is_site = n->kind() == c10::aten::softmax || n->kind() == c10::aten::scaled_dot_product_attention;
      if (is_site) {
        if (top) candidates.push_back(n);
        else nested++;
      }
      for (auto* inner : n->blocks()) walk(inner, false);
    }
  };
  walk(g->block(), true);
  if (candidates.empty()) {
    std::map<std::string, int> kinds;
    collect_kinds(g->block(), kinds);
    bool conv = kinds.count("aten::conv2d") || kinds.count("aten::_convolution");
    std::string msg = "no attention found in the model: vitfiqa needs a Vision Transformer whose attention "
                      "is aten::softmax (explicit) or aten::scaled_dot_product_attention (fused)";
    if (nested) msg += "; " + std::to_string(nested) + " attention op(s) sit inside control flow (if/loop), which cannot be captured";
    else if (conv) msg += "; the graph has convolutions but no attention (a CNN?)";
    throw std::invalid_argument(msg);
  }

  // Group sites by module pattern (numeric instance names wildcarded) and keep the most common pattern:
  // the transformer blocks' attention; a stray softmax in a head is ignored.
  std::map<std::string, std::vector<Node*>> by_pattern;
  std::vector<std::string> pattern_order;
  std::unordered_map<Node*, ScopePath> paths;
  for (Node* n : candidates) {
    auto p = scope_path(n);
    paths[n] = p;
    std::string pat;
    for (auto& s : p) pat += (is_number(s) ? std::string("#") : s) + "/";
    if (!by_pattern.count(pat)) pattern_order.push_back(pat);
    by_pattern[pat].push_back(n);
  }
  std::string best = pattern_order.front();
  for (auto& pat : pattern_order)
    if (by_pattern[pat].size() > by_pattern[best].size()) best = pat;
  auto& chosen = by_pattern[best];
  // A stray attention (an attention-pooling head) occurs once; a second repeated pattern is a second run of
  // attention blocks: stages named apart (stage1.#, stage2.#), which would be scored as if they were the model.
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
  if (chosen.size() < candidates.size())
    info_.notes.push_back(std::to_string(candidates.size() - chosen.size()) +
                          " attention-like op(s) outside the transformer blocks were ignored");

  const ScopePath& first = paths[chosen.front()];
  info_.has_hierarchy = !first.empty();
  std::vector<ScopePath> block_scopes;
  if (info_.has_hierarchy) {
    // Block scope = the path up to its last numeric component (blocks.3 in blocks.3.attn); without
    // numbers, the part below the longest common prefix of all sites.
    size_t depth = 0;
    for (size_t i = 0; i < first.size(); ++i)
      if (is_number(first[i])) depth = i + 1;
    if (depth == 0) {
      size_t lcp = first.size();
      for (Node* n : chosen) {
        const auto& p = paths[n];
        size_t k = 0;
        while (k < lcp && k < p.size() && p[k] == first[k]) ++k;
        lcp = k;
      }
      depth = chosen.size() == 1 ? std::max<size_t>(first.size() - 1, 1) : std::min(lcp + 1, first.size());
    }
    for (Node* n : chosen) {
      ScopePath scope(paths[n].begin(), paths[n].begin() + std::min(depth, paths[n].size()));
      if (!block_scopes.empty() && block_scopes.back() == scope)
        throw std::invalid_argument("not a plain ViT: block '" + display_name(scope) +
                                    "' has more than one attention op (stages of attention blocks, as in PVT, or "
                                    "several attentions per block); vitfiqa expects one attention per block");
      block_scopes.push_back(scope);
      info_.block_names.push_back(display_name(scope));
    }
  } else {
    info_.notes.push_back("the graph carries no module hierarchy (frozen model?): blocks are known only by the "
                          "order of their attention ops, and block outputs cannot be located");
    for (size_t i = 0; i < chosen.size(); ++i) info_.block_names.push_back("attention_" + std::to_string(i));
  }

  for (size_t b = 0; b < chosen.size(); ++b) sites_.push_back({chosen[b], static_cast<int64_t>(b)});
  const auto data_dependent = data_dependent_values(*g, g->inputs().at(1));
  // Biased attention: the softmax input (or SDPA's attn_mask) adds terms that do not come from q.k.
  std::vector<std::string> biased;
  for (auto& s : sites_) {
    if (s.node->kind() == c10::aten::softmax) {
      s.unbiased_logits = unbiased_logits(s.node->input(0), data_dependent);
      s.biased = s.unbiased_logits != nullptr;
    } else {
      s.biased = !is_none(s.node->namedInput("attn_mask"));
    }
    if (s.biased) {
      info_.biased_blocks.push_back(s.block);
      biased.push_back(info_.block_names.at(s.block));
    }
  }
  if (!biased.empty())
    info_.notes.push_back("ATTN-FIQA: the attention of " + std::to_string(biased.size()) + " block(s) (" + biased.front() +
                          (biased.size() > 1 ? ", ..." : "") +
                          ") adds a bias or mask to q.k*scale before the softmax (relative-position bias?); "
                          "attn_logits='qk' (default, the papers' q.k/sqrt(d)) leaves it out, 'full' includes it, "
                          "and the two give different scores");
  info_.num_blocks = static_cast<int64_t>(chosen.size());
  bool any_sdpa = false, any_softmax = false;
  for (auto& s : sites_) {
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
  info_.attention_kind = any_sdpa ? AttentionKind::ScaledDotProduct : AttentionKind::Softmax;

  // Block outputs, found by data flow. A candidate is a tensor computed inside the block scope from the
  // images' data and used outside it; constants, parameters and what is built from them alone (the tracer's
  // 0-dim `scale` constant created in blocks.0.attn and reused by every block, a relative-position table)
  // are not. Of several candidates (a block returning its attention weights beside the hidden state), the
  // output is the residual stream: the one the next block's attention reads; for the last block, the one
  // made like the previous blocks' outputs (same op at the same place in the block).
  if (info_.has_hierarchy) {
    std::unordered_map<Node*, ScopePath> node_paths;
    for (Node* n : g->nodes()) node_paths[n] = scope_path(n);
    auto relative = [&](Value* v, const ScopePath& scope) {
      const auto& p = node_paths[v->node()];
      std::string r = v->node()->kind().toQualString();
      for (size_t i = scope.size(); i < p.size(); ++i) r += "/" + (is_number(p[i]) ? std::string("#") : p[i]);
      return r;
    };
    for (size_t b = 0; b < block_scopes.size(); ++b) {
      const auto& scope = block_scopes[b];
      std::vector<Value*> escaping;
      for (Node* n : g->nodes()) {
        if (!starts_with(node_paths[n], scope)) continue;
        if (n->kind() == c10::prim::Constant || n->kind() == c10::prim::GetAttr) continue;
        for (Value* v : n->outputs()) {
          if (!v->type()->isSubtypeOf(*c10::TensorType::get()) || !data_dependent.count(v)) continue;
          bool escapes = false;
          for (auto& use : v->uses()) {
            Node* u = top_level(use.user, *g);
            if (u == g->return_node() || !starts_with(node_paths[u], scope)) escapes = true;
          }
          if (escapes) escaping.push_back(v);
        }
      }
      if (escaping.size() > 1 && b + 1 < block_scopes.size()) {
        auto feeds_next = ancestors(sites_[b + 1].node);
        std::vector<Value*> kept;
        for (Value* v : escaping)
          if (feeds_next.count(v)) kept.push_back(v);
        escaping = kept;
      } else if (escaping.size() > 1 && b > 0) {
        std::string like = relative(block_outputs_.back(), block_scopes[b - 1]);
        std::vector<Value*> kept;
        for (Value* v : escaping)
          if (relative(v, scope) == like) kept.push_back(v);
        escaping = kept;
      }
      if (escaping.size() != 1)
        throw std::invalid_argument("could not locate the output of block '" + display_name(scope) + "' (" +
                                    std::to_string(escaping.size()) + " tensors computed from the images leave it" +
                                    (escaping.size() > 1 ? " and feed the next block" : "") + ")");
      block_outputs_.push_back(escaping.front());
    }
    std::vector<Node*> site_nodes;
    for (auto& site : sites_) site_nodes.push_back(site.node);
    check_plain_token_sequence(*g, block_scopes, node_paths, block_outputs_, site_nodes);
    if (final_norm.empty()) find_final_norm(*g);
    else make_named_final_norm(*g, final_norm);
    if (!final_norm_)  // the model loads and ATTN-FIQA works; only a request for normalised tokens raises
      info_.notes.push_back("ViTNT-FIQA: no LayerNorm is applied to the last block's output in forward (a norm "
                            "after pooling, fc_norm?); name the one to use with final_norm='module.path'");
  } else if (!final_norm.empty()) {
    throw std::invalid_argument("final_norm='" + final_norm + "' cannot be used: the graph carries no module "
                                "hierarchy (frozen model?), so block outputs cannot be located");
  }

  // The patch embedding: the first convolution before the first attention gives the patch grid.
  for (Node* n : g->nodes()) {
    if (n == sites_.front().node) break;
    if (n->kind() == c10::aten::conv2d || n->kind() == c10::aten::_convolution) {
      patch_conv_ = n;
      break;
    }
  }
  info_.has_patch_conv = patch_conv_ != nullptr;
  analyse_patch_embedding(*g);

  auto out_type = g->outputs().at(0)->type();
  if (auto tt = out_type->cast<c10::TupleType>()) info_.num_outputs = static_cast<int64_t>(tt->elements().size());
  base_ = g;
}

// The value of a constant or of a GetAttr chain on self (a parameter, buffer or submodule), if it is one.
std::optional<at::IValue> CaptureModel::resolve(Value* v, Graph& g) const {
  if (v == g.inputs().at(0)) return module_._ivalue();
  if (auto c = torch::jit::toIValue(v)) return c;
  Node* n = v->node();
  if (n->kind() != c10::prim::GetAttr) return std::nullopt;
  auto owner = resolve(n->input(0), g);
  if (!owner || !owner->isObject()) return std::nullopt;
  auto obj = owner->toObject();
  const auto& name = n->s(attr::name);
  if (!obj->type()->hasAttribute(name)) return std::nullopt;
  return obj->getAttr(name);
}

// Patch size and position-embedding length, from which the input size can be inferred when a model
// carries no input contract: a conv with stride == kernel (the patch embedding) and the largest
// [1, N, C] tensor attribute with the conv's C channels.
void CaptureModel::analyse_patch_embedding(Graph& g) {
  if (!patch_conv_) return;
  auto weight = resolve(patch_conv_->input(1), g);
  auto stride = torch::jit::toIValue(patch_conv_->input(3));
  if (!weight || !weight->isTensor() || weight->toTensor().dim() != 4 || !stride || !stride->isIntList()) return;
  const auto w = weight->toTensor();
  auto st = stride->toIntVector();
  if (st.size() == 1) st.push_back(st[0]);
  if (st.size() != 2 || st[0] != w.size(2) || st[1] != w.size(3)) return;
  info_.patch_size = {w.size(2), w.size(3)};
  const int64_t channels = w.size(0);
  for (Node* n : g.nodes()) {
    if (n->kind() != c10::prim::GetAttr && n->kind() != c10::prim::Constant) continue;
    if (n->outputs().size() != 1 || !n->output()->type()->isSubtypeOf(*c10::TensorType::get())) continue;
    auto t = resolve(n->output(), g);
    if (!t || !t->isTensor()) continue;
    const auto& p = t->toTensor();
    if (p.dim() == 3 && p.size(0) == 1 && p.size(2) == channels)
      info_.position_tokens = std::max(info_.position_tokens, p.size(1));
  }
}

namespace {

// Ops that pass a tensor's values through unchanged (dtype casts, layout, views, eval-mode dropout): the
// official face ViTs write `self.norm(x.float())`, and other models reshape or `contiguous()` first.
// `views` marks the ones that may change the shape (their shape arguments are kept as the model wrote them).
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

}  // namespace

void CaptureModel::find_final_norm(Graph& g) {
  // Depth-first along top-level, value-preserving uses of the last block's output; the first layer_norm
  // (in graph order) reached that way is the final norm.
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
  walk(block_outputs_.back());
  if (!found) return;
  std::string name = display_name(scope_path(found));
  set_final_norm(chain, name.empty() ? "layer_norm after the last block" : name);
}

void CaptureModel::set_final_norm(const std::vector<Node*>& chain, const std::string& source) {
  final_norm_chain_ = chain;
  final_norm_ = chain.back();
  info_.has_final_norm = true;
  info_.final_norm = source;
  info_.final_norm_ops.clear();
  // layer_norm(x, [C], weight, bias, eps) on the raw block output, or after casts to float32 / copies
  // only: fusable into the distance kernel (which reads float32 rows and applies the norm itself).
  auto shape = torch::jit::toIValue(final_norm_->input(1));
  auto eps = torch::jit::toIValue(final_norm_->input(4));
  final_norm_fusable_ = shape && shape->isIntList() && shape->toIntList().size() == 1 && eps && eps->isDouble();
  for (size_t i = 0; i + 1 < chain.size(); ++i) {
    info_.final_norm_ops.push_back(chain[i]->kind().toQualString());
    bool view = false;
    is_value_preserving(chain[i], &view);
    if (view || !is_float_cast_or_copy(chain[i])) final_norm_fusable_ = false;
  }
}

void CaptureModel::make_named_final_norm(Graph& g, const std::string& path) {
  auto fail = [&](const std::string& why) {
    return std::invalid_argument("final_norm='" + path + "': " + why);
  };
  std::vector<std::string> parts;
  {
    std::istringstream in(path);
    std::string part;
    while (std::getline(in, part, '.')) parts.push_back(part);
  }
  if (parts.empty() || path.back() == '.' ||
      std::any_of(parts.begin(), parts.end(), [](const std::string& p) { return p.empty(); }))
    throw fail("expected a dotted module path such as 'norm' or 'net.norm'");
  // Read the module's parameters through GetAttr nodes at the top of the graph, like the hoisted reads.
  torch::jit::Module mod = module_;
  Value* obj = g.inputs().at(0);
  std::string walked;
  {
    torch::jit::WithInsertPoint top(g.param_node()->next());
    for (const auto& part : parts) {
      walked += (walked.empty() ? "" : ".") + part;
      if (!mod.hasattr(part) || !mod.attr(part).isModule())
        throw fail("the model has no submodule '" + walked + "'");
      mod = mod.attr(part).toModule();
      obj = g.insertNode(g.createGetAttr(obj, part))->output();
    }
  }
  const std::string type_name = mod.type()->name() ? mod.type()->name()->name() : "";
  if (type_name.find("LayerNorm") == std::string::npos)
    throw fail("that module is a " + (type_name.empty() ? std::string("module") : type_name) + ", not a LayerNorm");
  auto param = [&](const char* name) -> Value* {
    torch::jit::WithInsertPoint top(obj->node()->next());
    if (mod.hasattr(name) && mod.attr(name).isTensor()) return g.insertNode(g.createGetAttr(obj, name))->output();
    return g.insertConstant(c10::IValue());
  };
  Value* weight = param("weight");
  Value* bias = param("bias");
  std::vector<int64_t> shape;
  if (mod.hasattr("normalized_shape") && mod.attr("normalized_shape").isTuple()) {
    for (const auto& e : mod.attr("normalized_shape").toTupleRef().elements()) shape.push_back(e.toInt());
  } else if (mod.hasattr("weight") && mod.attr("weight").isTensor()) {
    auto sizes = mod.attr("weight").toTensor().sizes();
    shape.assign(sizes.begin(), sizes.end());
  } else {
    throw fail("the module keeps neither normalized_shape nor a weight, so its normalised shape is unknown");
  }
  double eps = 1e-5;
  if (mod.hasattr("eps") && mod.attr("eps").isDouble()) {
    eps = mod.attr("eps").toDouble();
  } else {
    info_.notes.push_back("final_norm='" + path + "' keeps no eps (traced module): nn.LayerNorm's default 1e-5 is used");
  }
  Value* last = block_outputs_.back();
  torch::jit::WithInsertPoint after(last->node()->next());
  Value* out = g.insert(c10::aten::layer_norm, {last, shape, weight, bias, eps, true});
  set_final_norm({out->node()}, path + " (named by final_norm)");
}

CaptureModel::Built& CaptureModel::build(const CaptureRequest& req) {
  std::string key = req.key();
  auto it = cache_.find(key);
  if (it != cache_.end()) return *it->second;

  check_attn_logits(req.attn_logits);
  auto check_block = [&](int64_t b, const char* what) {
    if (b < 0 || b >= info_.num_blocks)
      throw std::out_of_range(std::string(what) + " block index " + std::to_string(b) + " is out of range (model has " +
                              std::to_string(info_.num_blocks) + " blocks)");
  };
  bool needs_outputs = !req.token_blocks.empty() || !req.exit_blocks.empty();
  if (needs_outputs && block_outputs_.empty())
    throw std::invalid_argument("block outputs cannot be located in this model (the graph carries no module "
                                "hierarchy: frozen?); save it with torch.jit.script or torch.jit.trace without "
                                "torch.jit.freeze");
  if (!req.token_blocks.empty() && req.tokens_final_norm && !final_norm_)
    throw std::invalid_argument(
        "no final LayerNorm after the last block was found in the model's forward, but normalised block tokens "
        "were asked for (ViTNT-FIQA); if forward leaves the norm out, name it: final_norm='norm' (its module path)");

  // Copy the analysed graph keeping a map from its values to the copy's.
  auto g = std::make_shared<Graph>();
  std::unordered_map<Value*, Value*> vmap;
  auto lookup = [&](Value* v) { return vmap.at(v); };
  for (Value* in : base_->inputs()) vmap[in] = g->addInput()->copyMetadata(in);
  for (Node* n : base_->nodes()) {
    Node* c = g->appendNode(g->createClone(n, lookup));
    for (size_t i = 0; i < n->outputs().size(); ++i) vmap[n->outputs()[i]] = c->outputs()[i];
  }

  auto built = std::make_unique<Built>();
  std::vector<Value*> outs;
  auto emit = [&](Value* v, const std::string& tag, int64_t b) {
    outs.push_back(v);
    built->layout.emplace_back(tag, b);
  };
  // Re-applies a chain of base-graph nodes to a new input (the rest of the graph stays shared). The copy
  // goes right after the new input is computed (or after the last value it reads, if later), so the
  // interpreter can free what it no longer needs while the pass goes on.
  // The earliest top-level point at which every value in `values` (of the copy) is defined, at or after `after`.
  auto after_definitions = [&](Node* after, const std::vector<Value*>& values) {
    for (Value* v : values) {
      Node* def = v->node();
      if (def->owningBlock() == g->block() && def->isAfter(after)) after = def;
    }
    return after;
  };
  auto reapply = [&](const std::vector<Node*>& chain, Value* from, Value* to) {
    std::unordered_map<Value*, Value*> local{{from, to}};
    std::unordered_set<Node*> in_chain(chain.begin(), chain.end());
    std::vector<Value*> external;
    for (Node* n : chain) {
      std::vector<Value*> reads;
      collect_reads(n, reads);
      for (Value* v : reads)
        if (v != from && !in_chain.count(v->node()) && vmap.count(v)) external.push_back(vmap.at(v));
    }
    torch::jit::WithInsertPoint guard(after_definitions(to->node(), external)->next());
    Value* last = to;
    for (Node* n : chain) {
      Node* c = g->insertNode(g->createClone(n, [&](Value* v) {
        auto it = local.find(v);
        return it != local.end() ? it->second : vmap.at(v);
      }));
      for (size_t i = 0; i < n->outputs().size(); ++i) local[n->outputs()[i]] = c->outputs()[i];
      last = c->outputs().at(0);
    }
    return std::make_pair(last, local);
  };

  std::vector<int64_t> attention_blocks = req.logits_blocks;
  for (int64_t b : req.probs_blocks)
    if (info_.attention_kind == AttentionKind::ScaledDotProduct) attention_blocks.push_back(b);
  std::sort(attention_blocks.begin(), attention_blocks.end());
  attention_blocks.erase(std::unique(attention_blocks.begin(), attention_blocks.end()), attention_blocks.end());
  for (int64_t b : attention_blocks) {
    check_block(b, "attention");
    Node* site = sites_[b].node;
    if (site->kind() == c10::aten::softmax) {
      bool qk = req.attn_logits == "qk" && sites_[b].unbiased_logits;
      emit(vmap.at(qk ? sites_[b].unbiased_logits : site->input(0)), "logits", b);
    } else {
      emit(vmap.at(site->namedInput("query")), "q", b);
      emit(vmap.at(site->namedInput("key")), "k", b);
      Value* scale = site->namedInput("scale");
      if (!is_none(scale)) emit(vmap.at(scale), "scale", b);
      Value* mask = site->namedInput("attn_mask");
      if (!is_none(mask)) emit(vmap.at(mask), "mask", b);
    }
    // The shape of the token sequence entering the block, to check at run time that the attention spans it
    // (windowed or channel attention would not); free: the block reads that tensor anyway.
    if (b > 0 && !block_outputs_.empty()) {
      Value* stream = vmap.at(block_outputs_[b - 1]);
      torch::jit::WithInsertPoint guard(stream->node()->next());
      emit(g->insert(c10::aten::size, {stream}), "stream_shape", b);
    }
  }
  for (int64_t b : req.probs_blocks) {
    check_block(b, "attention");
    if (sites_[b].node->kind() == c10::aten::softmax) emit(vmap.at(sites_[b].node->output()), "probs", b);
  }
  std::vector<int64_t> token_blocks = req.token_blocks;
  std::sort(token_blocks.begin(), token_blocks.end());
  token_blocks.erase(std::unique(token_blocks.begin(), token_blocks.end()), token_blocks.end());
  // ViTNT's distances read each block's output once, through a kernel that applies the final LayerNorm
  // on the fly (no normalised copy of any block is materialised), when the norm is a plain last-axis one.
  const bool fuse_norm = req.token_distances && req.tokens_final_norm && final_norm_fusable_;
  Value* prev_tokens = nullptr;
  for (int64_t b : token_blocks) {
    check_block(b, "token");
    Value* out = block_outputs_[b];
    auto normed = [&]() -> Value* {
      if (!req.tokens_final_norm) return vmap.at(out);
      Value* last = block_outputs_.back();
      if (out == last) return vmap.at(final_norm_->output());  // computed by the model anyway
      return reapply(final_norm_chain_, last, vmap.at(out)).first;
    };
    Value* tokens = (req.tokens_output || !fuse_norm) ? normed() : nullptr;
    if (req.tokens_output) emit(tokens, "tokens", b);
    Value* cur = fuse_norm ? vmap.at(out) : tokens;
    if (req.token_distances && prev_tokens) {
      std::vector<Value*> inputs{prev_tokens, cur};
      if (fuse_norm)
        for (size_t i : {2, 3, 4}) inputs.push_back(vmap.at(final_norm_->input(i)));
      // Right after the block, unless the norm's parameters are read later (hoisting is off with SetAttr).
      torch::jit::WithInsertPoint guard(after_definitions(cur->node(), inputs)->next());
      Node* d = g->create(c10::Symbol::fromQualString(fuse_norm ? "vitfiqa::patch_step_distance_ln"
                                                                : "vitfiqa::patch_step_distance"),
                          inputs, 1);
      g->insertNode(d);
      d->output()->setType(c10::TensorType::get());
      emit(d->output(), "dist", b);
    }
    prev_tokens = cur;
  }
  if (!req.exit_blocks.empty()) {
    // The head: every node that depends on the last block's output and feeds the chosen model output.
    Value* ret = base_->outputs().at(0);
    Value* target = ret;
    if (info_.num_outputs > 1 || ret->type()->cast<c10::TupleType>()) {
      int64_t idx = req.exit_output < 0 ? info_.num_outputs + req.exit_output : req.exit_output;
      if (idx < 0 || idx >= info_.num_outputs)
        throw std::out_of_range("exit output index " + std::to_string(req.exit_output) + " is out of range (model returns " +
                                std::to_string(info_.num_outputs) + " values)");
      if (ret->node()->kind() != c10::prim::TupleConstruct)
        throw std::invalid_argument("the model's output tuple is not built in its forward graph; cannot select an exit output");
      target = ret->node()->input(idx);
    } else if (req.exit_output != -1 && req.exit_output != 0) {
      throw std::out_of_range("the model returns a single tensor; exit output must be 0 or -1");
    }
    Value* last = block_outputs_.back();
    std::unordered_set<Value*> dependent{last};
    std::vector<Node*> forward_cone;
    for (Node* n : base_->nodes())
      if (reads_any(n, dependent)) {
        forward_cone.push_back(n);
        for (Value* o : n->outputs()) dependent.insert(o);
      }
    std::unordered_set<Value*> needed{target};
    std::vector<Node*> head;
    for (auto rit = forward_cone.rbegin(); rit != forward_cone.rend(); ++rit) {
      Node* n = *rit;
      bool feeds = std::any_of(n->outputs().begin(), n->outputs().end(), [&](Value* o) { return needed.count(o) > 0; });
      if (!feeds) continue;
      head.insert(head.begin(), n);
      for (Value* in : n->inputs()) needed.insert(in);
      // values read inside nested blocks
      std::function<void(torch::jit::Block*)> mark = [&](torch::jit::Block* blk) {
        for (Node* inner : blk->nodes()) {
          for (Value* in : inner->inputs()) needed.insert(in);
          for (auto* bb : inner->blocks()) mark(bb);
        }
        for (Value* o : blk->outputs()) needed.insert(o);
      };
      for (auto* blk : n->blocks()) mark(blk);
    }
    if (!dependent.count(target))
      throw std::invalid_argument("the chosen model output does not depend on the last block's output");
    for (int64_t b : req.exit_blocks) {
      check_block(b, "exit");
      if (b == info_.num_blocks - 1) {
        emit(vmap.at(target), "exit", b);
      } else {
        auto res = reapply(head, last, vmap.at(block_outputs_[b]));
        emit(res.second.at(target), "exit", b);
      }
    }
  }
  if (req.model_output) emit(vmap.at(base_->outputs().at(0)), "output", -1);
  if (patch_conv_) emit(vmap.at(patch_conv_->output()), "grid", -1);

  while (!g->outputs().empty()) g->eraseOutput(0);
  Node* tuple = g->insertNode(g->createTuple(outs));
  g->registerOutput(tuple->output());
  eliminate_dead_code_and_guards(g);
  g->lint();

  built->graph = g;
  built->fn = std::make_shared<torch::jit::GraphFunction>(
      c10::QualifiedName("__vitfiqa__.capture_" + std::to_string(cache_.size())), g->copy(), nullptr);
  return *(cache_[key] = std::move(built));
}

void CaptureModel::check_images(const at::Tensor& images) const {
  if (!images.defined()) throw std::invalid_argument("images tensor is undefined");
  if (images.dim() != 4)
    throw std::invalid_argument("images must be a 4-D [B,3,H,W] tensor, got " + std::to_string(images.dim()) + "-D");
  if (images.size(0) == 0) throw std::invalid_argument("images batch is empty");
  if (images.size(1) != 3)
    throw std::invalid_argument("images must have 3 channels (RGB) in dim 1, got " + std::to_string(images.size(1)));
  if (images.scalar_type() != dtype_)
    throw std::invalid_argument(std::string("images dtype ") + c10::toString(images.scalar_type()) +
                                " does not match the model dtype " + c10::toString(dtype_));
  if (images.device() != device_)
    throw std::invalid_argument("images are on " + images.device().str() + " but the model is on " + device_.str());
}

CaptureResult CaptureModel::run(const at::Tensor& images, const CaptureRequest& req) {
  check_images(images);
  Built* built;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    built = &build(req);
  }
  torch::jit::Stack stack{module_._ivalue(), images};
  {
    at::NoGradGuard no_grad;
    try {
      built->fn->run(stack);
    } catch (const std::exception& e) {
      throw std::invalid_argument("the model's forward failed on input of shape " + c10::str(images.sizes()) + ": " +
                                  last_line(e.what()));
    }
  }
  auto elems = stack.at(0).toTupleRef().elements();
  CaptureResult res;
  std::map<int64_t, std::vector<int64_t>> stream_shapes;
  for (size_t i = 0; i < elems.size(); ++i) {
    const auto& [tag, b] = built->layout[i];
    const auto& v = elems[i];
    if (tag == "logits") {
      res.attention[b].kind = AttentionKind::Softmax;
      res.attention[b].logits = v.toTensor();
    } else if (tag == "q") {
      res.attention[b].kind = AttentionKind::ScaledDotProduct;
      res.attention[b].q = v.toTensor();
    } else if (tag == "k") {
      res.attention[b].k = v.toTensor();
    } else if (tag == "scale") {
      res.attention[b].scale = v.isNone() ? 0.0 : v.toDouble();
    } else if (tag == "stream_shape") {
      stream_shapes[b] = v.toIntVector();
    } else if (tag == "mask") {
      if (!v.isNone()) res.attention[b].mask = v.toTensor();
    } else if (tag == "probs") {
      res.probs[b] = v.toTensor();
    } else if (tag == "tokens") {
      res.tokens[b] = v.toTensor();
    } else if (tag == "dist") {
      res.token_distances.push_back(v.toTensor());
    } else if (tag == "exit") {
      if (!v.isTensor()) throw std::invalid_argument("the chosen exit output is not a tensor");
      res.exits[b] = v.toTensor();
    } else if (tag == "output") {
      res.model_output = v;
    } else if (tag == "grid") {
      auto t = v.toTensor();
      if (t.dim() == 4) res.patch_grid = {t.size(2), t.size(3)};
    }
  }
  for (auto& [b, a] : res.attention) {
    // A plain ViT attends over each image's whole token sequence: one attention batch row per image and as
    // many keys as the tokens entering the block. Windowed attention (ViTDet, SAM) batches windows; channel
    // attention (XCiT) attends over channels. Their logits are not ATTN-FIQA's, so they are refused.
    const at::Tensor& keys = a.kind == AttentionKind::Softmax ? a.logits : a.k;
    const std::string& name = info_.block_names.at(b);
    if (keys.dim() == 4 && keys.size(0) != images.size(0))
      throw std::invalid_argument("not a plain ViT: the attention of block '" + name + "' runs on " +
                                  std::to_string(keys.size(0)) + " sequences for " + std::to_string(images.size(0)) +
                                  " images (windowed attention?); vitfiqa scores ViTs whose attention spans each "
                                  "image's whole token sequence");
    if (keys.dim() == 4 && stream_shapes.count(b)) {
      const auto& shape = stream_shapes.at(b);
      int64_t n_keys = a.kind == AttentionKind::Softmax ? keys.size(3) : keys.size(2);
      const int64_t B = images.size(0);  // batch-first [B,N,C], or sequence-first [N,B,C] (nn.MultiheadAttention)
      bool spans = shape.size() == 3 && ((shape[0] == B && shape[1] == n_keys) || (shape[0] == n_keys && shape[1] == B));
      if (!spans)
        throw std::invalid_argument("not a plain ViT: the attention of block '" + name + "' has " +
                                    std::to_string(n_keys) + " keys but the tokens entering it have shape " +
                                    c10::str(c10::IntArrayRef(shape)) + " (channel attention or token pooling?); vitfiqa scores ViTs "
                                    "whose attention runs over the [B,N,C] token sequence");
    }
    if (a.kind == AttentionKind::Softmax) {
      if (a.logits.dim() != 4 || a.logits.size(-1) != a.logits.size(-2))
        throw std::invalid_argument("not a plain ViT: the attention logits of block '" + name + "' have shape " +
                                    c10::str(a.logits.sizes()) + ", not [B,H,N,N] (heads folded into the batch, "
                                    "or windowed attention?)");
      continue;
    }
    if (a.q.dim() != 4 || a.k.dim() != 4)
      throw std::invalid_argument("fused attention q/k of block " + std::to_string(b) + " are not [B,H,N,D]");
    if (a.scale == 0.0) a.scale = 1.0 / std::sqrt(static_cast<double>(a.q.size(-1)));
    a.mask_in_logits = req.attn_logits == "full";
    if (a.k.size(1) != a.q.size(1)) a.k = a.k.repeat_interleave(a.q.size(1) / a.k.size(1), 1);  // GQA
    if (a.mask && a.mask->scalar_type() == at::kBool)
      throw std::invalid_argument("boolean attention masks are not supported (logits would be -inf)");
  }
  for (auto& [b, t] : res.tokens)
    if (t.dim() != 3)
      throw std::invalid_argument("block " + std::to_string(b) + " output has shape " + c10::str(t.sizes()) +
                                  ", expected [B,N,C]");
  return res;
}

at::IValue CaptureModel::forward(const at::Tensor& images) {
  check_images(images);
  at::NoGradGuard no_grad;
  return module_.forward({images});
}

at::IValue CaptureModel::attribute(const std::string& name) const {
  if (!module_.hasattr(name)) throw std::invalid_argument("the model has no attribute '" + name + "'");
  return module_.attr(name);
}

std::string CaptureModel::graph_for(const CaptureRequest& request) {
  std::lock_guard<std::mutex> lock(mutex_);
  return build(request).graph->toString();
}

ScriptModel::ScriptModel(const std::string& path_or_bytes, bool from_bytes, const std::string& device,
                         const std::string& dtype)
    : device_(parse_device(device)), dtype_(parse_dtype(dtype)) {
  module_ = load_script_module(path_or_bytes, from_bytes, device_);
  module_.eval();
  if (dtype_ != at::kFloat) module_.to(dtype_);
  if (!module_.find_method("forward")) throw std::invalid_argument("the TorchScript module has no forward method");
}

at::IValue ScriptModel::forward(const at::Tensor& images) {
  if (!images.defined() || images.dim() != 4 || images.size(0) == 0)
    throw std::invalid_argument("images must be a non-empty 4-D [B,C,H,W] tensor");
  if (images.scalar_type() != dtype_)
    throw std::invalid_argument(std::string("images dtype ") + c10::toString(images.scalar_type()) +
                                " does not match the model dtype " + c10::toString(dtype_));
  if (images.device() != device_)
    throw std::invalid_argument("images are on " + images.device().str() + " but the model is on " + device_.str());
  at::NoGradGuard no_grad;
  try {
    return module_.forward({images});
  } catch (const std::exception& e) {
    throw std::invalid_argument("the model's forward failed on input of shape " + c10::str(images.sizes()) + ": " +
                                last_line(e.what()));
  }
}

}  // namespace vitfiqa
