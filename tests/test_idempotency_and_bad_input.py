"""SPEC §2: a client id is answered once; bad input of any kind is refused and writes nothing."""

import asyncio
import re
from urllib.parse import quote, urlencode

import pytest
from sqlalchemy import text

from tests.conftest import make_actor
from tests.db import new_id, value
from tests.test_authorization_matrix import SAMPLE_ARGUMENTS
from tests.web import ADMIN_PASSWORD, csrf_from, sign_in
from traitortrack.domain.outcomes import Outcome
from traitortrack.domain.roles import Role
from traitortrack.services.bags import delete_bag
from traitortrack.services.bills import create_bill, edit_bill, link_bill_parent
from traitortrack.services.scans import finish_parent, link_child, scan_parent, undo_last_child

PARENT = "SB12345"
CODE_MESSAGES = {
    "QR code cannot be empty",
    "QR code too long (max 100 characters)",
    "QR code too short (min 4 characters)",
    "QR code contains invalid characters",
    "Parent bag QR must be format SB##### (e.g., SB00001) or M444-##### (e.g., M444-00001)",
    "Child bag QR must be 4-20 alphanumeric characters",
}


async def snapshot(engine) -> dict[str, int]:
    """Row counts of every table, to prove a command wrote nothing anywhere."""
    async with engine.connect() as conn:
        tables = (
            await conn.execute(text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'"))
        ).scalars()
        return {
            table: (await conn.execute(text(f'SELECT count(*) FROM "{table}"'))).scalar()
            for table in sorted(tables)
        }


def answer(result) -> tuple:
    return (result.outcome, result.message, result.error, result.data)


# Idempotency.


async def test_one_client_id_sent_ten_times_at_once_creates_one_parent(engine, dispatcher):
    client_id = new_id()

    results = await asyncio.gather(
        *(scan_parent(engine, dispatcher, client_id, PARENT) for _ in range(10))
    )

    assert [answer(result) for result in results] == [answer(results[0])] * 10
    assert results[0].message == "SB12345 created (0/30), scan child bags"
    assert sum(not result.replayed for result in results) == 1
    assert await value(engine, "SELECT count(*) FROM scan") == 1
    assert await value(engine, "SELECT count(*) FROM bag") == 1
    assert await value(engine, "SELECT count(*) FROM event") == 1


async def test_one_client_id_sent_ten_times_at_once_links_the_child_once(engine, dispatcher):
    await scan_parent(engine, dispatcher, new_id(), PARENT)
    client_id = new_id()

    results = await asyncio.gather(
        *(link_child(engine, dispatcher, client_id, PARENT, "ABC123") for _ in range(10))
    )

    assert [answer(result) for result in results] == [answer(results[0])] * 10
    assert (results[0].outcome, results[0].message) == (Outcome.OK, "ABC123 linked (1/30)")
    assert await value(engine, "SELECT count(*) FROM scan WHERE action = 'link_child'") == 1
    assert await value(engine, "SELECT count(*) FROM link") == 1
    assert await value(engine, "SELECT child_count FROM bag WHERE code = :c", c=PARENT) == 1
    assert await value(engine, "SELECT count(*) FROM event WHERE kind = 'child.linked'") == 1


async def test_one_refused_client_id_sent_ten_times_at_once_is_refused_alike(engine, dispatcher):
    await scan_parent(engine, dispatcher, new_id(), PARENT)
    client_id = new_id()

    results = await asyncio.gather(
        *(link_child(engine, dispatcher, client_id, PARENT, PARENT) for _ in range(10))
    )

    assert [answer(result) for result in results] == [
        (Outcome.REJECTED, "Cannot link SB12345 to itself.", "SELF_LINK", {})
    ] * 10
    assert await value(engine, "SELECT count(*) FROM scan WHERE action = 'link_child'") == 1


async def test_replayed_scan_returns_the_first_answer_and_changes_nothing(engine, dispatcher):
    await scan_parent(engine, dispatcher, new_id(), PARENT)
    client_id = new_id()
    first = await link_child(engine, dispatcher, client_id, PARENT, "ABC123")
    before = await snapshot(engine)

    replay = await link_child(engine, dispatcher, client_id, PARENT, "ABC123")

    assert first.replayed is False
    assert replay.replayed is True
    assert answer(replay) == answer(first)
    assert replay.events == ()
    assert await snapshot(engine) == before


async def test_replay_after_the_world_moved_on_still_answers_as_the_first_time(engine, dispatcher):
    await scan_parent(engine, dispatcher, new_id(), PARENT)
    client_id = new_id()
    first = await link_child(engine, dispatcher, client_id, PARENT, "ABC123")
    await undo_last_child(engine, dispatcher, new_id(), PARENT)
    before = await snapshot(engine)

    replay = await link_child(engine, dispatcher, client_id, PARENT, "ABC123")

    assert answer(replay) == answer(first)
    assert await snapshot(engine) == before
    assert await value(engine, "SELECT count(*) FROM link") == 0


async def test_replay_naming_another_code_still_returns_the_first_answer(engine, dispatcher):
    await scan_parent(engine, dispatcher, new_id(), PARENT)
    client_id = new_id()
    first = await link_child(engine, dispatcher, client_id, PARENT, "ABC123")

    replay = await link_child(engine, dispatcher, client_id, PARENT, "XYZ789")

    assert answer(replay) == answer(first)
    assert await value(engine, "SELECT count(*) FROM bag WHERE code = 'XYZ789'") == 0


async def test_replayed_refusal_is_the_same_refusal(engine, dispatcher):
    await scan_parent(engine, dispatcher, new_id(), PARENT)
    await scan_parent(engine, dispatcher, new_id(), "SB11111")
    await link_child(engine, dispatcher, new_id(), "SB11111", "ABC123")
    client_id = new_id()
    first = await link_child(engine, dispatcher, client_id, PARENT, "ABC123")
    before = await snapshot(engine)

    replay = await link_child(engine, dispatcher, client_id, PARENT, "ABC123")

    assert first.error == "CHILD_LINKED_ELSEWHERE"
    assert answer(replay) == answer(first)
    assert replay.replayed is True
    assert await snapshot(engine) == before


async def test_replayed_bill_creation_creates_one_bill(engine, biller):
    client_id = new_id()
    first = await create_bill(engine, biller, client_id, "B-001", 5)
    before = await snapshot(engine)

    replay = await create_bill(engine, biller, client_id, "B-001", 5)

    assert answer(replay) == answer(first)
    assert replay.replayed is True
    assert await snapshot(engine) == before


async def test_client_ids_belong_to_their_user(engine, dispatcher):
    colleague = await make_actor(engine, Role.DISPATCHER, "jaipur")
    await scan_parent(engine, dispatcher, new_id(), PARENT)
    client_id = new_id()

    mine = await link_child(engine, dispatcher, client_id, PARENT, "ABC123")
    theirs = await link_child(engine, colleague, client_id, PARENT, "XYZ789")

    assert (mine.message, theirs.message) == ("ABC123 linked (1/30)", "XYZ789 linked (2/30)")
    assert theirs.replayed is False


# Bad input.

BAD_CODES = {
    "int": 123,
    "float": 12.5,
    "list": ["SB12345"],
    "dict": {"code": "SB12345"},
    "bytes": b"SB12345",
    "10KB": "S" * 10_240,
    "NUL": "SB12\x00345",
    "NULs": "\x00" * 8,
    "fullwidth-digits": "SB\uff11\uff12\uff13\uff14\uff15",
    "arabic-indic-digits": "SB\u0661\u0662\u0663\u0664\u0665",
    "whitespace": "   ",
    "lone-surrogates": "\ud800\udfff\ud800\udfff",
}
each_bad_code = pytest.mark.parametrize("code", list(BAD_CODES.values()), ids=list(BAD_CODES))


@each_bad_code
async def test_bad_parent_code_is_refused_and_writes_nothing(engine, dispatcher, code):
    before = await snapshot(engine)

    result = await scan_parent(engine, dispatcher, new_id(), code)

    assert (result.outcome, result.error) == (Outcome.REJECTED, "INVALID_CODE")
    assert result.message in CODE_MESSAGES
    assert await snapshot(engine) == before


@each_bad_code
async def test_bad_child_code_is_refused_and_writes_nothing(engine, dispatcher, code):
    await scan_parent(engine, dispatcher, new_id(), PARENT)
    before = await snapshot(engine)

    result = await link_child(engine, dispatcher, new_id(), PARENT, code)

    assert (result.outcome, result.error) == (Outcome.REJECTED, "INVALID_CODE")
    assert result.message in CODE_MESSAGES
    assert await snapshot(engine) == before


# The remaining tables run in one database per test: a database per row would be slow.


@pytest.mark.parametrize("command", [link_child, undo_last_child, finish_parent])
async def test_bad_parent_named_by_a_command_is_refused_and_writes_nothing(
    engine, dispatcher, command
):
    before = await snapshot(engine)

    for name, code in BAD_CODES.items():
        arguments = (code, "ABC123") if command is link_child else (code,)
        result = await command(engine, dispatcher, new_id(), *arguments)
        assert (result.outcome, result.error) == (Outcome.REJECTED, "INVALID_CODE"), name
        assert result.message in CODE_MESSAGES, name
    assert await snapshot(engine) == before


@pytest.mark.parametrize("command", [link_child, undo_last_child, finish_parent])
async def test_unknown_parent_is_refused_and_writes_nothing(engine, dispatcher, command):
    before = await snapshot(engine)
    arguments = ("SB99999", "ABC123") if command is link_child else ("SB99999",)

    result = await command(engine, dispatcher, new_id(), *arguments)

    assert (result.outcome, result.error) == (Outcome.REJECTED, "PARENT_NOT_FOUND")
    assert "SB99999 is not registered" in result.message
    assert await snapshot(engine) == before


async def test_bad_or_unknown_bag_for_a_bill_or_deletion_is_refused_and_writes_nothing(
    engine, biller, admin
):
    await create_bill(engine, biller, new_id(), "B-001", 5)
    before = await snapshot(engine)

    for name, code in {**BAD_CODES, "unknown": "NOPE1"}.items():
        linked = await link_bill_parent(engine, biller, new_id(), "B-001", code)
        deleted = await delete_bag(engine, admin, new_id(), code)
        expected = "BAG_NOT_FOUND" if name == "unknown" else "INVALID_CODE"
        for result in (linked, deleted):
            assert (result.outcome, result.error) == (Outcome.REJECTED, expected), name
            assert result.message, name
    assert await snapshot(engine) == before


@pytest.mark.parametrize(
    "number",
    [None, "", "   ", 7, ["B-1"], "B" * 51, "B" * 10_240, "B-\x00-1", "B\n1", "B\ud8001"],
)
async def test_bad_bill_number_is_refused_and_writes_nothing(engine, biller, number):
    before = await snapshot(engine)

    created = await create_bill(engine, biller, new_id(), number, 5)
    edited = await edit_bill(engine, biller, new_id(), number, capacity=5)

    for result in (created, edited):
        assert result.outcome == Outcome.REJECTED
        assert result.error.startswith("BILL_NUMBER_")
        assert result.message.startswith("Bill number")
    assert await snapshot(engine) == before


BAD_CLIENT_IDS = {
    "empty": "",
    "65-chars": "x" * 65,
    "1000-chars": "x" * 1000,
    "None": None,
    "int": 123,
    "bytes": b"abc",
    "list": ["abc"],
    "control-character": "tab\tid",
    "NUL": "id\x00",
    "non-ascii": "ïd",
}


async def test_bad_client_id_is_refused_and_writes_nothing(engine, dispatcher, biller):
    await scan_parent(engine, dispatcher, new_id(), PARENT)
    before = await snapshot(engine)

    for name, client_id in BAD_CLIENT_IDS.items():
        results = [
            await scan_parent(engine, dispatcher, client_id, "SB22222"),
            await link_child(engine, dispatcher, client_id, PARENT, "ABC123"),
            await undo_last_child(engine, dispatcher, client_id, PARENT),
            await finish_parent(engine, dispatcher, client_id, PARENT),
            await create_bill(engine, biller, client_id, "B-001", 5),
        ]
        for result in results:
            assert (result.outcome, result.error) == (Outcome.REJECTED, "INVALID_CLIENT_ID"), name
            assert "client id" in result.message, name
    assert await snapshot(engine) == before


async def test_client_id_of_sixty_four_printable_characters_is_accepted(engine, dispatcher):
    result = await scan_parent(engine, dispatcher, "~" * 64, PARENT)

    assert result.ok
    assert await value(engine, "SELECT client_id FROM scan") == "~" * 64


# A ?next= that a browser would follow off the site: each falls back to the home page.
OFF_SITE_NEXT = [
    "//evil.com/x",
    "///evil.com/x",
    "////evil.com/x",
    "/\\evil.com/x",
    "/%5Cevil.com/x",
    "/%5cevil.com/x",
    "\\\\evil.com/x",
    "\\/evil.com/x",
    "/\t/evil.com/x",
    "/%09/evil.com/x",
    "/\n/evil.com/x",
    "/\r\n/evil.com/x",
    "/%2F/evil.com/x",
    "/%2f%2fevil.com/x",
    "/%252F/evil.com/x",
    "\x00//evil.com/x",
    " /x",
    "\t/x",
    "/\u2028/evil.com",
    "http://evil.com/x",
    "HTTPS://evil.com/x",
    "https:evil.com/x",
    "javascript:alert(1)",
    "JaVaScRiPt:alert(1)",
    "data:text/html,<script>alert(1)</script>",
    "evil.com/x",
    "%2F%2Fevil.com/x",
]
ON_SITE_NEXT = ["/bills", "/bags?q=SB1&page=2", "/account", "/bags/SB12345"]


def _login_path(target: str) -> str:
    return "/login?" + urlencode({"next": target})


def _stays_on_site(response) -> bool:
    """Sent to the home page, or (a control character in the address) refused outright."""
    if response.status_code == 400:
        return "Location" not in response.headers
    return response.status_code == 302 and response.headers["Location"] == "/"


@pytest.mark.parametrize("target", OFF_SITE_NEXT)
async def test_signing_in_with_an_off_site_next_lands_on_the_home_page(app, target):
    response = await sign_in(app.test_client(), "admin", ADMIN_PASSWORD, path=_login_path(target))
    assert _stays_on_site(response)


@pytest.mark.parametrize("target", OFF_SITE_NEXT)
async def test_a_signed_in_visit_to_login_with_an_off_site_next_lands_on_the_home_page(app, target):
    client = app.test_client()
    await sign_in(client, "admin", ADMIN_PASSWORD)
    response = await client.get(_login_path(target))
    assert _stays_on_site(response)


@pytest.mark.parametrize("target", ON_SITE_NEXT)
async def test_signing_in_with_an_on_site_next_goes_there(app, target):
    client = app.test_client()
    response = await sign_in(client, "admin", ADMIN_PASSWORD, path=_login_path(target))
    assert response.headers["Location"] == target
    assert (await client.get(_login_path(target))).headers["Location"] == target


# Bad input over HTTP: refused at the edge, before any of it reaches a service or the database.

CONTROL_CHARACTERS = {"NUL": "\x00", "bell": "\x07", "escape": "\x1b", "DEL": "\x7f"}
# The list: each of these answered 500 (asyncpg: invalid byte sequence) for a NUL.
TEXT_INPUTS = {
    "username at sign-in": ("POST", "/login", {"username": "ad{c}min", "password": "x"}),
    "audit action filter": ("GET", "/admin/audit?action=user{c}", None),
    "stats areas": ("GET", "/api/v1/stats?areas=jaipur{c}", None),
    "area label": ("POST", "/admin/areas", {"name": "nagpur", "label": "Nag{c}pur"}),
    "display label": ("POST", "/admin/displays", {"label": "TV{c}", "areas": "jaipur"}),
    "user area": ("POST", "/admin/users", {"username": "ravi", "role": "biller", "area": "{c}"}),
    "field name": ("POST", "/admin/areas", {"name": "nagpur", "la{c}bel": "Nagpur"}),
}


async def _signed_in_admin(app):
    client = app.test_client()
    await sign_in(client, "admin", ADMIN_PASSWORD)
    return client, await csrf_from(client, "/")


def _with(template, character: str):
    if isinstance(template, str):
        return template.replace("{c}", quote(character) if "?" in template else character)
    return {_with(name, character): _with(field, character) for name, field in template.items()}


@pytest.mark.parametrize("where", list(TEXT_INPUTS.values()), ids=list(TEXT_INPUTS))
async def test_a_control_character_in_any_text_input_is_refused_and_changes_nothing(
    app, engine, where
):
    method, path, form = where
    if path == "/login":
        client = app.test_client()
        token = await csrf_from(client)
    else:
        client, token = await _signed_in_admin(app)
    before = await snapshot(engine)

    for name, character in CONTROL_CHARACTERS.items():
        response = await client.open(
            _with(path, character),
            method=method,
            form={**_with(form, character), "csrf_token": token} if form else None,
        )

        assert response.status_code == 400, name
        body = await response.get_data(as_text=True)
        assert "contains a control character; nothing was changed" in body, name
        if path.startswith("/api/"):
            assert "control character" in (await response.get_json())["error"], name
        elif path != "/login":
            assert 'href="/admin/users"' in body, "the refusal page keeps the admin's menu"
    assert await snapshot(engine) == before


async def test_a_control_character_in_a_json_body_is_refused_and_changes_nothing(app, engine):
    await make_actor(engine, Role.DISPATCHER, "jaipur", name="ravi")
    client = app.test_client()
    await sign_in(client, "ravi", "Secret-pass1")
    headers = {"X-CSRF-Token": await csrf_from(client, "/")}
    before = await snapshot(engine)

    for body, flaw in (
        ({"id": new_id(), "code": "SB12\x00345", "as": "parent"}, "control character"),
        ({"id": new_id(), "code": "SB12345", "as": "parent", "note\x1b": "x"}, "control"),
        ({"id": new_id(), "code": "SB12345", "as": "parent", "x": [{"y": "\x7f"}]}, "control"),
        ({"id": new_id(), "code": "SB\ud80012345", "as": "parent"}, "lone surrogate"),
    ):
        response = await client.post("/api/v1/scans", json=body, headers=headers)

        assert response.status_code == 400, body
        assert flaw in (await response.get_json())["error"], body
    assert await snapshot(engine) == before


async def test_tabs_and_line_breaks_are_still_accepted_in_text(app, engine):
    client, token = await _signed_in_admin(app)

    response = await client.post(
        "/bills",
        form={
            "client_id": new_id(),
            "number": "B-001",
            "capacity": "5",
            "description": "Line one\r\n\tline two",
            "csrf_token": token,
        },
    )

    assert response.status_code == 303
    assert await value(engine, "SELECT description FROM bill") == "Line one\r\n\tline two"


async def test_a_json_request_to_a_page_gets_its_refusal_in_json(app, engine):
    client, token = await _signed_in_admin(app)

    response = await client.post(
        "/admin/areas",
        json={"name": "nagpur", "label": "Nag\x00pur"},
        headers={"X-CSRF-Token": token},
    )

    assert response.status_code == 400
    assert "control character" in (await response.get_json())["error"]


NO_ROUTE = "There is nothing here."  # the 404 page of an address that matches no route


async def _id_routes(app, client, number: str) -> list[tuple[str, str, int, bool]]:
    """(method, path, status, routed) of every route with an id in its path, given ``number``."""
    token = await csrf_from(client, "/")
    answers = []
    for rule in app.app.url_map.iter_rules():
        if "<int:" not in rule.rule:
            continue
        path = re.sub(
            r"<(?:(int):)?(\w+)>", lambda m: number if m[1] else SAMPLE_ARGUMENTS[m[2]], rule.rule
        )
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            response = await client.open(
                path, method=method, form={"csrf_token": token} if method == "POST" else None
            )
            routed = NO_ROUTE not in await response.get_data(as_text=True)
            answers.append((method, path, response.status_code, routed))
    return answers


@pytest.mark.parametrize(
    "number",
    ["2147483648", "99999999999999999999", "0", "9" * 5000],
    ids=["2**31", "20 digits", "zero", "5000 digits"],
)
async def test_an_id_outside_the_databases_integers_is_no_route_on_every_id_route(app, number):
    client, _ = await _signed_in_admin(app)

    answers = await _id_routes(app, client, number)

    assert ("GET", f"/bills/{number}", 404, False) in answers
    assert ("POST", f"/admin/displays/{number}/revoke", 404, False) in answers
    assert ("GET", f"/exports/bills/{number}.csv", 404, False) in answers
    assert [a for a in answers if a[2:] != (404, False)] == []


async def test_the_largest_id_the_database_holds_still_reaches_every_id_route(app):
    client, _ = await _signed_in_admin(app)

    answers = await _id_routes(app, client, str(2**31 - 1))

    assert len(answers) > 10
    assert [answer for answer in answers if answer[2] >= 500 or not answer[3]] == []


async def _signed_in_dispatcher(app, engine):
    await make_actor(engine, Role.DISPATCHER, "jaipur", name="ravi")
    client = app.test_client()
    await sign_in(client, "ravi", "Secret-pass1")
    return client, {"X-CSRF-Token": await csrf_from(client, "/")}


UNREADABLE_BODIES = {
    "30,000 nested arrays": (b"[" * 30_000, "not valid JSON"),
    "nested too deeply": (b'{"a":' * 9 + b"1" + b"}" * 9, "nested more than 8 levels"),
    "invalid UTF-8": (b'{"id": "\xff\xfe", "code": "SB12345", "as": "parent"}', "not UTF-8"),
    "not JSON": (b"id=1&code=SB12345", "not valid JSON"),
    "empty": (b"", "not valid JSON"),
}


@pytest.mark.parametrize("body", list(UNREADABLE_BODIES.values()), ids=list(UNREADABLE_BODIES))
async def test_an_unreadable_scan_body_is_refused_with_the_reason(app, engine, body):
    client, headers = await _signed_in_dispatcher(app, engine)
    raw, reason = body
    before = await snapshot(engine)

    response = await client.post(
        "/api/v1/scans", data=raw, headers={**headers, "Content-Type": "application/json"}
    )

    assert response.status_code == 400
    assert reason in (await response.get_json())["error"]
    assert await snapshot(engine) == before


@pytest.mark.parametrize("kind", [{}, [1], 7, None, "undo", "finish", "launch"])
async def test_the_scan_endpoint_takes_scans_only_whatever_type_the_body_names(app, engine, kind):
    client, headers = await _signed_in_dispatcher(app, engine)
    scan = {"id": new_id(), "code": PARENT, "as": "parent"}
    await client.post("/api/v1/scans", json=scan, headers=headers)
    before = await snapshot(engine)

    response = await client.post(
        "/api/v1/scans", json={"type": kind, "id": new_id(), "parent": PARENT}, headers=headers
    )

    assert response.status_code == 400
    assert "takes scans only" in (await response.get_json())["error"]
    assert await snapshot(engine) == before


async def test_a_scan_body_may_still_say_it_is_a_scan(app, engine):
    client, headers = await _signed_in_dispatcher(app, engine)

    response = await client.post(
        "/api/v1/scans",
        json={"type": "scan", "id": new_id(), "code": PARENT, "as": "parent"},
        headers=headers,
    )

    assert response.status_code == 200
    assert (await response.get_json())["outcome"] == "ok"
