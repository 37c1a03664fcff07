"""Real processes for live-protocol tests: a private Redis, Hypercorn app servers, and clients.

Everything here is started by the test and stopped by it (in ``finally``), so a test may kill
and restart its Redis without touching the machine's one. Every wait is bounded in time.
"""

import asyncio
import base64
import contextlib
import glob
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import psutil
import pytest
import websockets

from bench.live import worker_processes
from traitortrack.config import Settings, normalize_database_url
from traitortrack.db.engine import create_engine
from traitortrack.db.migrate import migrate

ROOT = Path(__file__).resolve().parent.parent
ADMIN_PASSWORD = "Cluster-pass1"
_CSRF_FIELD = re.compile(r'name="csrf_token" value="([^"]+)"')


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _stop_group(process: subprocess.Popen[bytes], grace_s: float) -> None:
    """SIGTERM the process we started (it stops its own workers), then SIGKILL its group."""
    if process.poll() is None and grace_s > 0:
        process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(grace_s)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # also reaps spawned workers
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(5)


class RedisProcess:
    """A private redis-server on a free port; ``kill`` and ``start`` keep the same port."""

    def __init__(self, directory: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("NO REDIS-SERVER BINARY: live cluster tests need redis-server on PATH")
        self.binary = binary
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, wait_s: float = 10) -> None:
        log = (self.directory / "redis.log").open("ab")
        self.process = subprocess.Popen(
            [
                self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "no", "--dir", str(self.directory),
            ],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        log.close()
        deadline = time.monotonic() + wait_s
        while not _port_open(self.port):
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError(f"redis-server did not start on port {self.port}")
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL: the crash case (no goodbye to clients)."""
        if self.process is not None:
            _stop_group(self.process, grace_s=0)
            self.process = None


def postgres_bindir() -> Path | None:
    """Where initdb and pg_ctl are: ``pg_config --bindir``, else the newest Debian install."""
    candidates: list[str] = []
    if pg_config := shutil.which("pg_config"):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            found = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True)
            candidates.append(found.stdout.strip())
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    if initdb := shutil.which("initdb"):
        candidates.append(str(Path(initdb).resolve().parent))
    for candidate in candidates:
        if candidate and (Path(candidate) / "initdb").exists():
            return Path(candidate)
    return None


class PostgresCluster:
    """A PostgreSQL cluster of our own (initdb into a temporary directory, a free port), so a
    drill may restart it. As root, the server runs as the ``postgres`` user."""

    def __init__(self) -> None:
        bindir = postgres_bindir()
        if bindir is None:
            pytest.skip("NO POSTGRESQL BINARIES (initdb, pg_ctl): the drills need their own")
        self.bindir = bindir
        self.port = free_port()
        # Not under pytest's tmp_path: its folders are private to root, the server is not.
        self.directory = Path(tempfile.mkdtemp(prefix="tt-drill-pg-"))
        self.data = self.directory / "data"
        self.log = self.directory / "postgres.log"
        self.as_postgres = os.geteuid() == 0
        if self.as_postgres:
            shutil.chown(self.directory, "postgres", "postgres")

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = [str(self.bindir / args[0]), *args[1:]]
        if self.as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, timeout=120)
        if check and result.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr}")
        return result

    def create(self) -> None:
        self._run("initdb", "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync",
                  "-D", str(self.data))  # fmt: skip

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1"
            " -c max_connections=200 -c fsync=off -c full_page_writes=off"
        )  # no fsync: the drills crash the server, never the machine
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.log), "-w",
                  "start")  # fmt: skip

    def restart(self, mode: str) -> None:
        """``pg_ctl restart -m fast|immediate`` (immediate: no shutdown, crash recovery)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-l", str(self.log), "-w",
                  "restart")  # fmt: skip

    def stop(self) -> None:
        """A fast shutdown, as a restart does it: every backend is told, then cut."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def remove(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "stop", check=False)
        shutil.rmtree(self.directory, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    async def create_database(self, name: str, template: str | None = None) -> str:
        conn = await asyncpg.connect(self.url())
        try:
            clone = f' TEMPLATE "{template}"' if template else ""
            await conn.execute(f'CREATE DATABASE "{name}"{clone}')
        finally:
            await conn.close()
        return self.url(name)

    async def migrated_template(self) -> str:
        """A migrated database to copy each drill's from."""
        name = "tt_drill_template"
        url = await self.create_database(name)
        engine = create_engine(Settings(database_url=normalize_database_url(url)))
        try:
            await migrate(engine)
        finally:
            await engine.dispose()
        return name


