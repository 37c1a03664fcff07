"""What the live benchmarks share: the app as a ``traitortrack serve`` process on a scratch
database, sign-in, and a dispatcher's scanning socket."""

import asyncio
import base64
import contextlib
import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import psutil
import websockets

from traitortrack.config import Settings
from traitortrack.db.engine import create_engine
from traitortrack.db.migrate import migrate
from traitortrack.domain.roles import Role
from traitortrack.services.users import create_user

AREAS = ("lucknow", "indore", "jaipur", "hisar", "sri_ganganagar", "sangaria", "bathinda",
         "raipur", "ranchi", "akola")  # fmt: skip
PASSWORD = "Bench-pass1"
PARENT_CODES = 99_999
PARENTS_PER_SCANNER = 8  # a scanner rotates over its parents: neighbours rarely share a lock
ROOT = Path(__file__).resolve().parents[1]
_CSRF_FIELD = re.compile(r'name="csrf_token" value="([^"]+)"')


# The server --------------------------------------------------------------------------------


def worker_processes(runner_pid: int) -> list[psutil.Process]:
    """The workers of a ``traitortrack serve``: forked by the runner's fork server, so the
    runner's grandchildren (one killed and not yet reaped, a zombie, is left out)."""
    found = []
    with contextlib.suppress(psutil.Error):
        for child in psutil.Process(runner_pid).children():
            for worker in child.children():
                with contextlib.suppress(psutil.Error):
                    if worker.status() != psutil.STATUS_ZOMBIE:
                        found.append(worker)
    return found


class CpuLimit:
    """A CPU cgroup that caps the processes started in it (a server and its workers) at
    ``cores`` of a CPU, so that a benchmark measures what a server does with a known share of
    the machine, not what is left of it after the load generator and the database."""

    PERIOD_US = 10_000  # a short period: a capped server is paused for at most a few ms at once

    def __init__(self, cores: float) -> None:
        v1 = Path("/sys/fs/cgroup/cpu")
        v2 = Path("/sys/fs/cgroup")
        quota = max(1_000, round(cores * self.PERIOD_US))
        name = f"traitortrack-bench-{uuid.uuid4().hex[:8]}"
        try:
            if (v1 / "cpu.cfs_quota_us").exists():
                self.path = v1 / name
                self.path.mkdir()
                (self.path / "cpu.cfs_period_us").write_text(str(self.PERIOD_US))
                (self.path / "cpu.cfs_quota_us").write_text(str(quota))
            elif "cpu" in (v2 / "cgroup.controllers").read_text().split():
                (v2 / "cgroup.subtree_control").write_text("+cpu")
                self.path = v2 / name
                self.path.mkdir()
                (self.path / "cpu.max").write_text(f"{quota} {self.PERIOD_US}")
            else:
                raise OSError("no cgroup CPU controller")
        except OSError as error:
            raise RuntimeError(
                f"capping a server's CPU needs a cgroup CPU controller it may write to (run as "
                f"root): {error}. Pass --worker-cpu 0 to measure without a cap."
            ) from error

    def enter(self) -> None:
        """Move the calling process into the cgroup (a child, before it runs the server)."""
        (self.path / "cgroup.procs").write_text(str(os.getpid()))

    def remove(self) -> None:
        """Remove the cgroup once the processes killed in it have left it."""
        deadline = time.monotonic() + 10
        while True:
            try:
                self.path.rmdir()
                return
            except OSError:
                if time.monotonic() > deadline:
                    return
                time.sleep(0.1)


class Server:
    def __init__(
        self,
        env: dict[str, str],
        workers: int,
        log: Path,
        asgi_app: str | None = None,
        cpu_cores: float = 0.0,
    ) -> None:
        """``traitortrack serve``, or plain Hypercorn serving ``asgi_app`` ("module:name");
        capped at ``cpu_cores`` of a CPU if given."""
        with socket_port() as port:
            self.port = port
        self.env, self.log = env, log  # another app process on the same database takes ``env``
        self.cpu = cpu = CpuLimit(cpu_cores) if cpu_cores else None
        serve = (["traitortrack", "serve", "--workers", str(workers)] if asgi_app is None
                 else ["hypercorn", "--worker-class", "uvloop", asgi_app])  # fmt: skip
        self.process = subprocess.Popen(
            [sys.executable, "-m", *serve, "--bind", f"127.0.0.1:{self.port}"],
            env=env, cwd=ROOT, stdout=log.open("ab"), stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=cpu.enter if cpu else None,
        )  # fmt: skip

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def ready(self, seconds: float = 60) -> None:
        deadline = time.monotonic() + seconds
        async with httpx.AsyncClient(timeout=2) as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"the server exited; see {self.log}")
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(f"{self.base}/ready")).status_code == 200:
                        return
                await asyncio.sleep(0.2)
        raise RuntimeError(f"the server was not ready in {seconds} s; see {self.log}")

    def processes(self) -> list[psutil.Process]:
        """The runner and its spawned workers."""
        root = psutil.Process(self.process.pid)
        return [root, *root.children(recursive=True)]

    def workers(self) -> list[psutil.Process]:
        return worker_processes(self.process.pid)

    def cpu_seconds(self) -> float:
        total = 0.0
        for process in self.processes():
            with contextlib.suppress(psutil.NoSuchProcess):
                times = process.cpu_times()
                total += times.user + times.system
        return total

    def rss_mb(self) -> float:
        total = 0
        for process in self.processes():
            with contextlib.suppress(psutil.NoSuchProcess):
                total += process.memory_info().rss
        return total / 2**20

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, 9)
        self.process.wait(10)
        if self.cpu is not None:
            self.cpu.remove()


