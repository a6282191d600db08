// Method kernels: pure tensor functions over captured values. Definitions: docs/methods.md.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <string>
#include <vector>

#include "capture.h"

namespace vitfiqa {

// ---- ATTN-FIQA (attn_fiqa.cpp) ----
// Signed mean of the pre-softmax logits over heads, queries and keys, in float64 accumulation.
// For fused attention it uses mean_ij(q_i . k_j) = mean(q) . mean(k): O(N*C) instead of O(N^2*C).
// first_token > 0 restricts queries and keys to tokens [first_token, N) (patch tokens only).
at::Tensor attn_score(const AttentionCapture& a, int64_t first_token = 0);
// What each key receives: head-mean, query-mean of the logits, [B,N] (O(N*C) for fused attention).
at::Tensor attn_key_means(const AttentionCapture& a);
// Full pre-softmax logits [B,H,N,N] (materialised from q,k for fused attention).
at::Tensor attention_logits(const AttentionCapture& a);
// Post-softmax attention [B,H,N,N].
at::Tensor attention_probs(const AttentionCapture& a);

// ---- shared heatmap helpers (attn_fiqa.cpp) ----
// [B,N] per-token values -> drop prefix tokens -> [B,gh,gw] patch grid (float32, raw values).
at::Tensor token_grid(const at::Tensor& per_token, int64_t prefix, const std::vector<int64_t>& grid);
// Patch grids [B,gh,gw] -> [B,H,W] float32 heatmaps, normalised as the official ATTN-FIQA plot script does:
// on the patch grid, BEFORE the bilinear resize, (g - lo) / (hi - lo + 1e-8) clipped to [0, 1], with
//   "image":  lo, hi = min, max of each image's grid (official normalize_global=False),
//   "global": lo, hi = min, max over every grid given (official normalize_global=True: all images shown),
//             or value_range when given (e.g. a data set's min and max, collected over several calls),
//   "none":   raw values.
// The one vocabulary of modes, in this order; ScoreConfig's heatmap.normalize reads it (config.cpp).
const std::vector<std::string>& heatmap_normalizations();
// Then bilinear resize (align_corners=False, as cv2.INTER_LINEAR) to out_hw ({} keeps the grid).
at::Tensor render_heatmaps(const at::Tensor& grids, const std::vector<int64_t>& out_hw, const std::string& mode,
                           const std::vector<double>& value_range);

// ---- ViTNT-FIQA (vitnt_fiqa.cpp; the two step-distance ops: ops.cpp) ----
struct VitntResult {
  at::Tensor score;          // [B]
  at::Tensor patch_quality;  // [B,P] q[p] = 2 / (1 + exp(s d[p]))
  at::Tensor patch_distance; // [B,P] mean step distance d[p]
};
// ||a/|a| - b/|b||| per token of two [B,N,C] token tensors -> [B,N] float64. Calls the TorchScript op
// vitfiqa::patch_step_distance (schema and per-dispatch-key kernels in ops.cpp), the op the capture graph
// calls to reduce each block pair as soon as it exists.
at::Tensor patch_step_distance(const at::Tensor& a, const at::Tensor& b);
// The same on raw block outputs with the final LayerNorm (last axis; weight/bias optional) applied on the
// fly: calls vitfiqa::patch_step_distance_ln (ops.cpp). Equals patch_step_distance(LN(a), LN(b)).
at::Tensor patch_step_distance_ln(const at::Tensor& a, const at::Tensor& b, const std::optional<at::Tensor>& weight,
                                  const std::optional<at::Tensor>& bias, double eps);
// steps: patch_step_distance of consecutive selected blocks (final-norm outputs), each [B,N].
// weights: optional [B,P] patch weights summing to 1 (attention weighting); uniform mean when absent.
VitntResult vitnt_score(const std::vector<at::Tensor>& steps, int64_t prefix, double scale,
                        const std::optional<at::Tensor>& weights);
// Attention weighting: post-softmax attention, head-mean, summed over queries, averaged over the given
// blocks (official last_block_attention_only=False; one block = the default), patch keys, normalised to 1.
at::Tensor patch_attention_weights(const std::vector<at::Tensor>& probs, int64_t prefix);

// ---- EX-FIQA (ex_fiqa.cpp) ----
// exit_scores [L,B] for exits at 1-based depths `depths`; normalization "none" | "zscore" | "minmax"
// (over the batch axis); fusion "mean" (EX-FIQA-F) or "depth" (EX-FIQA-FW, w_l proportional to l).
at::Tensor normalize_exits(const at::Tensor& exit_scores, const std::string& normalization);
// The one vocabulary of exit normalisations (normalize_exits' table); ScoreConfig's exfiqa.normalization reads it.
const std::vector<std::string>& exit_normalizations();
// The quality head's output at one exit -> [B] float64; a clear error unless it is one value per image.
at::Tensor quality_scalar(const at::Tensor& exit_output, int64_t batch);
at::Tensor fuse_exits(const at::Tensor& exit_scores, const std::vector<int64_t>& depths, const std::string& fusion,
                      const std::string& normalization);

}  // namespace vitfiqa
