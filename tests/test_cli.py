import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from traitortrack.config import Settings


def _cli(settings: Settings, *args: str, stdin: str = "", extra_env=None):
    env = {
        **os.environ,
        "DATABASE_URL": settings.database_url,
        "TRAITORTRACK_DATA_DIR": str(settings.data_dir),
        **(extra_env or {}),
    }
    env.pop("REDIS_URL", None)
    return subprocess.run(
        [sys.executable, "-m", "traitortrack", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def test_create_admin_then_drive_scanning_and_bills_from_the_command_line(settings):
    assert _cli(settings, "create-admin", "boss", stdin="Boss-pass1\n").returncode == 0
    steps = [
        ("scan-parent", "--as", "boss", "sb00001"),
        ("link-child", "--as", "boss", "SB00001", "CHILD001"),
        ("bill-create", "--as", "boss", "B-1", "1", "first bill"),
        ("bill-link", "--as", "boss", "B-1", "SB00001"),
        ("bill-complete", "--as", "boss", "B-1"),
    ]
    outputs = [_cli(settings, *step) for step in steps]
    assert [o.returncode for o in outputs] == [0] * len(steps), [o.stderr for o in outputs]
    assert outputs[1].stdout.strip() == "ok: CHILD001 linked (1/30)"
    assert outputs[4].stdout.startswith("ok: Bill B-1 completed")


def test_a_rejected_use_case_exits_non_zero_with_the_reason(settings):
    _cli(settings, "create-admin", "boss", stdin="Boss-pass1\n")
    result = _cli(settings, "link-child", "--as", "boss", "SB00009", "CHILD001")
    assert result.returncode == 1
    assert "SB00009 is not registered" in result.stdout


def test_the_same_client_id_twice_answers_the_first_result(settings):
    _cli(settings, "create-admin", "boss", stdin="Boss-pass1\n")
    first = _cli(settings, "scan-parent", "--as", "boss", "--client-id", "c-1", "SB00002")
    again = _cli(settings, "scan-parent", "--as", "boss", "--client-id", "c-1", "SB00002")
    assert "created" in first.stdout
    assert again.stdout.strip() == first.stdout.strip() + " (replayed)"


def test_an_unknown_user_is_told_to_create_the_user_first(settings):
    result = _cli(settings, "scan-parent", "--as", "nobody", "SB00001")
    assert result.returncode == 2
    assert "Create the user first" in result.stderr


def test_create_admin_refuses_a_short_password(settings):
    result = _cli(settings, "create-admin", "boss", stdin="short\n")
    assert result.returncode != 0
    assert "too short" in result.stderr


def test_serve_refuses_several_workers_without_redis(settings):
    result = _cli(settings, "serve", "--workers", "2")
    assert result.returncode == 2
    assert "REDIS_URL" in result.stderr


def test_production_without_secrets_refuses_to_start_and_says_which(settings):
    result = _cli(settings, "migrate", extra_env={"TRAITORTRACK_ENV": "production"})
    assert result.returncode == 2
    assert "SESSION_SECRET and ADMIN_PASSWORD" in result.stderr


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.timeout(90)
def test_serve_runs_hypercorn_and_answers_health(settings):
    port = _free_port()
    env = {
        **os.environ,
        "DATABASE_URL": settings.database_url,
        "TRAITORTRACK_DATA_DIR": str(settings.data_dir),
    }
    env.pop("REDIS_URL", None)
    server = subprocess.Popen(
        [sys.executable, "-m", "traitortrack", "serve", "--bind", f"127.0.0.1:{port}"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=2) as r:
                    assert r.status == 200
                    break
            except OSError:
                time.sleep(0.3)
        else:
            pytest.fail("the server did not become ready within 60 s")
    finally:
        server.terminate()
        output, _ = server.communicate(timeout=40)
    assert f"http://127.0.0.1:{port}" in output
    assert "username: admin" in output
