#include "graph_rewrite.h"

#include "graph_prepare.h"
#include "util.h"

#include <torch/csrc/jit/passes/dead_code_elimination.h>

#include <algorithm>
#include <functional>
#include <map>
#include <stdexcept>
#include <unordered_map>
#include <unordered_set>
#include <utility>

namespace vitfiqa {

using torch::jit::Graph;
using torch::jit::Node;
using torch::jit::Value;

namespace {

// ---- dead code ----

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

// ---- request checks ----

void check_block(const ModelLayout& layout, int64_t b, const char* what) {
  if (b < 0 || b >= layout.info.num_blocks)
    throw std::out_of_range(std::string(what) + " block index " + std::to_string(b) + " is out of range (model has " +
                            std::to_string(layout.info.num_blocks) + " blocks)");
}

// The base-graph value of the model output the early exits compute.
Value* exit_target(const ModelLayout& layout, int64_t exit_output) {
  Value* ret = layout.base->outputs().at(0);
  const int64_t n = layout.info.num_outputs;
  if (n > 1 || ret->type()->cast<c10::TupleType>()) {
    int64_t idx = exit_output < 0 ? n + exit_output : exit_output;
    if (idx < 0 || idx >= n)
      throw std::out_of_range("exit output index " + std::to_string(exit_output) + " is out of range (model returns " +
                              std::to_string(n) + " values)");
    if (ret->node()->kind() != c10::prim::TupleConstruct)
      throw std::invalid_argument("the model's output tuple is not built in its forward graph; cannot select an exit output");
    return ret->node()->input(idx);
  }
  if (exit_output != -1 && exit_output != 0)
    throw std::out_of_range("the model returns a single tensor; exit output must be 0 or -1");
  return ret;
}

// The blocks whose attention is tapped: the logits' blocks, and for fused attention also the probabilities'
// (recomputed from q and k), sorted, once each.
std::vector<int64_t> attention_blocks(const ModelLayout& layout, const CaptureRequest& req) {
  std::vector<int64_t> blocks = req.logits_blocks;
  if (layout.info.attention_kind == AttentionKind::ScaledDotProduct)
    blocks.insert(blocks.end(), req.probs_blocks.begin(), req.probs_blocks.end());
  return sorted_unique(std::move(blocks));
}

// Rejects requests the layout cannot serve: block indices out of range, block outputs or a final norm that the
// analysis did not find, an exit output the model does not return.
void check_request(const ModelLayout& layout, const CaptureRequest& req) {
  check_attn_logits(req.attn_logits);
  bool needs_outputs = !req.token_blocks.empty() || !req.distance_blocks.empty() || !req.exit_blocks.empty();
  if (needs_outputs && layout.block_outputs.empty())
    throw std::invalid_argument("block outputs cannot be located in this model (the graph carries no module "
                                "hierarchy: frozen?); save it with torch.jit.script or torch.jit.trace without "
                                "torch.jit.freeze");
  const bool needs_norm = (!req.token_blocks.empty() && req.tokens_final_norm) || !req.distance_blocks.empty();
  if (needs_norm && !layout.final_norm.norm())
    throw std::invalid_argument(
        "no final LayerNorm after the last block was found in the model's forward, but normalised block tokens "
        "were asked for (ViTNT-FIQA); if forward leaves the norm out or applies it after pooling, name it: " +
        final_norm_suggestion(layout.info.final_norm_candidates));
  for (int64_t b : attention_blocks(layout, req)) check_block(layout, b, "attention");
  for (int64_t b : req.probs_blocks) check_block(layout, b, "attention");
  for (int64_t b : req.token_blocks) check_block(layout, b, "token");
  for (int64_t b : req.distance_blocks) check_block(layout, b, "token");
  if (!req.exit_blocks.empty()) exit_target(layout, req.exit_output);
  for (int64_t b : req.exit_blocks) check_block(layout, b, "exit");
}

// ---- the rewrite ----

// Copies the base graph and appends taps to the copy; finish() returns them as one tuple.
class Rewriter {
 public:
  Rewriter(const ModelLayout& layout, const CaptureRequest& request)
      : layout_(layout), req_(request), g_(std::make_shared<Graph>()) {
    copy_base();
  }

  void tap_attention();
  void tap_probs();
  void tap_tokens();
  void tap_distances();
  void tap_exits();
  void tap_model();
  CaptureGraph finish(const std::string& name);

 private:
  void copy_base();
  Value* copy_of(Value* base_value) const { return vmap_.at(base_value); }
  void emit(Value* v, Tap tap, int64_t block);
  Node* after_definitions(Node* after, const std::vector<Value*>& values) const;
  std::unordered_map<Value*, Value*> reapply(const std::vector<Node*>& chain, Value* from, Value* to);
  void tap_attention_inputs(int64_t b);
  void tap_stream_shape(int64_t b);
  Value* block_tokens(int64_t b, bool final_norm);
  Value* step_distance(Value* prev, Value* cur, bool fuse_norm);
  std::vector<Node*> head_nodes(Value* target) const;

