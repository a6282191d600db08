// Capture of attention logits and block tokens from a TorchScript ViT by rewriting its forward graph.
//
// Forward hooks cannot be added to an already compiled TorchScript module (a submodule's hook would have
// to be compiled into its parent's graph), so instead we copy the forward graph, inline every call,
// locate the attention sites and block outputs (graph_analysis.h), and return the wanted values from a
// standalone GraphFunction (graph_rewrite.h), built once per distinct request and cached. The user's module and
// its type are never modified. This header is the models' interface (the shared types: capture_types.h);
// capture.cpp loads, caches and runs.
#pragma once

#include <torch/csrc/jit/api/module.h>
#include <torch/csrc/jit/ir/ir.h>

#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "capture_types.h"

namespace vitfiqa {

struct ModelLayout;   // graph_analysis.h
struct CaptureGraph;  // graph_rewrite.h

class CaptureModel {
 public:
  // Loads from a file path or (when from_bytes) from the serialized bytes themselves. final_norm: the
  // dotted module path of the model's final LayerNorm, for models whose forward does not apply it (ViTNT
  // then applies that module to every block's output); empty = find the norm in the forward graph.
  CaptureModel(const std::string& path_or_bytes, bool from_bytes, const std::string& device,
               const std::string& dtype, const std::string& final_norm = "");

  CaptureResult run(const at::Tensor& images, const CaptureRequest& request);
  at::IValue forward(const at::Tensor& images);  // the plain model forward, for baselines
  const ModelInfo& info() const;
  at::Device device() const { return device_; }
  at::ScalarType dtype() const { return dtype_; }
  std::string graph_for(const CaptureRequest& request);  // debugging aid: the rewritten graph
  at::IValue attribute(const std::string& name) const;
  ~CaptureModel();

 private:
  const CaptureGraph& graph(const CaptureRequest& request);  // from the cache, rewritten on first use
  void check_images(const at::Tensor& images) const;

  torch::jit::Module module_;
  at::Device device_;
  at::ScalarType dtype_;
  std::unique_ptr<const ModelLayout> layout_;
  std::mutex mutex_;  // guards cache_
  std::map<CaptureRequest, std::unique_ptr<const CaptureGraph>> cache_;
};

// torch::jit::load from a path or from the serialized bytes, with one clear error for a corrupt file.
torch::jit::Module load_script_module(const std::string& path_or_bytes, bool from_bytes, const at::Device& device);

// Any TorchScript model (CNN or ViT) run as is: no graph analysis, for recognizers that only give
// embeddings. Same loading and input checks as CaptureModel.
class ScriptModel {
 public:
  ScriptModel(const std::string& path_or_bytes, bool from_bytes, const std::string& device, const std::string& dtype);
  at::IValue forward(const at::Tensor& images);
  at::Device device() const { return device_; }
  at::ScalarType dtype() const { return dtype_; }

 private:
  torch::jit::Module module_;
  at::Device device_;
  at::ScalarType dtype_;
};

}  // namespace vitfiqa