@contextlib.contextmanager
def private_postgres() -> Iterator[PostgresCluster]:
    cluster = PostgresCluster()
    try:
        cluster.create()
        cluster.start()
        yield cluster
    finally:
        cluster.remove()


@dataclass
class AppServer:
    """``python -m traitortrack serve`` on a free port (workers spawned by the runner)."""

    name: str
    env: dict[str, str]
    log_path: Path
    workers: int = 1
    port: int = field(default_factory=free_port)
    config: Path | None = None  # a Hypercorn TOML file instead of the project's hypercorn.toml
    process: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        config = ["--config", str(self.config)] if self.config else []
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "traitortrack", "serve", "--workers", str(self.workers),
                 "--bind", f"127.0.0.1:{self.port}", *config],
                env=self.env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip

    async def wait_ready(self, seconds: float = 60) -> None:
        deadline = time.monotonic() + seconds
        async with httpx.AsyncClient(timeout=2) as client:
            while time.monotonic() < deadline:
                assert self.process is not None
                if self.process.poll() is not None:
                    raise RuntimeError(f"{self.name} exited:\n{self.log_tail()}")
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(f"{self.base}/ready")).status_code == 200:
                        return
                await asyncio.sleep(0.2)
        raise RuntimeError(f"{self.name} not ready within {seconds} s:\n{self.log_tail()}")

    async def wait_listening(self, seconds: float = 60) -> None:
        """Until every worker has said it listens (a server on a port that another one still
        holds cannot be told apart by asking the port)."""
        deadline = time.monotonic() + seconds
        while self.log_text().count("Running on http") < self.workers:
            assert self.process is not None
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} is not listening:\n{self.log_tail()}")
            await asyncio.sleep(0.05)

    def tree(self) -> list[psutil.Process]:
        """The runner and its descendants (the workers are spawned child processes)."""
        assert self.process is not None
        root = psutil.Process(self.process.pid)
        return [root, *root.children(recursive=True)]

    def worker_processes(self) -> list[psutil.Process]:
        assert self.process is not None
        return worker_processes(self.process.pid)

    def rss_kb(self) -> int:
        """Resident memory of the whole process tree."""
        total = 0
        for process in self.tree():
            with contextlib.suppress(psutil.NoSuchProcess):
                total += process.memory_info().rss
        return total // 1024

    def stop(self, grace_s: float = 5) -> None:
        if self.process is not None:
            _stop_group(self.process, grace_s)

    def kill(self) -> None:
        """SIGKILL the runner and its worker: a crash, no goodbye to anyone."""
        if self.process is not None:
            _stop_group(self.process, grace_s=0)

    def log_text(self) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")
        return ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])


@dataclass
class Cluster:
    redis: RedisProcess
    servers: list[AppServer]
    settings: Settings

    @property
    def a(self) -> AppServer:
        return self.servers[0]

    @property
    def b(self) -> AppServer:
        return self.servers[1]

    def logs(self) -> str:
        return "\n".join(f"--- {s.name} ---\n{s.log_tail()}" for s in self.servers)


