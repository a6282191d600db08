// Orchestration: one capture pass per batch, then the method kernels. Python sees only this and CaptureModel.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "capture.h"

namespace vitfiqa {

struct ScoreOptions {
  std::vector<std::string> methods{"attn", "vitnt"};  // attn, vitnt, vitfiqa, exfiqa
  bool heatmaps = false;
  bool return_captures = false;
  int64_t prefix_tokens = -1;                // -1: from the patch grid (N - gh*gw)
  std::vector<int64_t> grid;                 // {} : from the patch embedding's convolution
  std::vector<int64_t> heatmap_size;         // {} : the input's H, W
  std::string heatmap_normalize = "image";   // image | global (over the batch) | range | none: render_heatmaps
  std::vector<double> heatmap_range;         // {low, high} for "range"
  int64_t attn_block = -1;                   // ATTN-FIQA block (negative counts from the end)
  bool attn_patches_only = false;            // score over patch tokens only (default: all tokens)
  std::string attn_logits = kDefaultAttnLogits;  // qk | full (see kDefaultAttnLogits)
  std::vector<int64_t> vitnt_blocks;         // {} : all blocks
  double vitnt_scale = 8.0;
  std::string vitnt_weighting = "uniform";   // uniform | attention
  std::string vitnt_attention_blocks = "last";  // attention weights of the last selected block | all selected
  std::vector<int64_t> exits;                // {} : all blocks (EX-FIQA)
  std::string exit_normalization = "none";   // none | zscore | minmax (over the batch)
  int64_t quality_output = -1;               // which model output is the quality (ViT-FIQA: (emb, q))
};

std::map<std::string, at::Tensor> score(CaptureModel& model, const at::Tensor& images, const ScoreOptions& options);

}  // namespace vitfiqa
