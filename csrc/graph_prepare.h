// Graph preparation: a module's forward graph made ready for the analysis (graph_analysis.h), and the small graph
// queries the analysis and the rewrite (graph_rewrite.h) share.
#pragma once

#include <torch/csrc/jit/api/module.h>
#include <torch/csrc/jit/ir/ir.h>

#include <memory>
#include <unordered_set>
#include <vector>

namespace vitfiqa {

// A copy of module's forward graph, inlined, with default arguments substituted, eval-mode constants folded
// (`training`, plain attributes) and constants / parameter reads hoisted to the top. The module is not modified.
std::shared_ptr<torch::jit::Graph> prepare_forward_graph(const torch::jit::Module& module);

bool is_none(torch::jit::Value* v);
// Every value n reads, including the values read and returned by its nested blocks.
void collect_reads(torch::jit::Node* n, std::vector<torch::jit::Value*>& out);
// Does n (or anything nested in its blocks) read a value in vals?
bool reads_any(torch::jit::Node* n, const std::unordered_set<torch::jit::Value*>& vals);

}  // namespace vitfiqa
