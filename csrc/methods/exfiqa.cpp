// EX-FIQA as a registered method: the quality head read at every exit, fused (kernels: ex_fiqa.cpp;
// definition: docs/methods.md).
#include "methods.h"
#include "quality_model.h"

namespace vitfiqa {

namespace {

std::vector<int64_t> exit_blocks(const ScoreConfig& c, const ModelInfo& info) {
  return c.exfiqa.exits.empty() ? all_blocks(info.num_blocks) : resolve_blocks(c.exfiqa.exits, info.num_blocks, "exfiqa.exits");
}

std::vector<int64_t> exit_depths(const ScoreConfig& c, const ModelInfo& info) {
  auto depths = exit_blocks(c, info);
  for (auto& d : depths) d += 1;  // 1-based: the papers' l and the depth weights of EX-FIQA-FW
  return depths;
}

std::string exit_column(int64_t depth) { return "exfiqa_exit" + std::to_string(depth); }

// The two fusions' score columns: EX-FIQA-F (mean) and EX-FIQA-FW (depth-weighted).
const ScoreColumn kMeanFused{"exfiqa_F", "EX-FIQA (F)"};
const ScoreColumn kDepthFused{"exfiqa_FW", "EX-FIQA (FW)"};

Method exfiqa_method() {
  Method m;
  m.name = "exfiqa";
  m.title = "EX-FIQA";
  m.score_columns = {kMeanFused, kDepthFused};
  m.description = "EX-FIQA: quality head at every exit, fused by mean (exfiqa_F) and depth weights (exfiqa_FW)";
  m.validate = [](const ScoreConfig& c, const ModelInfo& info) {
    check_choices(c, "exfiqa");
    exit_blocks(c, info);
  };
  m.plan = [](const ScoreConfig& c, const ModelInfo& info, CaptureRequest& req) {
    auto blocks = exit_blocks(c, info);
    req.exit_blocks.insert(req.exit_blocks.end(), blocks.begin(), blocks.end());
    req.exit_output = c.quality_output;
  };
  m.columns = [](const ScoreConfig& c, const ModelInfo& info) {
    std::vector<std::string> cols{kMeanFused.name, kDepthFused.name};  // then one per exit
    for (int64_t d : exit_depths(c, info)) cols.push_back(exit_column(d));
    return cols;
  };
  m.finish = [](const FinishContext& ctx, ScoreResult& out) {
    std::vector<at::Tensor> rows;
    for (int64_t b : exit_blocks(ctx.config, ctx.info)) rows.push_back(quality_scalar(ctx.capture.exits.at(b), ctx.batch));
    auto matrix = at::stack(rows);
    auto depths = exit_depths(ctx.config, ctx.info);
    const auto& norm = ctx.config.exfiqa.normalization;
    add_score(out, kMeanFused.name, fuse_exits(matrix, depths, "mean", norm));
    add_score(out, kDepthFused.name, fuse_exits(matrix, depths, "depth", norm));
    out.exits = matrix;
    out.exit_depths = depths;
    out.exit_columns.clear();
    for (int64_t d : depths) out.exit_columns.push_back(exit_column(d));
  };
  m.batch_dependence = [](const ScoreConfig& c) -> std::string {
    if (c.exfiqa.normalization == "none") return "";
    return config_field("exfiqa.normalization").label() + " over a batch makes scores depend on batching; use 'none' "
           "and vitfiqa.fuse_exits over the whole data set";
  };
  return m;
}

}  // namespace

VITFIQA_REGISTER_METHOD(exfiqa_method());

}  // namespace vitfiqa
