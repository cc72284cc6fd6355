"""Give freed memory back to the operating system, and keep the garbage collector off
what lives as long as the process.

CPython frees objects into the C allocator, and glibc keeps freed heap pages for reuse. In a
worker that parses studies of very different sizes those pages fragment, and the resident
size creeps up with the number of studies synced rather than with the largest one. Asking
glibc to trim after each round keeps the peak at "baseline + the largest study in flight".
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
from collections.abc import Callable

_trim: Callable[[int], int] | None = None
try:
    _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    _trim = _libc.malloc_trim
except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to do
    _trim = None


def release_free_memory() -> None:
    if _trim is not None:
        _trim(0)


def settle_heap() -> None:
    """After start-up: move what exists now (modules, compiled mappings, FHIR models) out of
    the cyclic garbage collector's sight. Those objects live as long as the process, and
    each full collection walked all of them again: a quarter of a catch-up's CPU time."""
    gc.collect()
    gc.freeze()
