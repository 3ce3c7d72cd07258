"""What makes in-process inference fast on a CPU beyond the engine's own structure.

Two things; bench/engine_parts.py measures each against the plain way in one run:

- Linear layers run on oneDNN-prepacked bf16 weights while the engine works. oneDNN reorders a
  plain [out, in] weight into its blocked layout inside every matmul call, and at the small
  row counts of decoding that reorder is a large part of the call (the embedded model's
  49152 x 576 LM head at 128 rows: 7.7 ms plain, 3.7 ms prepacked, same results). Each weight
  is packed once per weight version (an optimizer step bumps it, and the next use repacks),
  and nn.Linear.forward goes through the packed op only inside `packed_linears(model)`;
  outside, the model is untouched, so training never sees a packed weight.
- The C allocator keeps freed memory for reuse. By default glibc hands big freed blocks back to
  the kernel, and each new activation or logits buffer of a few MB is page-faulted in again
  (one 128-prompt batch: 644k page faults and 17.0 s, against 216k and 15.6 s).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import sys

import torch

# A packed copy doubles the memory of the linear weights. It pays most for big models, whose
# plain path reorders gigabytes of weights in every decode step (the 1.5B feedback model
# decoded several times faster packed, in a one-off measurement not yet in bench/); past 8 GB
# of weights the copy is not made.
MAX_PACKED_BYTES = 8 * 1024 ** 3
# The row count oneDNN tunes the layout for; packed weights serve any row count.
_ROWS_HINT = 128


def supported() -> bool:
    return (torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.mkldnn, "_linear_pointwise")
            and hasattr(torch.ops.mkldnn, "_reorder_linear_weight"))


def _packable(model) -> list[torch.nn.Linear]:
    if not supported():
        return []
    linears = [m for m in model.modules() if type(m) is torch.nn.Linear
               and m.weight.device.type == "cpu" and m.weight.dtype == torch.bfloat16]
    size = sum(m.weight.numel() * m.weight.element_size() for m in linears)
    return linears if size <= MAX_PACKED_BYTES else []


@contextlib.contextmanager
def packed_linears(model):
    """Inside this block (inference only) the model's bf16 CPU linears use packed weights.
    Nested blocks leave the outer block's routing in place."""
    linears = [m for m in _packable(model) if "forward" not in m.__dict__]
    store = model.__dict__.setdefault("_cai_packed_weights", {})
    for m in linears:
        # an instance attribute: this module only, removed on the way out
        m.forward = functools.partial(_packed_forward, m, store)
    try:
        yield
    finally:
        for m in linears:
            m.__dict__.pop("forward", None)


def _packed_forward(m: torch.nn.Linear, store: dict, x: torch.Tensor) -> torch.Tensor:
    w = m.weight
    version = (w.data_ptr(), w._version)
    entry = store.get(m)
    if entry is None or entry[0] != version:
        entry = store[m] = (version, torch.ops.mkldnn._reorder_linear_weight(w.detach(),
                                                                               _ROWS_HINT))
    bias = None if m.bias is None else m.bias.detach()
    return torch.ops.mkldnn._linear_pointwise(x, entry[1], bias, "none", [], "")


# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3


@functools.cache
def keep_freed_memory() -> None:
    """Ask glibc to serve blocks up to 32 MB (its maximum) from the heap and not to trim it.

    Process-wide and once; the cost is that the process keeps its peak heap. Elsewhere than
    glibc on Linux this does nothing."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return
    mallopt(_M_MMAP_THRESHOLD, 32 * 1024 ** 2)
    mallopt(_M_TRIM_THRESHOLD, 1024 ** 3)
    mallopt(_M_TOP_PAD, 64 * 1024 ** 2)
