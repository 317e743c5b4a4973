"""Freed native memory goes back to the OS (glibc), so a long-running server's RSS stays flat."""

from __future__ import annotations

import ctypes
import ctypes.util
import time

import psutil
import pytest

from qwen_core.memory import _LIBC, Trimmer, trim_free_memory

pytestmark = pytest.mark.skipif(_LIBC is None, reason="glibc's malloc_trim is not available here")

MB = 1 << 20


def _rss() -> int:
    return psutil.Process().memory_info().rss


def test_trim_returns_fragmented_free_memory():
    """What decoding leaves behind: many small blocks freed, a few kept alive among them, so
    the heap cannot shrink from its top. Without a trim those pages stay in RSS."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    blocks = [libc.malloc(4096) for _ in range(60_000)]  # ~240 MB below the mmap threshold
    for b in blocks:
        ctypes.memset(b, 1, 4096)  # touch: the pages are resident
    kept = blocks[::500]
    for i, b in enumerate(blocks):
        if i % 500:
            libc.free(b)
    try:
        before = _rss()
        assert trim_free_memory()
        after = _rss()
        assert before - after > 150 * MB, (before / MB, after / MB)
    finally:
        for b in kept:
            libc.free(b)


def test_trimmer_is_rate_limited():
    t = Trimmer(interval=3600)
    assert not t.maybe_trim()
    assert t.seconds_until_due() > 3500
    assert t.maybe_trim(force=True) and t.trims == 1
    assert not t.maybe_trim()


def test_the_batcher_trims_once_it_goes_idle(engine):
    """After the last reply ends the batcher trims (once the rate limit allows) and then sleeps."""
    batcher = engine.batcher
    batcher.trimmer.interval = 0.2
    try:
        before = batcher.trimmer.trims
        assert engine.chat("Hello", max_new_tokens=3, do_sample=False)
        deadline = time.monotonic() + 10
        while batcher.trimmer.trims == before and time.monotonic() < deadline:
            time.sleep(0.05)
        assert batcher.trimmer.trims > before
        time.sleep(0.6)  # idle: no trim loop while nothing happens
        settled = batcher.trimmer.trims
        time.sleep(0.6)
        assert batcher.trimmer.trims == settled
        assert batcher.stats()["rows"] == 0
    finally:
        batcher.trimmer.interval = 30.0
