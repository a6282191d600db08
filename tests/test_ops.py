"""The registered TorchScript ops vitfiqa::patch_step_distance(_ln): their registration per dispatch key, checked
with torch.library.opcheck, and their values against plain PyTorch."""
import pytest
import torch
import torch.nn.functional as F
from torch.library import opcheck

import vitfiqa  # noqa: F401  (loads vitfiqa._core, which registers the ops)

DIST = torch.ops.vitfiqa.patch_step_distance.default
DIST_LN = torch.ops.vitfiqa.patch_step_distance_ln.default
EPS = 1e-5

# opcheck's four checks: schema (no mutation or aliasing), autograd registration, fake-tensor (Meta) kernel,
# AOTAutograd with dynamic shapes.
ALL_CHECKS = ("test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")
# With inputs that require grad, test_aot_dispatch_dynamic runs backward through the op in eager mode as its
# reference, which raises by design (the ops are registered as not differentiable); the other three still apply.
GRAD_CHECKS = ("test_schema", "test_autograd_registration", "test_faketensor")


def tokens(shape, dtype, seed, strided=False):
    g = torch.Generator().manual_seed(seed)
    b, n, c = shape
    t = torch.randn(b, n + 1, c, generator=g, dtype=dtype) * 3 + 1
    return t[:, 1:] if strided else t[:, :n].contiguous()  # strided: a prefix token sliced off, as the graph does


def norm_parameters(c, dtype, which):
    g = torch.Generator().manual_seed(7)
    weight = torch.rand(c, generator=g, dtype=dtype) + 0.5 if which in ("both", "weight") else None
    bias = torch.randn(c, generator=g, dtype=dtype) if which in ("both", "bias") else None
    return weight, bias


def reference(a, b, weight=None, bias=None, eps=None):
    """The definition in plain PyTorch, in float64 on the float32 values the kernels read."""
    def f64(t):
        return None if t is None else t.float().double()

    a, b = f64(a), f64(b)
    if eps is not None:
        a = F.layer_norm(a, a.shape[-1:], f64(weight), f64(bias), eps)
        b = F.layer_norm(b, b.shape[-1:], f64(weight), f64(bias), eps)
    return torch.linalg.vector_norm(F.normalize(a, dim=-1) - F.normalize(b, dim=-1), dim=-1)


SHAPES = [((2, 5, 8), False), ((3, 9, 40), True), ((1, 1, 3), False)]
DTYPES = [torch.float32, torch.float64]
NORMS = ["both", "none", "weight", "bias"]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,strided", SHAPES)
def test_patch_step_distance(shape, strided, dtype):
    a, b = tokens(shape, dtype, 0, strided), tokens(shape, dtype, 1, strided)
    out = DIST(a, b)
    assert out.dtype == torch.float64 and out.shape == shape[:2]
    torch.testing.assert_close(out, reference(a, b), rtol=1e-6, atol=1e-9)
    opcheck(DIST, (a, b), test_utils=ALL_CHECKS)


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,strided", SHAPES[:2])
def test_patch_step_distance_ln(shape, strided, dtype, norm):
    a, b = tokens(shape, dtype, 2, strided), tokens(shape, dtype, 3, strided)
    weight, bias = norm_parameters(shape[2], dtype, norm)
    out = DIST_LN(a, b, weight, bias, EPS)
    assert out.dtype == torch.float64 and out.shape == shape[:2]
    torch.testing.assert_close(out, reference(a, b, weight, bias, EPS), rtol=1e-6, atol=1e-9)
    opcheck(DIST_LN, (a, b, weight, bias, EPS), test_utils=ALL_CHECKS)


def test_ops_with_inputs_that_require_grad():
    a, b = tokens((2, 5, 8), torch.float32, 4), tokens((2, 5, 8), torch.float32, 5)
    weight, bias = norm_parameters(8, torch.float32, "both")
    opcheck(DIST, (a.requires_grad_(), b), test_utils=GRAD_CHECKS)
    opcheck(DIST_LN, (a, b, weight.requires_grad_(), bias, EPS), test_utils=GRAD_CHECKS)
    # Not differentiable: a backward through either op raises instead of silently dropping its gradient.
    with pytest.raises(RuntimeError, match="derivative for vitfiqa::patch_step_distance is not implemented"):
        DIST(a, b).sum().backward()
    with pytest.raises(RuntimeError, match="derivative for vitfiqa::patch_step_distance_ln is not implemented"):
        DIST_LN(a, b, weight, bias, EPS).sum().backward()
    # Without grad mode (the capture graph runs under no_grad) the outputs are plain tensors.
    with torch.no_grad():
        assert not DIST(a, b).requires_grad