  const ModelLayout& layout_;
  const CaptureRequest& req_;
  std::shared_ptr<Graph> g_;
  std::unordered_map<Value*, Value*> vmap_;  // base-graph value -> its copy in g_
  std::vector<Value*> outs_;
  std::vector<TapSite> taps_;
  std::map<std::pair<int64_t, bool>, Value*> block_tokens_;  // (block, final_norm) -> its value, built once
};

void Rewriter::copy_base() {
  auto lookup = [&](Value* v) { return vmap_.at(v); };
  for (Value* in : layout_.base->inputs()) vmap_[in] = g_->addInput()->copyMetadata(in);
  for (Node* n : layout_.base->nodes()) {
    Node* c = g_->appendNode(g_->createClone(n, lookup));
    for (size_t i = 0; i < n->outputs().size(); ++i) vmap_[n->outputs()[i]] = c->outputs()[i];
  }
}

void Rewriter::emit(Value* v, Tap tap, int64_t block) {
  outs_.push_back(v);
  taps_.push_back({tap, block});
}

// The earliest top-level point at which every value in `values` (of the copy) is defined, at or after `after`.
Node* Rewriter::after_definitions(Node* after, const std::vector<Value*>& values) const {
  for (Value* v : values) {
    Node* def = v->node();
    if (def->owningBlock() == g_->block() && def->isAfter(after)) after = def;
  }
  return after;
}

// Re-applies a chain of base-graph nodes to a new input `to` in place of `from` (the rest of the graph stays
// shared); returns the map from the chain's base values to their new copies. The copy goes right after `to` is
// computed (or after the last value it reads, if later), so the interpreter can free what it no longer needs
// while the pass goes on.
std::unordered_map<Value*, Value*> Rewriter::reapply(const std::vector<Node*>& chain, Value* from, Value* to) {
  std::unordered_map<Value*, Value*> local{{from, to}};
  std::unordered_set<Node*> in_chain(chain.begin(), chain.end());
  std::vector<Value*> external;
  for (Node* n : chain) {
    std::vector<Value*> reads;
    collect_reads(n, reads);
    for (Value* v : reads)
      if (v != from && !in_chain.count(v->node()) && vmap_.count(v)) external.push_back(vmap_.at(v));
  }
  torch::jit::WithInsertPoint guard(after_definitions(to->node(), external)->next());
  for (Node* n : chain) {
    Node* c = g_->insertNode(g_->createClone(n, [&](Value* v) {
      auto it = local.find(v);
      return it != local.end() ? it->second : vmap_.at(v);
    }));
    for (size_t i = 0; i < n->outputs().size(); ++i) local[n->outputs()[i]] = c->outputs()[i];
  }
  return local;
}

void Rewriter::tap_attention_inputs(int64_t b) {
  const AttentionSite& site = layout_.sites[b];
  Node* op = site.node;
  if (op->kind() == c10::aten::softmax) {
    bool qk = req_.attn_logits == "qk" && site.unbiased_logits;
    emit(copy_of(qk ? site.unbiased_logits : op->input(0)), Tap::Logits, b);
    return;
  }
  emit(copy_of(op->namedInput("query")), Tap::Query, b);
  emit(copy_of(op->namedInput("key")), Tap::Key, b);
  Value* scale = op->namedInput("scale");
  if (!is_none(scale)) emit(copy_of(scale), Tap::Scale, b);
  Value* mask = op->namedInput("attn_mask");
  if (!is_none(mask)) emit(copy_of(mask), Tap::Mask, b);
}

// The shape of the token sequence entering the block, to check at run time that the attention spans it
// (windowed or channel attention would not); free: the block reads that tensor anyway.
void Rewriter::tap_stream_shape(int64_t b) {
  if (b == 0 || layout_.block_outputs.empty()) return;
  Value* stream = copy_of(layout_.block_outputs[b - 1]);
  torch::jit::WithInsertPoint guard(stream->node()->next());
  emit(g_->insert(c10::aten::size, {stream}), Tap::StreamShape, b);
}

void Rewriter::tap_attention() {
  for (int64_t b : attention_blocks(layout_, req_)) {
    tap_attention_inputs(b);
    tap_stream_shape(b);
  }
}

void Rewriter::tap_probs() {
  for (int64_t b : req_.probs_blocks)  // fused attention: recomputed from the tapped q and k
    if (layout_.sites[b].node->kind() == c10::aten::softmax) emit(copy_of(layout_.sites[b].node->output()), Tap::Probs, b);
}

// Block b's output, through the final norm when final_norm.
// Built once per (block, final_norm): returned tokens and non-fused distances of one block share it.
Value* Rewriter::block_tokens(int64_t b, bool final_norm) {
  Value*& value = block_tokens_[{b, final_norm}];
  if (value) return value;
  Value* out = layout_.block_outputs[b];
  Node* norm = layout_.final_norm.norm();
  Value* last = layout_.block_outputs.back();
  if (!final_norm) value = copy_of(out);
  else if (out == last) value = copy_of(norm->output());  // computed by the model anyway
  else value = reapply(layout_.final_norm.nodes, last, copy_of(out)).at(norm->output());
  return value;
}

// vitfiqa::patch_step_distance(prev, cur), or with fuse_norm vitfiqa::patch_step_distance_ln on raw block
// outputs with the final norm's weight, bias and eps.
Value* Rewriter::step_distance(Value* prev, Value* cur, bool fuse_norm) {
  std::vector<Value*> inputs{prev, cur};
  if (fuse_norm)
    for (size_t i : {2, 3, 4}) inputs.push_back(copy_of(layout_.final_norm.norm()->input(i)));
  // Right after the block, unless the norm's parameters are read later (hoisting is off with SetAttr).
  torch::jit::WithInsertPoint guard(after_definitions(cur->node(), inputs)->next());
  Node* d = g_->create(c10::Symbol::fromQualString(fuse_norm ? "vitfiqa::patch_step_distance_ln"
                                                             : "vitfiqa::patch_step_distance"),
                       inputs, 1);
  g_->insertNode(d);
  d->output()->setType(c10::TensorType::get());
  return d->output();
}

void Rewriter::tap_tokens() {
  for (int64_t b : sorted_unique(req_.token_blocks)) emit(block_tokens(b, req_.tokens_final_norm), Tap::Tokens, b);
}

void Rewriter::tap_distances() {
  // ViTNT's distances read each block's output once, through a kernel that applies the final LayerNorm
  // on the fly (no normalised copy of any block is materialised), when the norm is a plain last-axis one.
  const bool fuse_norm = layout_.final_norm.fusable;
  Value* prev = nullptr;
  for (int64_t b : sorted_unique(req_.distance_blocks)) {
    Value* cur = fuse_norm ? copy_of(layout_.block_outputs[b]) : block_tokens(b, /*final_norm=*/true);
    if (prev) emit(step_distance(prev, cur, fuse_norm), Tap::Distance, b);
    prev = cur;
  }
}

// The head: every base-graph node that depends on the last block's output and feeds `target`, in graph order.
std::vector<Node*> Rewriter::head_nodes(Value* target) const {
  std::unordered_set<Value*> dependent{layout_.block_outputs.back()};
  std::vector<Node*> forward_cone;
  for (Node* n : layout_.base->nodes())
    if (reads_any(n, dependent)) {
      forward_cone.push_back(n);
      for (Value* o : n->outputs()) dependent.insert(o);
    }
  if (!dependent.count(target))
    throw std::invalid_argument("the chosen model output does not depend on the last block's output");
  std::unordered_set<Value*> needed{target};
  std::vector<Node*> head;
  for (auto it = forward_cone.rbegin(); it != forward_cone.rend(); ++it) {
    Node* n = *it;
    bool feeds = std::any_of(n->outputs().begin(), n->outputs().end(), [&](Value* o) { return needed.count(o) > 0; });
    if (!feeds) continue;
    head.insert(head.begin(), n);
    std::vector<Value*> reads;  // including the values read inside nested blocks
    collect_reads(n, reads);
    needed.insert(reads.begin(), reads.end());
  }
  return head;
}

void Rewriter::tap_exits() {
  if (req_.exit_blocks.empty()) return;
  Value* target = exit_target(layout_, req_.exit_output);
  const std::vector<Node*> head = head_nodes(target);
  Value* last = layout_.block_outputs.back();
  for (int64_t b : req_.exit_blocks) {
    if (b == layout_.info.num_blocks - 1) emit(copy_of(target), Tap::Exit, b);
    else emit(reapply(head, last, copy_of(layout_.block_outputs[b])).at(target), Tap::Exit, b);
  }
}

void Rewriter::tap_model() {
  if (req_.model_output) emit(copy_of(layout_.base->outputs().at(0)), Tap::ModelOutput, -1);
  if (layout_.patch_conv) emit(copy_of(layout_.patch_conv->output()), Tap::PatchGrid, -1);
}

CaptureGraph Rewriter::finish(const std::string& name) {
  while (!g_->outputs().empty()) g_->eraseOutput(0);
  Node* tuple = g_->insertNode(g_->createTuple(outs_));
  g_->registerOutput(tuple->output());
  eliminate_dead_code_and_guards(g_);
  g_->lint();
  auto fn = std::make_shared<torch::jit::GraphFunction>(c10::QualifiedName(name), g_->copy(), nullptr);
  return {g_, fn, taps_};
}

}  // namespace

CaptureGraph rewrite_graph(const ModelLayout& layout, const CaptureRequest& request, const std::string& name) {
  check_request(layout, request);
  Rewriter rewriter(layout, request);
  rewriter.tap_attention();
  rewriter.tap_probs();
  rewriter.tap_tokens();
  rewriter.tap_distances();
  rewriter.tap_exits();
  rewriter.tap_model();
  return rewriter.finish(name);
}

}  // namespace vitfiqa
