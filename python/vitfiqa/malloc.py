"""Keep freed memory in the process (glibc): no page-fault storm when a forward pass reuses its activations.

With glibc's default settings a block above the dynamic mmap threshold is returned to the operating system
when it is freed, and the heap top is trimmed as soon as 128 kB are free; a ViT's forward pass frees and
reallocates the same 10-40 MB activation buffers in every batch, so each batch faults those pages back in
(measured with the default settings: about 30% of a vit_s forward on a 2-core VM). :func:`keep_freed_memory`
tells glibc (``mallopt``) to serve blocks up to 32 MiB (glibc's maximum for this setting) from the heap and to
keep up to 1 GiB of free memory at its top, so freed activations are reused.

The CLI calls it at start-up. It is a no-op (returns ``False``) off glibc (macOS, Windows, musl), when
``VITFIQA_MALLOC=default`` is set, and for each setting the user already chose through glibc's own
environment variables (``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``, ``MALLOC_TOP_PAD_`` or
``GLIBC_TUNABLES``), which win. The price: the process keeps its peak heap (resident memory does not shrink
after a large batch) until it exits.
"""
from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3

SETTINGS = {  # mallopt parameter: (value, glibc's environment variable for it)
    M_MMAP_THRESHOLD: (32 << 20, "MALLOC_MMAP_THRESHOLD_"),
    M_TRIM_THRESHOLD: (1 << 30, "MALLOC_TRIM_THRESHOLD_"),
    M_TOP_PAD: (64 << 20, "MALLOC_TOP_PAD_"),
}
NOTE = "glibc mallopt: M_MMAP_THRESHOLD 32 MiB, M_TRIM_THRESHOLD 1 GiB, M_TOP_PAD 64 MiB"

_applied: bool | None = None


def _glibc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # glibc only (musl has no such function)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return None
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return mallopt


def keep_freed_memory() -> bool:
    """Apply the settings above once per process; returns whether they are in effect (see the module doc)."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if os.environ.get("VITFIQA_MALLOC", "").strip().lower() in ("default", "off", "0", "no"):
        return False
    mallopt = _glibc()
    if mallopt is None:
        return False
    user_tunables = "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", "")
    ok = True
    for param, (value, env) in SETTINGS.items():
        if env in os.environ or user_tunables:
            continue  # the user's own setting wins
        ok = bool(mallopt(param, value)) and ok
    _applied = ok
    return ok


__all__ = ["keep_freed_memory", "NOTE", "SETTINGS"]
