"""Tolerances for float32 results that depend on the batch size, from a float32 error bound.

Why: the GEMM kernels block a batch differently for different batch sizes, and differently on different
CPUs (AVX2, AVX-512, NEON), so the same image scored in two batch sizes gives float32 results that differ in
their last bits, by an amount that depends on the machine. A relative tolerance tuned on one machine fails on
another (a value near zero has a large relative difference from a tiny absolute one). The bound used here is
the textbook one for inner products: a float32 dot product of n terms is off by at most
gamma_n * sum|a_i b_i|, gamma_n = n u / (1 - n u), u = 2**-24 (Higham, Accuracy and Stability of Numerical
Algorithms, 3.1). Chaining the network's layers, n is at most the summed fan-in of every linear map on the
path, and sum|a_i b_i| is at most the scale of the values being compared. Both runs are off from the exact
value by at most that much, so they differ by at most twice the bound. A real defect (a wrong image, a
wrong block, a missing norm) changes results by orders of magnitude more.
"""
from __future__ import annotations

import numpy as np
import torch

U32 = 2.0 ** -24


def gamma(n: int) -> float:
    assert n * U32 < 1
    return n * U32 / (1 - n * U32)


def accumulation_length(model: torch.nn.Module) -> int:
    """Summed fan-in of every weight matrix or kernel (Linear, Conv: prod(shape[1:])), an upper bound of the
    inner-product length along any path through the network, plus the attention products' length per
    attention module (twice the widest fan-in stands in for tokens and head width). Works on eager modules and
    on loaded TorchScript modules alike (it reads parameters and module type names only)."""
    n, widest = 0, 1
    for name, weight in model.named_parameters():
        if name.endswith("weight") and weight.dim() >= 2:
            fan_in = int(np.prod(weight.shape[1:]))
            n += fan_in
            widest = max(widest, fan_in)
    for m in model.modules():
        kind = getattr(m, "original_name", type(m).__name__)
        if "attention" in kind.lower():
            n += 2 * widest
    return n


def assert_batch_close(got, want, model: torch.nn.Module, what: str = "") -> None:
    """got and want: the same float32 quantity per image from two batchings; equal within twice the float32
    bound for the model's accumulation length, relative to the largest magnitude in the column."""
    got = np.asarray(got.detach().cpu() if isinstance(got, torch.Tensor) else got, dtype=np.float64)
    want = np.asarray(want.detach().cpu() if isinstance(want, torch.Tensor) else want, dtype=np.float64)
    assert got.shape == want.shape, (got.shape, want.shape)
    scale = max(float(np.abs(want).max(initial=0.0)), float(np.abs(got).max(initial=0.0)), np.finfo(np.float32).tiny)
    bound = 2 * gamma(accumulation_length(model)) * scale
    diff = float(np.abs(got - want).max(initial=0.0))
    assert diff <= bound, f"{what}: batch-dependent difference {diff:.3g} exceeds the float32 bound {bound:.3g}"
