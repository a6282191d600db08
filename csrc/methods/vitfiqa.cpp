// ViT-FIQA, one unit: the quality head's own output, its kernel and its registration (definition: docs/methods.md).
// No options of its own: it reads the top-level quality_output.
#include "methods/vitfiqa.h"

#include <stdexcept>

#include "methods.h"

namespace vitfiqa {

at::Tensor quality_scalar(const at::Tensor& exit_output, int64_t batch) {
  auto t = exit_output.reshape({batch, -1});
  if (t.size(1) != 1)
    throw std::invalid_argument("the quality output has " + std::to_string(t.size(1)) +
                                " values per image; ViT-FIQA models return (embedding, quality[B,1]) - pick it with quality_output");
  return t.squeeze(1).to(at::kDouble);
}

namespace {

Method vitfiqa_method() {
  Method m;
  m.name = "vitfiqa";
  m.title = "ViT-FIQA";
  m.description = "ViT-FIQA: the model's quality head (quality_output of the model's output tuple)";
  m.plan = [](const ScoreConfig& c, const ModelInfo& info, CaptureRequest& req) {
    req.exit_blocks.push_back(info.num_blocks - 1);
    req.exit_output = c.quality_output;
  };
  m.finish = [](const FinishContext& ctx, ScoreResult& out) {
    add_score(out, "vitfiqa", quality_scalar(ctx.capture.exits.at(ctx.info.num_blocks - 1), ctx.batch));
  };
  return m;
}

}  // namespace

VITFIQA_REGISTER_METHOD(vitfiqa_method());

}  // namespace vitfiqa
