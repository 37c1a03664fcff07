"""Property-based fuzz: whatever anyone sends to any route, or over ``/ws``, the answer is never a
server error, and a socket stays open.

Every route of the app's URL map (as the authorisation matrix lists them) gets random path
values, query strings, headers and bodies (forms, JSON, raw bytes) with control characters,
huge numbers, deep nesting and wrong types, from an admin (who may reach every route), a
dispatcher (whose views are narrowed to an area) and an anonymous visitor. Bounded for CI: a
fixed number of examples, the same ones every run (``derandomize``); raise ``max_examples``
and turn that off to hunt.
"""

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import make_actor
from tests.test_ws import _receive_until
from tests.web import ADMIN_PASSWORD, csrf_from, sign_in
from traitortrack.domain.roles import Role

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
# Every field name a form of ours has, plus the query arguments the views read.
FIELDS = sorted(
    {
        name
        for page in TEMPLATES.rglob("*.html")
        for name in re.findall(r'name="(\w+)"', page.read_text())
    }
    | {"after", "before", "next", "view", "areas", "type", "id", "as", "parent"}
)
# The ws endpoint is fuzzed on its own; signing out would end the fuzz session.
SKIPPED = {"static", "ws.ws", "auth.logout"}
FUZZ = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# Values people and scripts actually send, next to random text: codes, areas, numbers that
# do not fit, and characters that must be refused.
LIKELY = st.sampled_from(
    ["SB12345", "ABC123", "jaipur", "admin", "dispatcher", "parent", "child", "5", "-1", "0",
     "2147483648", "9" * 30, "1e309", "NaN", "2025-13-45", "", " ", "\x00", "\x1b[2J", "\t\r\n"]
)  # fmt: skip
# Mostly text that passes the edge (which refuses control characters), so that the views
# themselves get fuzzed too.
PRINTABLE = st.characters(blacklist_categories=("Cc", "Cs"))
TEXT = st.one_of(LIKELY, st.text(PRINTABLE, max_size=30), st.text(max_size=30))
NUMBER = st.one_of(st.integers(), st.integers(min_value=2**31 - 2, max_value=2**64))
JSON = st.recursive(
    st.none() | st.booleans() | NUMBER | st.floats(allow_nan=False) | TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=8,
)
FIELDS_AND_VALUES = st.dictionaries(
    st.one_of(st.sampled_from(FIELDS), st.text(PRINTABLE, min_size=1, max_size=10)),
    TEXT,
    max_size=4,
)
SCAN_SHAPED = st.fixed_dictionaries(
    {},
    optional={
        key: st.one_of(JSON, LIKELY, st.uuids().map(str))
        for key in ("type", "id", "code", "as", "parent")
    },
)
HEADERS = st.fixed_dictionaries(
    {},
    optional={
        "X-Request-ID": st.text(PRINTABLE, max_size=70),
        "Accept": st.one_of(st.sampled_from(["application/json", "*/*;q=x"]), st.text(PRINTABLE)),
    },
)
CONTENT_TYPES = st.sampled_from(
    [
        "application/json",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "multipart/form-data",
        "text/plain",
    ]
)
RAW_BODIES = st.tuples(
    st.one_of(st.binary(max_size=200), st.integers(1, 40_000).map(lambda n: b"[" * n)),
    CONTENT_TYPES,
)
BODIES = st.one_of(
    st.tuples(st.just("form"), FIELDS_AND_VALUES),
    st.tuples(st.just("json"), st.one_of(SCAN_SHAPED, JSON)),
    st.tuples(st.just("raw"), RAW_BODIES),
)


@dataclass
class Visitors:
    """An admin, a dispatcher and an anonymous visitor (client and CSRF token of each), and
    someone for the admin to act on (acting on oneself could sign the admin out)."""

    clients: dict[str, tuple[Any, str]]
    someone: int


async def _client(app, username: str | None = None, password: str = "Secret-pass1"):
    client = app.test_client()
    if username is not None:
        await sign_in(client, username, password)
    return client, await csrf_from(client, "/login" if username is None else "/")


