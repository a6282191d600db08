"""A model's input contract: the image size, channel order and normalisation it expects, stored in its TorchScript
file as a small JSON extra file (:data:`INPUT_CONTRACT_FILE`).

:func:`export_torchscript` writes it, :func:`read_input_contract` reads it (from the zip directory, nothing
unpickled) and :func:`check_input_contract` validates it. The API (:class:`vitfiqa.QualityModel`), the
recogniser (:class:`vitfiqa.recognizer.Recognizer`) and the model builders (:mod:`vitfiqa.models`,
:mod:`vitfiqa.fr_models`) all build on this module; it builds only on :mod:`vitfiqa.preprocess`.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .preprocess import DEFAULT_IMAGE_SIZE, check_channel_order

INPUT_CONTRACT_FILE = "vitfiqa_input.json"  # name of the TorchScript extra file holding the input contract


def check_input_contract(contract: dict) -> dict:
    """Validate an input contract -> its canonical form: ``image_size`` [H, W] (positive ints),
    ``channel_order`` "rgb" | "bgr", ``normalization`` {"mean": [3 floats], "std": [3 positive floats]}
    (applied to x/255 per channel, in the model's channel order)."""
    if not isinstance(contract, dict):
        raise ValueError("the input contract must be a dict")
    unknown = set(contract) - {"image_size", "channel_order", "normalization"}
    if unknown:
        raise ValueError(f"unknown input contract keys {sorted(unknown)}")
    out: dict = {}
    if "image_size" in contract:
        size = contract["image_size"]
        size = [size, size] if isinstance(size, int) else list(size)
        if len(size) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size):
            raise ValueError(f"image_size must be a positive int or [H, W], got {contract['image_size']!r}")
        out["image_size"] = size
    if "channel_order" in contract:
        out["channel_order"] = check_channel_order(contract["channel_order"])
    if "normalization" in contract:
        norm = contract["normalization"]
        ok = isinstance(norm, dict) and set(norm) == {"mean", "std"} and all(
            isinstance(norm[k], (list, tuple)) and len(norm[k]) == 3
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in norm[k]) for k in norm)
        if not ok or not all(v > 0 for v in norm["std"]):
            raise ValueError("normalization must be {'mean': [3 numbers], 'std': [3 positive numbers]}")
        out["normalization"] = {"mean": [float(v) for v in norm["mean"]], "std": [float(v) for v in norm["std"]]}
    return out


def read_input_contract(model) -> Optional[dict]:
    """The input contract stored in a TorchScript file (path or bytes) by :func:`export_torchscript`, or None.

    Read straight from the archive's zip directory as JSON; nothing in the file is unpickled or executed."""
    import io
    import json
    import zipfile

    try:
        zf = zipfile.ZipFile(io.BytesIO(bytes(model)) if isinstance(model, (bytes, bytearray)) else model)
    except (zipfile.BadZipFile, OSError):
        return None  # not a zip archive: the loader reports what is wrong with the file
    except Exception as exc:  # a damaged zip directory (benchmarks/fuzz.py: NotImplementedError, UnicodeDecodeError)
        raise ValueError(f"the model file's zip directory is damaged ({type(exc).__name__}: {exc})") from None
    with zf:
        names = [n for n in zf.namelist() if n.endswith("/extra/" + INPUT_CONTRACT_FILE)]
        if not names:
            return None
        info = zf.getinfo(names[0])
        if info.file_size > 1 << 16:
            raise ValueError(f"the model's {INPUT_CONTRACT_FILE} is {info.file_size} bytes; an input contract is a "
                             "few hundred")
        try:
            data = zf.read(info)
        except Exception as exc:  # damaged record: bad CRC, zlib.error, EOFError, unsupported compression ...
            raise ValueError(f"the model's {INPUT_CONTRACT_FILE} record is damaged ({type(exc).__name__}: {exc})") \
                from None
        try:
            contract = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise ValueError(f"the model's {INPUT_CONTRACT_FILE} is not valid JSON: {exc}") from None
    try:
        return check_input_contract(contract)
    except ValueError as exc:
        raise ValueError(f"the model's {INPUT_CONTRACT_FILE} is invalid: {exc}") from None


def export_torchscript(model: nn.Module, path: str, method: str = "script", example: Optional[torch.Tensor] = None,
                       input_contract: Optional[dict] = None) -> str:
    """Save ``model`` (in eval mode) as TorchScript for :func:`vitfiqa.load`: ``script`` or ``trace``
    (tracing needs an ``example`` batch, default a random pair at the contract's image size, else the standard
    :data:`vitfiqa.preprocess.DEFAULT_IMAGE_SIZE`).

    ``input_contract`` (see :func:`check_input_contract`) is stored as a small JSON extra file in the
    TorchScript archive; :func:`vitfiqa.load`, the CLI, the file pipeline and Ray read it, so a user need not
    guess the model's image size, channel order or normalisation."""
    import json
    import warnings

    contract = check_input_contract(input_contract) if input_contract is not None else None
    extra = {INPUT_CONTRACT_FILE: json.dumps(contract, sort_keys=True)} if contract is not None else {}
    model = model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.* deprecation notices
        if method == "script":
            ts = torch.jit.script(model)
        elif method == "trace":
            if example is None:
                h, w = (contract or {}).get("image_size", DEFAULT_IMAGE_SIZE)
                example = torch.randn(2, 3, h, w)
            ts = torch.jit.trace(model, example)
        else:
            raise ValueError("method must be 'script' or 'trace'")
    ts.save(path, _extra_files=extra)
    return path


__all__ = ["INPUT_CONTRACT_FILE", "check_input_contract", "read_input_contract", "export_torchscript"]
