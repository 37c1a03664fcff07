"""The embedded PostgreSQL of the zero-configuration default, from the ``pgserver`` package.

It is a real PostgreSQL server (pip-installed binaries), so development runs the same SQL as
production. Its data lives in ``<data_dir>/pgdata``; it stops when the last process using it exits.
"""

import logging
from pathlib import Path

log = logging.getLogger(__name__)


def start_embedded_postgres(data_dir: Path) -> str:
    """Start (or join) the embedded server and return its connection URL."""
    import pgserver  # imported here: only the embedded default needs it

    pgdata = (data_dir / "pgdata").resolve()
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    log.info("starting embedded PostgreSQL", extra={"pgdata": str(pgdata)})
    server = pgserver.get_server(pgdata, cleanup_mode="stop")
    return server.get_uri()
