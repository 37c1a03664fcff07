"""The benchmarks' own machinery: the hand-rolled websocket frames, the profile summary and
the CPU cap."""

import asyncio
import subprocess
import sys

import pytest

from bench.live import AckSocket, CpuLimit, _frame_at, client_frame
from bench.scanners import Result, Tally, summarize


def _unmask(frame: bytes, header: int) -> bytes:
    mask, payload = frame[header : header + 4], frame[header + 4 :]
    return bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def test_client_frames_are_masked_text_of_every_length_class():
    for size, header in [(0, 2), (125, 2), (126, 4), (70_000, 10)]:
        data = b"x" * size
        frame = client_frame(data)
        assert frame[0] == 0x81 and frame[1] & 0x80
        assert _unmask(frame, header) == data


def test_a_server_frame_is_read_only_once_it_has_all_arrived():
    ack = b'{"type":"ack","id":"1","outcome":"ok"}'
    frame = bytes([0x81, len(ack)]) + ack
    assert _frame_at(frame[:-1], 0) is None
    assert _frame_at(frame, 0) == (0x1, 2, len(frame))
    long = bytes([0x81, 126]) + (300).to_bytes(2, "big") + b"e" * 300
    assert _frame_at(long, 0) == (0x1, 4, 304)


async def test_the_ack_socket_passes_on_acks_and_skims_the_rest():
    ack = b'{"type":"ack","id":"1","outcome":"ok"}'
    events = b'{"type":"events","events":[]}'
    reader = asyncio.StreamReader()
    for payload in (events, ack, events):
        reader.feed_data(bytes([0x81, len(payload)]) + payload)
    reader.feed_eof()

    class Writer:
        def close(self) -> None:
            pass

    socket = AckSocket(reader, Writer())
    assert [message async for message in socket] == [ack.decode()]
    assert socket.closed


def test_the_profile_summary_ranks_own_and_inclusive_time():
    collapsed = "process 1:serve;run (a.py:1);scan (b.py:2) 3\nprocess 1:serve;run (a.py:1) 1\n"
    result = Result("step", 1.0, 500, Tally(acked=500), 90.0, 80.0)
    summary = summarize(collapsed, "before", result)
    own = summary.split("Own time")[1].split("Inclusive")[0]
    assert own.index("scan (b.py:2)") < own.index("run (a.py:1)")
    assert "100.0 %  run (a.py:1)" in summary.split("Inclusive")[1]


def test_a_cpu_limit_holds_the_processes_started_in_it_to_their_share():
    try:
        limit = CpuLimit(0.2)
    except RuntimeError as error:
        pytest.skip(f"no writable cgroup CPU controller here: {error}")
    spin = "import time\nend = time.time() + 1.5\nwhile time.time() < end: pass\n"
    spin += "print(time.process_time())"
    try:
        busy = subprocess.run(
            [sys.executable, "-c", spin], preexec_fn=limit.enter, capture_output=True, check=True
        )
    finally:
        limit.remove()
    # 1.5 s of spinning at a fifth of a CPU: about 0.3 s of CPU (uncapped it would be 1.5 s).
    assert float(busy.stdout) < 0.6
    assert not limit.path.exists()


def test_the_trace_report_puts_what_each_socket_kept_on_the_line_that_allocated_it():
    import tracemalloc

    from bench.idle_sockets import trace_report

    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        kept = [bytearray(1000) for _ in range(100)]  # 100 "sockets" keep 1 KB each
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    report = trace_report(after, before, len(kept))
    line = next(row for row in report.splitlines() if "test_bench.py:" in row)
    assert 1000 <= int(line.split("|")[2].replace(",", "")) < 1200


async def test_the_idle_bench_judges_the_second_half_of_the_sockets_against_the_target(
    monkeypatch,
):
    import argparse

    from bench import idle_sockets

    samples = [[100.0, 120.0, 141.0], [100.0, 130.0, 165.0], [150.0, 165.0, 181.0]]  # MB

    async def measured(prefix, run):
        return samples, "15"

    published = []
    monkeypatch.setattr(idle_sockets, "in_scratch", measured)
    monkeypatch.setattr(idle_sockets, "publish", lambda body, *args: published.append(body))
    args = argparse.Namespace(sockets=2000, write=False, trace=False)
    assert await idle_sockets.main_async(args)  # 16 MB over 1,000 sockets: 16.4 KB each
    assert "**16.4 KB**" in published[0] and "**PASS**" in published[0]