@pytest.fixture
async def visitors(app, engine) -> Visitors:
    await make_actor(engine, Role.DISPATCHER, "jaipur", name="ravi")
    someone = await make_actor(engine, Role.BILLER)
    clients = {
        "admin": await _client(app, "admin", ADMIN_PASSWORD),
        "dispatcher": await _client(app, "ravi"),
        "anonymous": await _client(app),
    }
    return Visitors(clients, someone.user_id)


def _routes(app) -> list[tuple[str, str]]:
    return sorted(
        (rule.rule, method)
        for rule in app.app.url_map.iter_rules()
        if rule.endpoint not in SKIPPED
        for method in rule.methods - {"HEAD", "OPTIONS"}
    )


def _path(data: st.DataObject, rule: str, someone: int) -> str:
    def value(match: re.Match[str]) -> str:
        if match[1] == "int":
            return str(data.draw(st.one_of(st.just(someone), NUMBER), label=match[2]))
        return quote(data.draw(st.one_of(LIKELY, st.text(min_size=1)), label=match[2]), safe="")

    return re.sub(r"<(?:(\w+):)?(\w+)>", value, rule)


@settings(FUZZ, max_examples=400)  # some 60 routes share these
@given(data=st.data())
async def test_no_request_to_any_route_gets_a_server_error(app, visitors, data):
    rule, method = data.draw(st.sampled_from(_routes(app)), label="route")
    who = data.draw(st.sampled_from(sorted(visitors.clients)), label="visitor")
    client, token = visitors.clients[who]
    query = data.draw(FIELDS_AND_VALUES, label="query")
    headers = data.draw(HEADERS, label="headers")
    request: dict[str, Any] = {"query_string": query, "headers": headers}
    if method == "POST":
        if data.draw(st.booleans(), label="csrf header"):
            headers["X-CSRF-Token"] = token
        kind, body = data.draw(BODIES, label="body")
        if kind == "form":
            request["form"] = {"csrf_token": token, **body}
        elif kind == "json":
            request["json"] = body
        else:
            request["data"], headers["Content-Type"] = body
    path = _path(data, rule, visitors.someone)

    response = await client.open(path, method=method, **request)

    assert response.status_code < 500, (method, path, await response.get_data(as_text=True))


@FUZZ
@given(body=st.one_of(SCAN_SHAPED, JSON), who=st.sampled_from(["admin", "dispatcher"]))
async def test_no_scan_sent_over_http_gets_a_server_error(visitors, body, who):
    client, token = visitors.clients[who]

    response = await client.post("/api/v1/scans", json=body, headers={"X-CSRF-Token": token})

    assert response.status_code < 500, (body, await response.get_data(as_text=True))


FRAMES = st.one_of(
    st.text(max_size=200),
    st.binary(max_size=200),
    st.integers(1, 30_000).map(lambda n: "[" * n),
    st.one_of(SCAN_SHAPED, JSON).map(json.dumps),
    st.fixed_dictionaries(
        {"type": st.sampled_from(["scan", "undo", "finish", "hello", "ping", "launch"])},
        optional={
            key: st.one_of(JSON, LIKELY) for key in ("id", "code", "as", "parent", "last_event_id")
        },
    ).map(json.dumps),
)


@pytest.fixture
async def scanner_socket(app, engine):
    await make_actor(engine, Role.DISPATCHER, "jaipur", name="ravi")
    client, _ = await _client(app, "ravi")
    async with client.websocket("/ws") as ws:
        await ws.send(json.dumps({"type": "hello"}))
        await _receive_until(ws, "welcome")
        yield ws


@FUZZ
@given(frame=FRAMES)
async def test_no_websocket_message_closes_the_socket(scanner_socket, frame):
    await scanner_socket.send(frame)
    await scanner_socket.send(json.dumps({"type": "ping"}))

    assert (await _receive_until(scanner_socket, "pong"))["type"] == "pong"
