"""Start or find the real PostgreSQL and Redis the tests run against.

This machine kind runs both before each session; where one is down, start it with the same
command the machine uses; where no PostgreSQL is installed at all, use the embedded pgserver.
"""

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

PG_HOST, PG_PORT = "127.0.0.1", 5432
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379


def port_open(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def _wait_for(host: str, port: int, seconds: float = 30) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if port_open(host, port):
            return True
        time.sleep(0.2)
    return False


def postgres_url() -> str:
    """A libpq URL for a superuser on a running server."""
    if url := os.environ.get("TEST_POSTGRES_URL"):
        return url
    local = f"postgresql://postgres@{PG_HOST}:{PG_PORT}/postgres"
    if port_open(PG_HOST, PG_PORT):
        return local
    clusters = glob.glob("/etc/postgresql/*")
    if shutil.which("pg_ctlcluster") and clusters:
        version = Path(sorted(clusters)[-1]).name
        subprocess.run(
            ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "start"], check=False
        )
        if _wait_for(PG_HOST, PG_PORT):
            return local
    import pgserver

    data = Path(tempfile.gettempdir()) / "traitortrack-test-pgdata"
    return pgserver.get_server(data, cleanup_mode="stop").get_uri()


def redis_url() -> str | None:
    """A Redis URL, or None when no redis-server can be had on this machine."""
    if url := os.environ.get("TEST_REDIS_URL"):
        return url
    url = f"redis://{REDIS_HOST}:{REDIS_PORT}/0"
    if port_open(REDIS_HOST, REDIS_PORT):
        return url
    if shutil.which("redis-server") is None:
        return None
    Path("/var/lib/redis").mkdir(parents=True, exist_ok=True)
    Path("/var/log/redis").mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            "redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "-::1",
            "--port", str(REDIS_PORT), "--save", "", "--appendonly", "no",
            "--dir", "/var/lib/redis", "--logfile", "/var/log/redis/ci.log",
        ],
        check=False,
    )  # fmt: skip
    return url if _wait_for(REDIS_HOST, REDIS_PORT) else None
