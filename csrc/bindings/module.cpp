// vitfiqa._core: one bind_* call per concern (bindings.h).
#include "bindings/bindings.h"

PYBIND11_MODULE(_core, m) {
  m.doc() = "vitfiqa C++ core: TorchScript graph capture and quality-method kernels";
  vitfiqa::bind_config(m);
  vitfiqa::bind_models(m);
  vitfiqa::bind_scoring(m);
}
