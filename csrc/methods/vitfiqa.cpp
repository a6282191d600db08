// ViT-FIQA as a registered method: the quality head's own output (definition: docs/methods.md).
#include "methods.h"
#include "quality_model.h"

namespace vitfiqa {

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
