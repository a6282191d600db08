// ViTNT-FIQA: stability of L2-normalised patch embeddings across consecutive (selected) blocks.
#include <stdexcept>

#include "methods.h"

namespace vitfiqa {

VitntResult vitnt_score(const std::vector<at::Tensor>& steps, int64_t prefix, double scale,
                        const std::optional<at::Tensor>& weights) {
  if (steps.empty()) throw std::invalid_argument("ViTNT-FIQA needs at least two selected blocks");
  const int64_t n = steps.front().size(1) - prefix;
  if (n <= 0) throw std::invalid_argument("no patch tokens left after skipping " + std::to_string(prefix) + " prefix tokens");
  at::Tensor dist = steps.front().narrow(1, prefix, n).clone();
  for (size_t t = 1; t < steps.size(); ++t) dist.add_(steps[t].narrow(1, prefix, n));
  dist.div_(static_cast<double>(steps.size()));
  auto q = 2.0 / (1.0 + at::exp(dist * scale));
  at::Tensor score;
  if (weights) {
    if (weights->sizes() != q.sizes())
      throw std::invalid_argument("ViTNT-FIQA patch weights have shape " + c10::str(weights->sizes()) + ", expected " +
                                  c10::str(q.sizes()));
    score = (q * weights->to(at::kDouble)).sum(1);
  } else {
    score = q.mean(1);
  }
  return {score, q, dist};
}

at::Tensor patch_attention_weights(const std::vector<at::Tensor>& probs, int64_t prefix) {
  if (probs.empty()) throw std::invalid_argument("attention weighting needs the attention of at least one block");
  at::Tensor received;  // [B,N]: what each key receives over all queries, head-mean, averaged over blocks
  for (const auto& p : probs) {
    auto r = p.mean(1, false, at::kDouble).sum(1);
    received = received.defined() ? received + r : r;
  }
  received = received / static_cast<double>(probs.size());
  auto patches = received.narrow(1, prefix, received.size(1) - prefix);
  return patches / patches.sum(1, true);
}

}  // namespace vitfiqa
