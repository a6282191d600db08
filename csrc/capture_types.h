// The types the C++ core shares: what a capture pass is asked for (CaptureRequest), what it returns
// (CaptureResult, AttentionCapture) and what the graph analysis found (ModelInfo). Everything below the capture
// (graph analysis and rewrite, the config, the methods) includes this header, not capture.h (CaptureModel).
#pragma once

#include <ATen/ATen.h>
#include <ATen/core/ivalue.h>

#include <compare>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace vitfiqa {

enum class AttentionKind { Softmax, ScaledDotProduct };

// Which attention logits ATTN-FIQA (its heatmap and raw logit captures) reads where the softmax input adds a
// bias or mask to q.k*scale (BEiT's relative-position bias, timm's relpos ViTs, additive masks):
// "qk" = q.k*scale, the papers' definition; "full" = the whole softmax input, bias and mask included.
// The one default for the C++ options, the bindings and the Python API.
inline constexpr const char* kDefaultAttnLogits = "qk";
const std::vector<std::string>& attn_logits_modes();     // the one vocabulary: qk, full (capture.cpp)
void check_attn_logits(const std::string& attn_logits);  // throws std::invalid_argument unless qk | full

// What one forward pass should return. Indices are 0-based block indices. Requests compare field by field
// (defaulted comparison): the graph cache is keyed by the request itself, so every field, present or added
// later, selects its own rewritten graph.
struct CaptureRequest {
  std::vector<int64_t> logits_blocks;    // softmax input / (q, k, scale, mask) of these blocks
  std::string attn_logits = kDefaultAttnLogits;  // "qk" | "full": bias and mask in the logits or not
  std::vector<int64_t> probs_blocks;     // post-softmax attention of these blocks (softmax sites only)
  std::vector<int64_t> token_blocks;     // these blocks' outputs, returned whole ...
  bool tokens_final_norm = true;         // ... passed through the model's final LayerNorm or not
  // ViTNT-FIQA's step distances, independent of token_blocks: the final-norm outputs of these blocks reduced
  // in-graph to per-token distances between consecutive ones (vitfiqa::patch_step_distance), so only two
  // blocks' tokens are alive at any time. Always through the final norm (the method's definition).
  std::vector<int64_t> distance_blocks;
  std::vector<int64_t> exit_blocks;      // model head re-applied to these blocks' outputs (early exits)
  int64_t exit_output = -1;              // which element of the model output the exits compute
  bool model_output = false;             // the model's own output
  auto operator<=>(const CaptureRequest&) const = default;
  bool operator==(const CaptureRequest&) const = default;
};

// One attention site as captured: either the materialised logits (explicit attention) or the fused
// kernel's q, k, scale and additive mask, from which logits (or their means) are recomputed.
struct AttentionCapture {
  AttentionKind kind;
  at::Tensor logits;               // [B,H,N,N], softmax sites
  at::Tensor q, k;                 // [B,H,N,D], SDPA sites (k repeated to q's heads for GQA)
  double scale = 0.0;              // SDPA scale actually used
  std::optional<at::Tensor> mask;  // SDPA additive float mask (broadcastable to [B,H,N,N])
  bool mask_in_logits = true;      // false: the logits are q.k*scale alone (attn_logits="qk"); the
                                   // post-softmax attention always includes the mask
};

struct CaptureResult {
  std::map<int64_t, AttentionCapture> attention;
  std::map<int64_t, at::Tensor> probs;    // [B,H,N,N]
  std::map<int64_t, at::Tensor> tokens;   // [B,N,C]
  std::vector<at::Tensor> token_distances;  // [B,N] float64, one per consecutive pair of distance_blocks
  std::map<int64_t, at::Tensor> exits;    // model head output at each exit
  at::IValue model_output;
  std::vector<int64_t> patch_grid;        // {gh, gw} from the patch embedding, empty if unknown
};

// What the static analysis of the graph found.
struct ModelInfo {
  int64_t num_blocks = 0;
  AttentionKind attention_kind = AttentionKind::Softmax;
  bool has_hierarchy = true;          // false for frozen models: blocks known only by op order
  bool has_final_norm = false;
  std::string final_norm;             // where the final norm came from: its module path, or the named option
  std::vector<std::string> final_norm_ops;  // value-preserving ops between the last block and the norm
  // No final norm found in forward: the LayerNorm modules a user could name with final_norm= instead, those
  // forward applies after the last block (e.g. CLIP's post_layernorm, after pooling) first, else the LayerNorm
  // submodules outside the blocks that forward leaves out.
  std::vector<std::string> final_norm_candidates;
  bool has_patch_conv = false;
  std::vector<int64_t> patch_size;    // {kh, kw} of a patch-embedding conv with stride == kernel, else empty
  int64_t position_tokens = 0;        // tokens of the [1, N, C] position embedding (C = conv channels), 0 if none
  int64_t num_outputs = 1;            // elements of the model's output tuple (1 = plain tensor)
  std::vector<std::string> block_names;
  std::vector<int64_t> biased_blocks;  // blocks whose softmax input adds a bias or mask to q.k*scale
  std::vector<std::string> notes;
};

// An attention capture as tensors (capture.cpp): the full pre-softmax logits [B,H,N,N] (materialised from q, k for
// fused attention; the mask included as the capture's attn_logits says), and the post-softmax attention [B,H,N,N]
// (the model's own: its mask always applies).
at::Tensor attention_logits(const AttentionCapture& a);
at::Tensor attention_probs(const AttentionCapture& a);

}  // namespace vitfiqa
