"""Put on ``PYTHONPATH`` by ``python -m bench idle --trace``: a process started with tracemalloc
on (``PYTHONTRACEMALLOC``) writes a snapshot into ``$TT_TRACE_DIR`` on each SIGUSR1."""

import os
import signal
import tracemalloc
from pathlib import Path
from types import FrameType

if tracemalloc.is_tracing() and "TT_TRACE_DIR" in os.environ:
    _taken = 0

    def _snapshot(_signal: int, _frame: FrameType | None) -> None:
        global _taken
        _taken += 1
        path = Path(os.environ["TT_TRACE_DIR"]) / f"snapshot-{os.getpid()}-{_taken}"
        tracemalloc.take_snapshot().dump(str(path.with_suffix(".part")))
        path.with_suffix(".part").rename(path)  # whole, or not there

    signal.signal(signal.SIGUSR1, _snapshot)
