// Graph preparation: the only place the forward graph is rewritten before the analysis reads it (a copy, inlined,
// default arguments substituted, eval-mode constants folded, parameter reads hoisted), and the small graph
// queries the analysis and the rewrite share.
#include "graph_prepare.h"

#include <torch/csrc/jit/api/function_impl.h>
#include <torch/csrc/jit/ir/constants.h>
#include <torch/csrc/jit/passes/constant_propagation.h>
#include <torch/csrc/jit/passes/dead_code_elimination.h>
#include <torch/csrc/jit/passes/inliner.h>
#include <torch/csrc/jit/passes/lower_tuples.h>

#include <functional>
#include <stdexcept>
#include <unordered_map>
#include <vector>

namespace vitfiqa {

using torch::jit::Graph;
using torch::jit::Node;
using torch::jit::Value;
namespace attr = c10::attr;

bool is_none(Value* v) {
  return v->type()->kind() == c10::TypeKind::NoneType ||
         (v->node()->kind() == c10::prim::Constant && v->node()->output()->type()->kind() == c10::TypeKind::NoneType);
}

void collect_reads(Node* n, std::vector<Value*>& out) {
  for (Value* in : n->inputs()) out.push_back(in);
  for (auto* b : n->blocks()) {
    for (Node* inner : b->nodes()) collect_reads(inner, out);
    for (Value* o : b->outputs()) out.push_back(o);
  }
}

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

namespace {

bool assigns_attributes(torch::jit::Block* b) {
  for (Node* n : b->nodes()) {
    if (n->kind() == c10::prim::SetAttr) return true;
    for (auto* inner : n->blocks())
      if (assigns_attributes(inner)) return true;
  }
  return false;
}

// ---- preparing the forward graph ----

// A function built from a graph loses its default arguments, so optional extra inputs (timm's attn_mask=None,
// ...) are replaced by their defaults; constant propagation then removes the branches.
void substitute_default_arguments(Graph& g, const c10::FunctionSchema& schema) {
  if (g.inputs().size() < 2)
    throw std::invalid_argument("the model's forward takes no input; vitfiqa calls forward(images)");
  for (size_t i = g.inputs().size() - 1; i >= 2; --i) {
    const auto& arg = schema.arguments().at(i);
    if (!arg.default_value())
      throw std::invalid_argument("the model's forward has a required extra argument '" + arg.name() +
                                  "'; vitfiqa calls forward(images) and supports only optional extras");
    torch::jit::WithInsertPoint guard(g.block()->nodes().front());
    Value* c = g.insertConstant(*arg.default_value());
    g.inputs()[i]->replaceAllUsesWith(c);
    g.eraseInput(i);
  }
}

// Scoring always runs in eval mode. Folding `training` to False lets constant propagation drop the
// training-only branches (BatchNorm's num_batches_tracked update, dropout); their side effects would
// otherwise keep the whole original head alive and defeat early exits.
void fold_training_flag(Graph& g, torch::jit::Block* b) {
  for (Node* n : b->nodes()) {
    if (n->kind() == c10::prim::GetAttr && n->s(attr::name) == "training") {
      torch::jit::WithInsertPoint guard(n);
      n->output()->replaceAllUsesWith(g.insertConstant(false));
    }
    for (auto* inner : n->blocks()) fold_training_flag(g, inner);
  }
}

// Reads of plain (str, int, float, bool) module attributes become constants, so constant propagation folds
// the branches they select: e.g. the ViT-FIQA class's `if self.mode == "token"` in a scripted forward,
// whose output tuple would otherwise come out of an If. Safe while the graph assigns no attributes: the
// module is private to the CaptureModel and its attributes never change after loading.
void fold_constant_attributes(Graph& g, const torch::jit::Module& module) {
  if (assigns_attributes(g.block())) return;
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

}  // namespace

std::shared_ptr<Graph> prepare_forward_graph(const torch::jit::Module& module) {
  auto method = module.get_method("forward");
  auto& fn = method.function();
  auto g = torch::jit::toGraphFunction(fn).graph()->copy();
  substitute_default_arguments(*g, fn.getSchema());
  torch::jit::Inline(*g);
  // Blocks that return (tokens, attention) tuples (the ATTN/ViTNT repositories' ViT): after inlining, the
  // tuple is built inside the block and unpacked outside; lowering the pair leaves the tokens as a plain
  // tensor leaving the block.
  torch::jit::LowerSimpleTuples(g);
  fold_training_flag(*g, g->block());
  fold_constant_attributes(*g, module);
  torch::jit::ConstantPropagation(g);
  torch::jit::EliminateDeadCode(g);
  hoist_parameter_reads(*g);
  return g;
}

}  // namespace vitfiqa
