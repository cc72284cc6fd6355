"""Give freed memory back to the operating system.

CPython frees objects into the C allocator, and glibc keeps freed heap pages for reuse. In a
worker that parses studies of very different sizes those pages fragment, and the resident
size creeps up with the number of studies synced rather than with the largest one. Asking
glibc to trim after each round keeps the peak at "baseline + the largest study in flight".
"""

from __future__ import annotations

import ctypes
import ctypes.util
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
