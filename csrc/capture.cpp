// Load, cache, run: the TorchScript module is loaded and analysed once (graph_analysis.h); each distinct
// CaptureRequest is rewritten into its own graph once (graph_rewrite.h) and cached, keyed by the request itself.
#include "capture.h"

#include <torch/csrc/jit/serialization/import.h>
#include <ATen/core/grad_mode.h>

#include <algorithm>
#include <cmath>
#include <sstream>
#include <stdexcept>

#include "graph_analysis.h"
#include "graph_rewrite.h"

namespace vitfiqa {

namespace {

// Torch's messages can quote bytes of a corrupt file; pybind11 turns a message that is not valid UTF-8 into a
// UnicodeDecodeError instead of the ValueError we raise (found by benchmarks/fuzz.py). Keep printable ASCII.
std::string printable(std::string s) {
  for (auto& c : s)
    if (static_cast<unsigned char>(c) < 0x20 || static_cast<unsigned char>(c) > 0x7e) c = '?';
  return s;
}

std::string first_line(const std::string& s) {
  auto pos = s.find('\n');
  return printable(pos == std::string::npos ? s : s.substr(0, pos));
}

// The interpreter's message ends with the original error after a TorchScript traceback.
std::string last_line(const std::string& s) {
  std::istringstream in(s);
  std::string line, last;
  while (std::getline(in, line))
    if (line.find_first_not_of(" \t") != std::string::npos) last = line;
  return printable(last.empty() ? s : last.substr(last.find_first_not_of(" \t")));
}

at::ScalarType parse_dtype(const std::string& dtype) {
  if (dtype == "float32" || dtype == "float") return at::kFloat;
  if (dtype == "float16" || dtype == "half") return at::kHalf;
  if (dtype == "bfloat16") return at::kBFloat16;
  if (dtype == "float64" || dtype == "double") return at::kDouble;
  throw std::invalid_argument("unsupported dtype '" + dtype + "' (use float32, float16, bfloat16 or float64)");
}

at::Device parse_device(const std::string& device) {
  try {
    return at::Device(device);
  } catch (const c10::Error& e) {
    throw std::invalid_argument("invalid device '" + device + "': " + first_line(e.what_without_backtrace()));
  }
}

}  // namespace

const std::vector<std::string>& attn_logits_modes() {
  static const std::vector<std::string> modes{"qk", "full"};
  return modes;
}

void check_attn_logits(const std::string& attn_logits) {
  const auto& modes = attn_logits_modes();
  if (std::find(modes.begin(), modes.end(), attn_logits) == modes.end())
    throw std::invalid_argument("attn_logits must be 'qk' (q.k*scale, the papers' definition) or 'full' (the whole "
                                "softmax input, bias and mask included), got '" + attn_logits + "'");
}

at::Tensor attention_logits(const AttentionCapture& a) {
  if (a.kind == AttentionKind::Softmax) return a.logits;
  auto l = at::matmul(a.q * a.scale, a.k.transpose(-2, -1));
  if (a.mask && a.mask_in_logits) l = l + *a.mask;
  return l;
}

at::Tensor attention_probs(const AttentionCapture& a) {
  if (a.kind == AttentionKind::Softmax) return at::softmax(a.logits.to(at::kFloat), -1);
  auto l = at::matmul(a.q * a.scale, a.k.transpose(-2, -1));
  if (a.mask) l = l + *a.mask;  // the model's own attention: its mask applies whatever the logits choice
  return at::softmax(l.to(at::kFloat), -1);
}

torch::jit::Module load_script_module(const std::string& path_or_bytes, bool from_bytes, const at::Device& device) {
  try {
    if (from_bytes) {
      std::istringstream in(path_or_bytes);
      return torch::jit::load(in, device);
    }
    return torch::jit::load(path_or_bytes, device);
  } catch (const std::exception& e) {
    // c10::Error from the archive reader, but also torch::jit::ErrorReport (the TorchScript compiler on damaged
    // code records) and std::bad_alloc (a size field gone wrong): all mean a corrupt file (benchmarks/fuzz.py).
    auto* c10_error = dynamic_cast<const c10::Error*>(&e);
    throw std::invalid_argument(std::string("could not load a TorchScript model") +
                                (from_bytes ? " from bytes" : " from '" + path_or_bytes + "'") +
                                " (corrupt file, or not saved with torch.jit.save?): " +
                                first_line(c10_error ? c10_error->what_without_backtrace() : e.what()));
  }
}

CaptureModel::CaptureModel(const std::string& path_or_bytes, bool from_bytes, const std::string& device,
                           const std::string& dtype, const std::string& final_norm)
    : device_(parse_device(device)), dtype_(parse_dtype(dtype)) {
  module_ = load_script_module(path_or_bytes, from_bytes, device_);
  module_.eval();
  if (dtype_ != at::kFloat) {
    // Only floating state is cast: Module::to(dtype) would also turn integer buffers (position ids, index
    // tables of Hugging Face models) into floats, which then fail as indices.
    at::NoGradGuard no_grad;
    for (at::Tensor t : module_.parameters())
      if (t.is_floating_point() && t.scalar_type() != dtype_) t.set_data(t.to(dtype_));
    for (at::Tensor t : module_.buffers())
      if (t.is_floating_point() && t.scalar_type() != dtype_) t.set_data(t.to(dtype_));
  }
  if (!module_.find_method("forward"))
    throw std::invalid_argument("the TorchScript module has no forward method");
  layout_ = std::make_unique<const ModelLayout>(analyse_graph(module_, final_norm));
}


namespace {

// The tuple the rewritten graph returned, sorted into a CaptureResult by its taps; the stream shapes (sizes of
// the tokens entering each tapped attention block) go to stream_shapes.
CaptureResult read_taps(c10::ArrayRef<at::IValue> elems, const std::vector<TapSite>& taps,
                        std::map<int64_t, std::vector<int64_t>>& stream_shapes) {
  CaptureResult res;
  for (size_t i = 0; i < elems.size(); ++i) {
    const auto [tap, b] = taps.at(i);
    const at::IValue& v = elems[i];
    switch (tap) {
      case Tap::Logits:
        res.attention[b].kind = AttentionKind::Softmax;
        res.attention[b].logits = v.toTensor();
        break;
      case Tap::Query:
        res.attention[b].kind = AttentionKind::ScaledDotProduct;
        res.attention[b].q = v.toTensor();
        break;
      case Tap::Key:
        res.attention[b].k = v.toTensor();
        break;
      case Tap::Scale:
        res.attention[b].scale = v.isNone() ? 0.0 : v.toDouble();
        break;
      case Tap::Mask:
        if (!v.isNone()) res.attention[b].mask = v.toTensor();
        break;
      case Tap::StreamShape:
        stream_shapes[b] = v.toIntVector();
        break;
      case Tap::Probs:
        res.probs[b] = v.toTensor();
        break;
      case Tap::Tokens:
        res.tokens[b] = v.toTensor();
        break;
      case Tap::Distance:
        res.token_distances.push_back(v.toTensor());
        break;
      case Tap::Exit:
        if (!v.isTensor()) throw std::invalid_argument("the chosen exit output is not a tensor");
        res.exits[b] = v.toTensor();
        break;
      case Tap::ModelOutput:
        res.model_output = v;
        break;
      case Tap::PatchGrid: {
        const auto& t = v.toTensor();
        if (t.dim() == 4) res.patch_grid = {t.size(2), t.size(3)};
        break;
      }
    }
  }
  return res;
}

// A plain ViT attends over each image's whole token sequence: one attention batch row per image and as many keys
// as the tokens entering the block. Windowed attention (ViTDet, SAM) batches windows; channel attention (XCiT)
// attends over channels. Their logits are not ATTN-FIQA's, so they are refused.
void check_attention_spans_tokens(const AttentionCapture& a, const std::string& block_name, int64_t batch,
                                  const std::vector<int64_t>* stream_shape) {
  const at::Tensor& keys = a.kind == AttentionKind::Softmax ? a.logits : a.k;
  if (keys.dim() != 4) return;  // reported by check_attention_shapes
  if (keys.size(0) != batch)
    throw std::invalid_argument("not a plain ViT: the attention of block '" + block_name + "' runs on " +
                                std::to_string(keys.size(0)) + " sequences for " + std::to_string(batch) +
                                " images (windowed attention?); vitfiqa scores ViTs whose attention spans each "
                                "image's whole token sequence");
  if (!stream_shape) return;
  const auto& shape = *stream_shape;
  int64_t n_keys = a.kind == AttentionKind::Softmax ? keys.size(3) : keys.size(2);
  // batch-first [B,N,C], or sequence-first [N,B,C] (nn.MultiheadAttention)
  bool spans = shape.size() == 3 && ((shape[0] == batch && shape[1] == n_keys) || (shape[0] == n_keys && shape[1] == batch));
  if (!spans)
    throw std::invalid_argument("not a plain ViT: the attention of block '" + block_name + "' has " +
                                std::to_string(n_keys) + " keys but the tokens entering it have shape " +
                                c10::str(c10::IntArrayRef(shape)) + " (channel attention or token pooling?); vitfiqa scores ViTs "
                                "whose attention runs over the [B,N,C] token sequence");
}

// Checks the captured shapes; for fused attention, fills in the default scale, repeats grouped keys to the
// query heads (GQA) and records whether the logits include the mask.
void check_attention_shapes(AttentionCapture& a, int64_t b, const std::string& block_name, const std::string& attn_logits) {
  if (a.kind == AttentionKind::Softmax) {
    if (a.logits.dim() != 4 || a.logits.size(-1) != a.logits.size(-2))
      throw std::invalid_argument("not a plain ViT: the attention logits of block '" + block_name + "' have shape " +
                                  c10::str(a.logits.sizes()) + ", not [B,H,N,N] (heads folded into the batch, "
                                  "or windowed attention?)");
    return;
  }
  if (a.q.dim() != 4 || a.k.dim() != 4)
    throw std::invalid_argument("fused attention q/k of block " + std::to_string(b) + " are not [B,H,N,D]");
  if (a.scale == 0.0) a.scale = 1.0 / std::sqrt(static_cast<double>(a.q.size(-1)));
  a.mask_in_logits = attn_logits == "full";
  if (a.k.size(1) != a.q.size(1)) a.k = a.k.repeat_interleave(a.q.size(1) / a.k.size(1), 1);  // GQA
  if (a.mask && a.mask->scalar_type() == at::kBool)
    throw std::invalid_argument("boolean attention masks are not supported (logits would be -inf)");
}

}  // namespace

CaptureModel::~CaptureModel() = default;

const ModelInfo& CaptureModel::info() const { return layout_->info; }

const CaptureGraph& CaptureModel::graph(const CaptureRequest& request) {
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = cache_.find(request);
  if (it != cache_.end()) return *it->second;
  auto built = std::make_unique<const CaptureGraph>(
      rewrite_graph(*layout_, request, "__vitfiqa__.capture_" + std::to_string(cache_.size())));
  return *cache_.emplace(request, std::move(built)).first->second;
}

CaptureResult CaptureModel::run(const at::Tensor& images, const CaptureRequest& req) {
  check_images(images);
  const CaptureGraph& captured = graph(req);  // cached entries are never removed: the reference stays valid
  torch::jit::Stack stack{module_._ivalue(), images};
  {
    at::NoGradGuard no_grad;
    try {
      captured.fn->run(stack);
    } catch (const std::exception& e) {
      throw std::invalid_argument("the model's forward failed on input of shape " + c10::str(images.sizes()) + ": " +
                                  last_line(e.what()));
    }
  }
  std::map<int64_t, std::vector<int64_t>> stream_shapes;
  CaptureResult res = read_taps(stack.at(0).toTupleRef().elements().asArrayRef(), captured.taps, stream_shapes);
  for (auto& [b, a] : res.attention) {
    const std::string& name = layout_->info.block_names.at(b);
    auto shape = stream_shapes.find(b);
    check_attention_spans_tokens(a, name, images.size(0), shape == stream_shapes.end() ? nullptr : &shape->second);
    check_attention_shapes(a, b, name, req.attn_logits);
  }
  for (auto& [b, t] : res.tokens)
    if (t.dim() != 3)
      throw std::invalid_argument("block " + std::to_string(b) + " output has shape " + c10::str(t.sizes()) +
                                  ", expected [B,N,C]");
  return res;
}

void CaptureModel::check_images(const at::Tensor& images) const {
  if (!images.defined()) throw std::invalid_argument("images tensor is undefined");
  if (images.dim() != 4)
    throw std::invalid_argument("images must be a 4-D [B,3,H,W] tensor, got " + std::to_string(images.dim()) + "-D");
  if (images.size(0) == 0) throw std::invalid_argument("images batch is empty");
  if (images.size(1) != 3)
    throw std::invalid_argument("images must have 3 channels (RGB) in dim 1, got " + std::to_string(images.size(1)));
  if (images.scalar_type() != dtype_)
    throw std::invalid_argument(std::string("images dtype ") + c10::toString(images.scalar_type()) +
                                " does not match the model dtype " + c10::toString(dtype_));
  if (images.device() != device_)
    throw std::invalid_argument("images are on " + images.device().str() + " but the model is on " + device_.str());
}

at::IValue CaptureModel::forward(const at::Tensor& images) {
  check_images(images);
  at::NoGradGuard no_grad;
  return module_.forward({images});
}

at::IValue CaptureModel::attribute(const std::string& name) const {
  if (!module_.hasattr(name)) throw std::invalid_argument("the model has no attribute '" + name + "'");
  return module_.attr(name);
}

std::string CaptureModel::graph_for(const CaptureRequest& request) { return graph(request).graph->toString(); }

ScriptModel::ScriptModel(const std::string& path_or_bytes, bool from_bytes, const std::string& device,
                         const std::string& dtype)
    : device_(parse_device(device)), dtype_(parse_dtype(dtype)) {
  module_ = load_script_module(path_or_bytes, from_bytes, device_);
  module_.eval();
  if (dtype_ != at::kFloat) module_.to(dtype_);
  if (!module_.find_method("forward")) throw std::invalid_argument("the TorchScript module has no forward method");
}

at::IValue ScriptModel::forward(const at::Tensor& images) {
  if (!images.defined() || images.dim() != 4 || images.size(0) == 0)
    throw std::invalid_argument("images must be a non-empty 4-D [B,C,H,W] tensor");
  if (images.scalar_type() != dtype_)
    throw std::invalid_argument(std::string("images dtype ") + c10::toString(images.scalar_type()) +
                                " does not match the model dtype " + c10::toString(dtype_));
  if (images.device() != device_)
    throw std::invalid_argument("images are on " + images.device().str() + " but the model is on " + device_.str());
  at::NoGradGuard no_grad;
  try {
    return module_.forward({images});
  } catch (const std::exception& e) {
    throw std::invalid_argument("the model's forward failed on input of shape " + c10::str(images.sizes()) + ": " +
                                last_line(e.what()));
  }
}

}  // namespace vitfiqa
