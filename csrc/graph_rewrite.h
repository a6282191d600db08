// Graph rewrite: a model layout (graph_analysis.h) and a CaptureRequest -> a standalone graph that returns the
// requested values ("taps") as one tuple, computing only what they need.
#pragma once

#include <torch/csrc/jit/api/function_impl.h>
#include <torch/csrc/jit/ir/ir.h>

#include <memory>
#include <string>
#include <vector>

#include "capture_types.h"
#include "graph_analysis.h"

namespace vitfiqa {

// What one element of the rewritten graph's output tuple is.
enum class Tap {
  Logits,       // softmax input (or q.k*scale before its bias terms, attn_logits="qk"), [B,H,N,N]
  Query,        // SDPA query [B,H,N,D]
  Key,          // SDPA key [B,Hk,N,D]
  Scale,        // SDPA scale (float), tapped only when the model passes one
  Mask,         // SDPA additive attn_mask, tapped only when the model passes one
  StreamShape,  // size of the token tensor entering the block (to check that the attention spans it)
  Probs,        // post-softmax attention [B,H,N,N]
  Tokens,       // block output [B,N,C], through the final norm if requested
  Distance,     // vitfiqa::patch_step_distance(_ln) between this distance block and the previous one, [B,N]
  Exit,         // model head re-applied to the block output (early exit)
  ModelOutput,  // the model's own output (block -1)
  PatchGrid,    // patch-embedding conv output [B,C,gh,gw] (block -1)
};

struct TapSite {
  Tap tap;
  int64_t block;  // 0-based block index; -1 for the taps of the whole model
};

struct CaptureGraph {
  std::shared_ptr<torch::jit::Graph> graph;       // as rewritten (for graph_for)
  std::shared_ptr<torch::jit::GraphFunction> fn;  // run as fn(module, images)
  std::vector<TapSite> taps;                      // one per element of the returned tuple, in order
};

// The rewritten graph for a request; name: the qualified name of its function. Throws std::invalid_argument /
// std::out_of_range for requests the layout cannot serve (block indices out of range, block outputs or a final
// norm that the analysis did not find, an exit output the model does not return).
CaptureGraph rewrite_graph(const ModelLayout& layout, const CaptureRequest& request, const std::string& name);

}  // namespace vitfiqa