@pytest.mark.parametrize("op", ["patch_step_distance", "patch_step_distance_ln"])
def test_one_kernel_per_dispatch_key(op):
    name = f"vitfiqa::{op}"
    for key in ("CPU", "CUDA", "Meta", "Autograd"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(name, key), key
    # No catch-all kernel beside the per-key ones (the old registration put one kernel, branching on the device,
    # under CompositeImplicitAutograd).
    assert not torch._C._dispatch_has_kernel_for_dispatch_key(name, "CompositeImplicitAutograd")


def test_cuda_kernel_arithmetic_on_cpu_tensors():
    """The CUDA kernel (tensor ops) reached by redispatching to the CUDA key with CPU tensors: its arithmetic,
    not its run on a GPU (no GPU here). It keeps unit vectors in float32, hence the looser tolerance."""
    cuda = torch._C.DispatchKeySet(torch._C.DispatchKey.CUDA)
    a, b = tokens((3, 9, 40), torch.float32, 6, strided=True), tokens((3, 9, 40), torch.float32, 7, strided=True)
    weight, bias = norm_parameters(40, torch.float32, "both")
    torch.testing.assert_close(DIST.redispatch(cuda, a, b), reference(a, b), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(DIST_LN.redispatch(cuda, a, b, weight, bias, EPS), reference(a, b, weight, bias, EPS),
                               rtol=1e-5, atol=1e-6)


def test_meta_kernel_gives_shape_and_dtype():
    a, b = torch.empty(4, 7, 16, device="meta"), torch.empty(4, 7, 16, device="meta")
    for out in (DIST(a, b), DIST_LN(a, b, torch.empty(16, device="meta"), None, EPS)):
        assert out.device.type == "meta" and out.shape == (4, 7) and out.dtype == torch.float64


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_bad_inputs_raise(device):
    a = torch.zeros(2, 5, 8, device=device)
    with pytest.raises(RuntimeError, match=r"must be \[B,N,C\] of one shape"):
        DIST(a, torch.zeros(2, 4, 8, device=device))
    with pytest.raises(RuntimeError, match=r"must be \[B,N,C\] of one shape"):
        DIST(a[0], a[0])
    with pytest.raises(RuntimeError, match="weight must be 1-D with the tokens' 8 channels"):
        DIST_LN(a, a, torch.ones(7, device=device), None, EPS)
    with pytest.raises(RuntimeError, match="bias must be 1-D with the tokens' 8 channels"):
        DIST_LN(a, a, None, torch.ones(2, 8, device=device), EPS)


@pytest.mark.parametrize("prefix_slice", [False, True])
def test_step_distance_ops_match_definition(prefix_slice):
    """Both registered TorchScript ops against the definition, incl. strided input and no-affine norm."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(3, 9, 40, generator=g) * 3 + 1, torch.randn(3, 9, 40, generator=g)
    if prefix_slice:
        a, b = a[:, 1:], b[:, 1:]
    w, bias = torch.rand(40, generator=g) + 0.5, torch.randn(40, generator=g)

    def unit(t):
        return torch.nn.functional.normalize(t.double(), dim=-1)

    plain = torch.ops.vitfiqa.patch_step_distance(a, b)
    torch.testing.assert_close(plain.double(), torch.linalg.vector_norm(unit(a) - unit(b), dim=-1).double(), rtol=1e-6,
                               atol=0)
    for weight, bb in ((w, bias), (None, None)):
        ln = lambda t: torch.nn.functional.layer_norm(t.double(), (40,), None if weight is None else weight.double(),
                                                      None if bb is None else bb.double(), 1e-5)  # noqa: E731
        fused = torch.ops.vitfiqa.patch_step_distance_ln(a, b, weight, bb, 1e-5)
        torch.testing.assert_close(fused.double(), torch.linalg.vector_norm(unit(ln(a)) - unit(ln(b)), dim=-1).double(),
                                   rtol=1e-6, atol=0)
