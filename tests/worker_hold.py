"""Holding the decode worker: prompts submitted meanwhile queue up, as behind a long prefill."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator


@contextlib.contextmanager
def worker_held(batcher, timeout: float = 30.0) -> Iterator[None]:
    """Keep ``batcher``'s worker busy with one job until the block ends.

    The block starts only once the worker is inside the job (starting the thread that submits it
    does not say so), so every prompt submitted in the block waits for its end."""
    entered, release = threading.Event(), threading.Event()
    holder = threading.Thread(target=batcher.run_exclusive, args=(lambda: (entered.set(), release.wait(timeout)),))
    holder.start()
    try:
        assert entered.wait(timeout), "the decode worker never ran the holding job"
        yield
    finally:
        release.set()
        holder.join(timeout)