@contextlib.asynccontextmanager
async def cluster(settings: Settings, directory: Path, servers: int = 2) -> AsyncIterator[Cluster]:
    """A private Redis plus ``servers`` app processes on one (already migrated) database."""
    redis = RedisProcess(directory / "redis")
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("TRAITORTRACK_", "REDIS_", "PRODUCTION_", "REPLIT_"))
        and key not in {"WEB_CONCURRENCY", "DATABASE_URL"}
    }
    assert settings.database_url is not None
    env |= {
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": redis.url,
        "REDIS_PREFIX": f"tt-cluster:{uuid.uuid4().hex[:12]}",
        "ADMIN_PASSWORD": ADMIN_PASSWORD,
        # One secret for all servers: a cookie from one is valid on the others.
        "SESSION_SECRET": "cluster-test-secret-" + "y" * 40,
        "TRAITORTRACK_DATA_DIR": str(directory / "data"),
        "DB_POOL_SIZE": "10",
        "PYTHONUNBUFFERED": "1",
        # The tests' scanners and walls are load generators: one account, many sockets, fast.
        "SCANS_PER_SECOND": "100000",
        "SCAN_BURST": "100000",
        "SOCKETS_PER_ACCOUNT": "100000",
    }
    apps = [
        AppServer(name, env, directory / f"server-{name}.log")
        for name in ("A", "B", "C", "D")[:servers]
    ]
    try:
        redis.start()
        for app in apps:
            app.start()
        await asyncio.gather(*(app.wait_ready() for app in apps))
        yield Cluster(redis, apps, settings)
    finally:
        # A stop drains each worker's sockets (close 1012) and takes well under a second with
        # websockets open: stop the apps together, each given a few seconds before a kill.
        for app in apps:
            if app.process is not None and app.process.poll() is None:
                app.process.terminate()
        for app in apps:
            app.stop()
        redis.kill()


async def login(server: AppServer, username: str, password: str) -> str:
    """Sign in through the real form; returns the Cookie header for /ws (tt_auth, tt_session)."""
    async with httpx.AsyncClient(base_url=server.base, timeout=10) as client:
        page = await client.get("/login")
        token = _CSRF_FIELD.search(page.text)
        assert token, "no csrf_token field on /login"
        response = await client.post(
            "/login",
            data={"username": username, "password": password, "csrf_token": token.group(1)},
        )
        assert response.status_code in {302, 303}, response.text[:300]
        cookies = dict(client.cookies.items())
    assert {"tt_auth", "tt_session"} <= cookies.keys(), cookies.keys()
    return "; ".join(f"{name}={value}" for name, value in cookies.items())


def ws_url(server: AppServer, view: str | None = None) -> str:
    return f"ws://127.0.0.1:{server.port}/ws" + (f"?view={view}" if view else "")


class NotSaved(Exception):
    """The server answered a scan with an ``error`` (restarting, signed out, too fast...)."""


