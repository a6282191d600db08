// The pybind11 surface of vitfiqa._core, cut by concern; module.cpp calls each bind_* once, in this order.
// Models are passed as paths or bytes, never as ScriptModule objects (pybind11 ABI).
#pragma once

#include <pybind11/pybind11.h>

namespace vitfiqa {

void bind_config(pybind11::module_& m);   // ScoreConfig and its sections (config.cpp)
void bind_models(pybind11::module_& m);   // CaptureRequest, CaptureModel, ScriptModel (models.cpp)
void bind_scoring(pybind11::module_& m);  // methods, Scorer, ScoreResult, fuse_exits, render_heatmaps (scoring.cpp)

}  // namespace vitfiqa
