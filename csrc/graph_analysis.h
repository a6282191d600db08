// Graph analysis: a TorchScript ViT's forward graph -> its layout (which op is each block's attention, which
// value is each block's output, where the final LayerNorm and the patch embedding are). Models that are not
// plain ViTs (hierarchical stages, token pooling, shifted or windowed attention) are refused here, with the
// reason. The layout is all that the graph rewrite (graph_rewrite.h) reads.
#pragma once

#include <torch/csrc/jit/api/module.h>
#include <torch/csrc/jit/ir/ir.h>

#include <memory>
#include <string>
#include <unordered_set>
#include <vector>

#include "capture_types.h"

namespace vitfiqa {

// One block's attention op in the base graph: aten::softmax (explicit) or aten::scaled_dot_product_attention.
struct AttentionSite {
  torch::jit::Node* node = nullptr;
  int64_t block = 0;
  bool biased = false;                           // the softmax input / attn_mask adds a bias or mask
  torch::jit::Value* unbiased_logits = nullptr;  // softmax sites: q.k*scale before the bias terms
};

// The final norm and the value-preserving ops that lead to it from the last block's output, in order (the norm
// last); re-applied to another block's output, the chain gives that block's normed tokens.
struct FinalNormChain {
  std::vector<torch::jit::Node*> nodes;  // empty: no final norm
  bool fusable = false;  // layer_norm over the last axis after float32 casts / copies only: the distance kernel
                         // vitfiqa::patch_step_distance_ln can apply it on the fly
  torch::jit::Node* norm() const { return nodes.empty() ? nullptr : nodes.back(); }
};

struct ModelLayout {
  std::shared_ptr<torch::jit::Graph> base;        // forward inlined, defaults substituted, constants folded,
                                                  // parameter reads hoisted to the top
  std::vector<AttentionSite> sites;               // one per block, in block order
  std::vector<torch::jit::Value*> block_outputs;  // one per block; empty without module hierarchy (frozen)
  FinalNormChain final_norm;
  torch::jit::Node* patch_conv = nullptr;         // the patch-embedding convolution, if any
  ModelInfo info;
};

// Analyses module's forward. final_norm: the dotted module path of the final LayerNorm for models whose forward
// does not apply it; empty = find the norm in the graph. Throws std::invalid_argument for models it cannot
// score. The module must outlive the layout (the graph reads its attributes).
ModelLayout analyse_graph(const torch::jit::Module& module, const std::string& final_norm);

// "final_norm='<first candidate>'" for messages (ModelInfo::final_norm_candidates; a generic path if none).
std::string final_norm_suggestion(const std::vector<std::string>& candidates);

}  // namespace vitfiqa