class LiveClient:
    """A websocket client that reads in the background and records what it was sent.

    An ``error`` frame fails the scans waiting for their ack with ``NotSaved``: the server
    answers a scan it did not save that way (errors carry no scan id)."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.welcome: dict[str, Any] = {}
        self.event_ids: list[int] = []
        self.received_at: dict[int, float] = {}  # event id -> time.time() at receipt
        self.event_at: dict[int, str] = {}
        self.event_kind: dict[int, str] = {}
        self.metrics: dict[str, Any] = {}
        self.counters: dict[str, Any] = {}  # the latest: the welcome's, then counters frames
        self.resyncs: list[dict[str, Any]] = []
        self.errors: list[dict[str, Any]] = []
        self.close_code: int | None = None
        self._acks: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._welcomed = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def open(
        cls,
        server: AppServer,
        cookie: str,
        view: str | None = None,
        last: int | None = None,
        open_timeout: float = 10,
    ) -> "LiveClient":
        ws = await websockets.connect(
            ws_url(server, view),
            additional_headers={"Cookie": cookie},
            open_timeout=open_timeout,
            max_size=None,  # a browser takes frames of any size
        )
        await ws.send(json.dumps({"type": "hello", "last_event_id": last}))
        client = cls(ws)
        try:
            async with asyncio.timeout(5):
                await client._welcomed.wait()
        except TimeoutError:
            await client.close()
            raise
        return client

    @property
    def is_open(self) -> bool:
        return not self._reader.done()

    async def wait_closed(self, seconds: float | None = None) -> int | None:
        """The close code once the server has closed the socket, None if it is still open
        after ``seconds``."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await asyncio.shield(self._reader)
        return self.close_code

    @property
    def last_id(self) -> int:
        """The last event id applied, as a page would persist it (max: ids increase)."""
        return max(self.event_ids, default=self.welcome["last_event_id"])

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                message = json.loads(raw)
                kind = message["type"]
                if kind == "welcome":
                    self.welcome = message
                    self.counters = message.get("counters") or {}
                    self._welcomed.set()
                elif kind == "counters":
                    self.counters = {k: v for k, v in message.items() if k != "type"}
                elif kind == "events":
                    now = time.time()
                    for event in message["events"]:
                        self.event_ids.append(event["id"])
                        self.received_at.setdefault(event["id"], now)
                        self.event_at[event["id"]] = event["at"]
                        self.event_kind[event["id"]] = event["kind"]
                elif kind == "ack":
                    future = self._acks.get(message["id"])
                    if future is not None and not future.done():
                        future.set_result(message)
                elif kind == "resync":
                    self.resyncs.append(message)
                elif kind == "error":
                    self.errors.append(message)
                    for future in self._acks.values():
                        if not future.done():
                            future.set_exception(NotSaved(message.get("message", "")))
                elif kind == "metrics":
                    self.metrics = message
        except websockets.ConnectionClosed:
            pass
        finally:
            self.close_code = self.ws.close_code
            for future in self._acks.values():
                if not future.done():
                    future.set_exception(ConnectionError(f"socket closed ({self.close_code})"))

    async def scan(
        self, code: str, parent: str | None = None, wait_s: float = 10, scan_id: str | None = None
    ) -> dict:
        """Send a scan (a new id, or ``scan_id`` to resend one) and wait for its ack."""
        scan_id = scan_id or str(uuid.uuid4())
        if not self.is_open:
            raise ConnectionError(f"socket closed ({self.close_code})")
        message: dict[str, Any] = {"type": "scan", "id": scan_id, "code": code}
        message |= {"as": "child", "parent": parent} if parent else {"as": "parent"}
        future = self._acks[scan_id] = asyncio.get_running_loop().create_future()
        try:
            await self.ws.send(json.dumps(message))
            async with asyncio.timeout(wait_s):
                return await future
        finally:
            self._acks.pop(scan_id, None)

    async def wait_for_ids(self, wanted: set[int], seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while not wanted <= set(self.event_ids):
            if time.monotonic() > deadline or self._reader.done():
                return False
            await asyncio.sleep(0.02)
        return True

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(3):
                await self.ws.close()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._reader


def scan_plan(count: int, prefix: str, first_parent: int) -> list[tuple[str, str | None]]:
    """``count`` scans: a parent, then up to 24 children into it, then the next parent..."""
    plan: list[tuple[str, str | None]] = []
    parent = ""
    for i in range(count):
        if i % 25 == 0:
            parent = f"SB{first_parent + i // 25:05d}"
            plan.append((parent, None))
        else:
            plan.append((f"{prefix}{i:05d}", parent))
    return plan


class RawSocket:
    """A websocket opened by hand on a tiny receive buffer, for a client that stops reading."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    @classmethod
    def open(cls, server: AppServer, cookie: str, view: str = "wall") -> "RawSocket":
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: the window
        sock.settimeout(10)
        sock.connect(("127.0.0.1", server.port))
        key = base64.b64encode(os.urandom(16)).decode()
        sock.sendall(
            (
                f"GET /ws?view={view} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
                "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                f"Cookie: {cookie}\r\n\r\n"
            ).encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(1)  # byte by byte: leave every frame unread in the kernel
            if not chunk:
                raise ConnectionError("closed during the handshake")
            head += chunk
        assert head.startswith(b"HTTP/1.1 101"), head[:200]
        raw = cls(sock)
        raw.send_text(json.dumps({"type": "hello", "last_event_id": None}))
        return raw

    def send_text(self, text: str) -> None:
        payload = text.encode()
        assert len(payload) < 126
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(bytes([0x81, 0x80 | len(payload)]) + mask + masked)

    def read_frames(self, seconds: float) -> tuple[list[dict[str, Any]], int | None]:
        """Read for up to ``seconds``: (text messages, close code if the server closed)."""
        deadline = time.monotonic() + seconds
        buffer, messages = b"", []
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                chunk = self.sock.recv(1 << 16)
            except (TimeoutError, OSError):
                break
            if not chunk:
                break
            buffer += chunk
            while (frame := _parse_frame(buffer)) is not None:
                opcode, payload, buffer = frame
                if opcode == 0x1:
                    messages.append(json.loads(payload))
                elif opcode == 0x8:
                    code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
                    return messages, code
        return messages, None

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def _parse_frame(buffer: bytes) -> tuple[int, bytes, bytes] | None:
    """One unmasked server frame off the front of ``buffer`` (None: incomplete)."""
    if len(buffer) < 2:
        return None
    opcode, length, offset = buffer[0] & 0x0F, buffer[1] & 0x7F, 2
    if length == 126:
        if len(buffer) < 4:
            return None
        length, offset = struct.unpack("!H", buffer[2:4])[0], 4
    elif length == 127:
        if len(buffer) < 10:
            return None
        length, offset = struct.unpack("!Q", buffer[2:10])[0], 10
    if len(buffer) < offset + length:
        return None
    return opcode, buffer[offset : offset + length], buffer[offset + length :]


# static/js/live.js run by Node against a real server: browser globals shimmed, the session
# cookie added to the websocket handshake (Node's WebSocket accepts headers), and every
# callback written to stdout as one JSON line.
_NODE_HARNESS = r"""
import { pathToFileURL } from "node:url";
const [liveJs, base, cookie, view] = process.argv.slice(2);
const out = (line) => process.stdout.write(JSON.stringify({ ...line, t: Date.now() }) + "\n");
const page = new URL(base);
globalThis.location = {
  protocol: page.protocol, host: page.host, pathname: page.pathname,
  assign: (to) => out({ type: "navigate", to }),
};
const store = new Map();
globalThis.sessionStorage = {
  getItem: (k) => (store.has(k) ? store.get(k) : null),
  setItem: (k, v) => store.set(k, String(v)),
  removeItem: (k) => store.delete(k),
};
const nativeFetch = globalThis.fetch;
globalThis.fetch = (path, init = {}) =>
  nativeFetch(new URL(path, base), { ...init, headers: { ...init.headers, Cookie: cookie } });
globalThis.window = new EventTarget();
globalThis.document = Object.assign(new EventTarget(), { visibilityState: "visible" });
const Native = globalThis.WebSocket;
globalThis.WebSocket = class extends Native {
  constructor(url) {
    super(url, { headers: { Cookie: cookie } });
    this.addEventListener("close", (e) => out({ type: "close", code: e.code }));
  }
};
const { connectLive } = await import(pathToFileURL(liveJs).href);
connectLive({
  view,
  onWelcome: (m) => out({ type: "welcome", last_event_id: m.last_event_id }),
  onEvents: (events) => out({ type: "events", ids: events.map((e) => e.id) }),
  onStatus: (status) => out({ type: "status", status }),
  onResync: (reason) => out({ type: "resync", reason }),
});
"""


def node_command() -> list[str] | None:
    """Node with a global WebSocket (a flag on Node 20 and 21), or None."""
    node = shutil.which("node")
    if node is None:
        return None
    check = "process.exit(typeof WebSocket === 'function' ? 0 : 1)"
    for flags in ([], ["--experimental-websocket"]):
        if subprocess.run([node, *flags, "-e", check], capture_output=True).returncode == 0:
            return [node, *flags]
    return None


class NodeLiveClient:
    """static/js/live.js in a Node process, connected to ``server`` as a page there would be."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.lines: list[dict[str, Any]] = []
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def start(
        cls, node: list[str], directory: Path, server: AppServer, cookie: str, view: str
    ) -> "NodeLiveClient":
        script = directory / "live_harness.mjs"
        script.write_text(_NODE_HARNESS)
        process = await asyncio.create_subprocess_exec(
            *node, str(script), str(ROOT / "static/js/live.js"), f"{server.base}/wall",
            cookie, view, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )  # fmt: skip
        return cls(process)

    async def _read(self) -> None:
        assert self.process.stdout is not None
        async for raw in self.process.stdout:
            with contextlib.suppress(ValueError):
                self.lines.append(json.loads(raw))

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [line for line in self.lines if line["type"] == kind]

    @property
    def applied(self) -> list[int]:
        """Every event id handed to the page, in the order it was."""
        return [i for line in self.of("events") for i in line["ids"]]

    async def wait(self, condition: Any, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while not condition():
            if time.monotonic() > deadline or self._reader.done():
                return False
            await asyncio.sleep(0.05)
        return True

    async def stop(self) -> None:
        if self.process.returncode is None:
            self.process.kill()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(5):
                await self.process.wait()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._reader
