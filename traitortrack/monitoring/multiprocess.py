"""Prometheus across Hypercorn workers: one folder of metric files that every worker writes.

Set up by the runner before it spawns workers (prometheus-client reads
``PROMETHEUS_MULTIPROC_DIR`` when it is first imported), and told when a worker dies so its
gauges stop counting. Importing prometheus-client here would be too early: it is imported
only inside the functions.
"""

import os
import shutil
import tempfile
from pathlib import Path

VARIABLE = "PROMETHEUS_MULTIPROC_DIR"


def prepare() -> tuple[Path, bool]:
    """Point the variable at an empty folder; returns it and whether we created it.

    A folder given in the environment is emptied (files of a previous run would be added to
    this one's); otherwise a private one is made, so that two servers on one machine never
    share their files.
    """
    given = os.environ.get(VARIABLE)
    if given:
        path = Path(given)
        path.mkdir(parents=True, exist_ok=True)
        for stale in path.glob("*.db"):
            stale.unlink()
        return path, False
    path = Path(tempfile.mkdtemp(prefix="traitortrack-metrics-"))
    os.environ[VARIABLE] = str(path)
    return path, True


def worker_died(pid: int) -> None:
    """Drop a dead worker's live gauges (its counters and histograms keep counting)."""
    if os.environ.get(VARIABLE):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)


def remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
