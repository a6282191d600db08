// ViTNT-FIQA: stability of L2-normalised patch embeddings across consecutive (selected) blocks.
#include <stdexcept>

#include "methods.h"

namespace vitfiqa {

VitntResult vitnt_score(const std::vector<at::Tensor>& tokens, int64_t prefix, double scale,
                        const std::optional<at::Tensor>& weights) {
  if (tokens.size() < 2) throw std::invalid_argument("ViTNT-FIQA needs at least two selected blocks");
  const int64_t n = tokens.front().size(1) - prefix;
  if (n <= 0) throw std::invalid_argument("no patch tokens left after skipping " + std::to_string(prefix) + " prefix tokens");
  auto unit = [&](const at::Tensor& t) {
    auto p = t.narrow(1, prefix, n).to(at::kFloat);
    return p / p.norm(2, -1, true).clamp_min(1e-12);
  };
  at::Tensor prev = unit(tokens[0]);
  at::Tensor dist = at::zeros({prev.size(0), n}, prev.options());
  for (size_t t = 1; t < tokens.size(); ++t) {
    at::Tensor cur = unit(tokens[t]);
    dist.add_((cur - prev).norm(2, -1));
    prev = cur;
  }
  dist.div_(static_cast<double>(tokens.size() - 1));
  auto q = 2.0 / (1.0 + at::exp(dist * scale));
  at::Tensor score;
  if (weights) {
    if (weights->sizes() != q.sizes())
      throw std::invalid_argument("ViTNT-FIQA patch weights have shape " + c10::str(weights->sizes()) + ", expected " +
                                  c10::str(q.sizes()));
    score = (q.to(at::kDouble) * weights->to(at::kDouble)).sum(1);
  } else {
    score = q.mean(1, false, at::kDouble);
  }
  return {score, q, dist};
}

at::Tensor patch_attention_weights(const at::Tensor& probs, int64_t prefix) {
  auto received = probs.mean(1, false, at::kDouble).sum(1);  // [B,N]: what each key receives over all queries
  auto patches = received.narrow(1, prefix, received.size(1) - prefix);
  return patches / patches.sum(1, true);
}

}  // namespace vitfiqa