@contextlib.contextmanager
def socket_port() -> Any:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def machine_busy() -> tuple[int, int]:
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


async def login(base: str, username: str) -> str:
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        token = _CSRF_FIELD.search((await client.get("/login")).text)
        assert token, "no csrf field on /login"
        response = await client.post(
            "/login", data={"username": username, "password": PASSWORD, "csrf_token": token[1]}
        )
        assert response.status_code in {302, 303}, response.text[:200]
        return "; ".join(f"{k}={v}" for k, v in client.cookies.items())


def scanner_name(area: str) -> str:
    """One dispatcher per area (sign-ins are rate limited per address); sockets share them."""
    return f"scanner_{area}"


async def start_server(
    database_url: str,
    directory: Path,
    workers: int,
    redis_url: str | None,
    cpu_cores: float = 0.0,
) -> Server:
    """Migrate the scratch database, add the bench's users, start the app (capped at
    ``cpu_cores`` of a CPU if given) and wait for it."""
    engine = create_engine(Settings(database_url=database_url))
    await migrate(engine)
    await create_user(engine, "wall", PASSWORD, Role.SUPERVISOR, None, 4)
    for area in AREAS:
        await create_user(engine, scanner_name(area), PASSWORD, Role.DISPATCHER, area, 4)
    await engine.dispose()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("TRAITORTRACK_", "REDIS_", "PROMETHEUS_"))}  # fmt: skip
    env |= {
        "DATABASE_URL": database_url,
        "ADMIN_PASSWORD": PASSWORD,
        "SESSION_SECRET": "bench-secret-" + "b" * 40,
        "TRAITORTRACK_DATA_DIR": str(directory),
        "MIGRATE_ON_START": "0",
        "PYTHONUNBUFFERED": "1",
        # One scanner account per area drives hundreds of sockets and scans a second.
        "SCANS_PER_SECOND": "1000000",
        "SCAN_BURST": "1000000",
        "SOCKETS_PER_ACCOUNT": "1000000",
    }
    if redis_url:
        env |= {"REDIS_URL": redis_url, "REDIS_PREFIX": f"tt-bench:{uuid.uuid4().hex[:8]}"}
    server = Server(env, workers, directory / "server.log", cpu_cores=cpu_cores)
    try:
        await server.ready()
    except BaseException:
        server.stop()
        raise
    return server


async def open_socket(server: Server, cookie: str) -> Any:
    """A signed-in scanner's /ws (as the scanner page opens it), past the hello (no resume)."""
    ws = await websockets.connect(
        server.base.replace("http", "ws") + "/ws?view=scanner",
        additional_headers={"Cookie": cookie},
        max_size=None,
        open_timeout=60,
    )
    await ws.send(json.dumps({"type": "hello", "last_event_id": None}))
    return ws


async def upgrade(
    port: int, cookie: str, path: str = "/ws"
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A websocket opened by hand: a load generator has no CPU to spare for a library."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(upgrade_request(port, cookie, path))
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 101"):
        raise RuntimeError(head[:200])
    return reader, writer


def upgrade_request(port: int, cookie: str, path: str) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        # What browsers offer; the app declines it (traitortrack/server.py), frames stay plain.
        "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
        f"Cookie: {cookie}\r\n\r\n"
    ).encode()


def client_frame(data: bytes, opcode: int = 0x1) -> bytes:
    """One final, masked client frame (RFC 6455 §5.2)."""
    size = len(data)
    if size < 126:
        header = bytes([0x80 | opcode, 0x80 | size])
    elif size < 1 << 16:
        header = bytes([0x80 | opcode, 0x80 | 126]) + size.to_bytes(2, "big")
    else:
        header = bytes([0x80 | opcode, 0x80 | 127]) + size.to_bytes(8, "big")
    mask = os.urandom(4)
    keystream = (mask * (size // 4 + 1))[:size]
    masked = int.from_bytes(data, "big") ^ int.from_bytes(keystream, "big")
    return header + mask + masked.to_bytes(size, "big")


class AckSocket:
    """A scanner's /ws (as the scanner page opens it) for load generation, in place of a
    websockets connection: sends text, and iterates over the acks only. Whatever else the
    server sends a scanner (events, counters) is skimmed, not decoded, so that with a
    thousand sockets this process is not the bottleneck."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.closed = False  # by the server (a client too slow is dropped) or by close()

    @classmethod
    async def open(cls, port: int, cookie: str) -> "AckSocket":
        socket = cls(*await upgrade(port, cookie, "/ws?view=scanner"))
        await socket.send(json.dumps({"type": "hello", "last_event_id": None}))
        return socket

    async def send(self, text: str) -> None:
        """Send, or drop the message if the socket is closed: that scan stays unacked."""
        if not self.closed:
            self.writer.write(client_frame(text.encode()))

    async def __aiter__(self) -> AsyncIterator[str]:
        buffer = b""
        try:
            while chunk := await self.reader.read(1 << 16):
                buffer += chunk
                at = 0
                while (frame := _frame_at(buffer, at)) is not None:
                    opcode, start, at = frame
                    if opcode == 0x1 and buffer.startswith(_ACK, start):
                        yield buffer[start:at].decode()
                    elif opcode == 0x9:  # ping
                        self.writer.write(client_frame(buffer[start:at], 0xA))
                    elif opcode == 0x8:  # close
                        return
                buffer = buffer[at:]
        except ConnectionError:
            return
        finally:
            self.close()

    def close(self) -> None:
        self.closed = True
        self.writer.close()


_ACK = b'{"type":"ack"'


def _frame_at(buffer: bytes, at: int) -> tuple[int, int, int] | None:
    """The unmasked server frame at ``at``: (opcode, payload start, end), or None if it has not
    all arrived. The server sends every message as one final frame."""
    if len(buffer) - at < 2:
        return None
    size, start = buffer[at + 1] & 0x7F, at + 2
    if size >= 126:
        width = 2 if size == 126 else 8
        if len(buffer) < start + width:
            return None
        size, start = int.from_bytes(buffer[start : start + width], "big"), start + width
    if len(buffer) < start + size:
        return None
    return buffer[at] & 0x0F, start, start + size


# Clients -----------------------------------------------------------------------------------


class Scanner:
    """A dispatcher's socket: scans sent on a schedule, acks timed."""

    def __init__(
        self, ws: Any, index: int, area: str, on_ack: Callable[[float], None], scanners: int
    ) -> None:
        self.ws, self.index, self.area, self.on_ack = ws, index, area, on_ack
        # Parent codes are SB00001..SB99999: each of the ``scanners`` gets its own block.
        first = index * (PARENT_CODES // scanners) + 1
        self.parents = [f"SB{first + p:05d}" for p in range(PARENTS_PER_SCANNER)]
        self.children = dict.fromkeys(self.parents, 0)
        self.next_parent = 0
        self.sent_at: dict[str, float] = {}  # scan id -> send time
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            async for raw in self.ws:
                message = json.loads(raw)
                if message["type"] == "ack":
                    now = time.monotonic()
                    sent = self.sent_at.pop(message["id"], None)
                    if sent is not None and message["outcome"] == "ok":
                        self.on_ack((now - sent) * 1000)

    async def open_parents(self) -> None:
        for parent in self.parents:
            await self.send(parent, None)

    async def send(self, code: str, parent: str | None) -> None:
        scan_id = str(uuid.uuid4())
        message: dict[str, Any] = {"type": "scan", "id": scan_id, "code": code}
        message |= {"as": "child", "parent": parent} if parent else {"as": "parent"}
        self.sent_at[scan_id] = time.monotonic()
        await self.ws.send(json.dumps(message))

    async def scan_next(self) -> None:
        """A child into the next parent; a full parent is replaced by a new one."""
        parent = self.parents[self.next_parent]
        if self.children[parent] == 30:
            number = int(parent[2:]) + PARENTS_PER_SCANNER
            parent = self.parents[self.next_parent] = f"SB{number:05d}"
            self.children[parent] = 0
            await self.send(parent, None)
        self.children[parent] += 1
        self.next_parent = (self.next_parent + 1) % PARENTS_PER_SCANNER
        await self.send(f"C{self.index:03d}{uuid.uuid4().hex[:10].upper()}", parent)
