"""SPEC §4-§5 administration: users and their guards, dispatch areas, display links, audit log."""

import asyncio
import re
from datetime import date, datetime
from urllib.parse import urlencode

import pytest
from sqlalchemy import text

from tests.conftest import make_actor
from tests.db import rows, value
from tests.web import ADMIN_PASSWORD
from traitortrack.domain.roles import MAX_DISPATCHERS_PER_AREA, Role
from traitortrack.security import hash_password, hash_token, verify_password
from traitortrack.services import people, users
from traitortrack.services.people import AuditFilter

USER_PASSWORD = "Secret-pass1"  # what make_actor gives everyone
CSRF_INPUT = re.compile(r'name="csrf_token" value="([^"]+)"')
CSRF_META = re.compile(r'<meta name="csrf-token" content="([^"]+)"')


@pytest.fixture(autouse=True)
def fast_hashing(monkeypatch):
    """Production bcrypt cost is slow on purpose; the rules under test do not depend on it."""

    def cheap(password: str, rounds: int = 4) -> str:
        return hash_password(password, rounds)

    monkeypatch.setattr(people, "hash_password", cheap)
    monkeypatch.setattr(users, "hash_password", cheap)  # the start-up admin


class Browser:
    """One person's browser: a cookie jar plus the CSRF token its pages carry."""

    def __init__(self, app) -> None:
        self.client = app.test_client()
        self.token = ""

    async def sign_in(self, username: str, password: str = USER_PASSWORD) -> None:
        page = await self.client.get("/login")
        token = CSRF_INPUT.search(await page.get_data(as_text=True)).group(1)
        form = {"username": username, "password": password, "csrf_token": token}
        response = await self.client.post("/login", form=form)
        assert response.status_code == 302, await response.get_data(as_text=True)
        home = await self.client.get("/")
        self.token = CSRF_META.search(await home.get_data(as_text=True)).group(1)

    async def get(self, path: str, **kwargs):
        return await self.client.get(path, **kwargs)

    async def post(self, path: str, form: dict | None = None, **kwargs):
        """A form post; a list value is sent as repeated fields, as checkboxes are."""
        fields = urlencode({"csrf_token": self.token, **(form or {})}, doseq=True)
        headers = {"Content-Type": "application/x-www-form-urlencoded", **kwargs.pop("headers", {})}
        return await self.client.post(path, data=fields, headers=headers, **kwargs)

    async def signed_in(self) -> bool:
        response = await self.client.get("/")
        return response.status_code == 200


async def signed_in_as(app, username: str, password: str = USER_PASSWORD) -> Browser:
    browser = Browser(app)
    await browser.sign_in(username, password)
    return browser


async def admin_browser(app) -> Browser:
    return await signed_in_as(app, "admin", ADMIN_PASSWORD)


async def page_text(response) -> str:
    return await response.get_data(as_text=True)


async def user_id(engine, username: str) -> int:
    return await value(engine, 'SELECT id FROM "user" WHERE username = :u', u=username)


async def active_dispatchers(engine, area: str) -> int:
    return await value(
        engine,
        "SELECT count(*) FROM \"user\" WHERE role = 'dispatcher' AND active AND area = :a",
        a=area,
    )


# Creating users -------------------------------------------------------------------------------


async def test_admin_creates_a_user_whose_generated_password_is_shown_once_and_works(app, engine):
    admin = await admin_browser(app)
    response = await admin.post(
        "/admin/users", {"username": "ravi.k", "role": "dispatcher", "area": "jaipur"}
    )
    body = await page_text(response)
    assert response.status_code == 200
    assert "User ravi.k created as dispatcher in jaipur." in body
    password = re.search(r"<code data-secret>([^<]+)</code>", body).group(1)
    assert "data-secret" not in await page_text(await admin.get("/admin/users"))
    ravi = await signed_in_as(app, "ravi.k", password)
    assert await ravi.signed_in()
    their_page = await page_text(await admin.get(f"/admin/users/{await user_id(engine, 'ravi.k')}"))
    assert '<option value="jaipur" selected>' in their_page
    assert '<option value="dispatcher" selected>' in their_page


async def test_admin_may_choose_the_new_users_password(engine):
    admin = await make_actor(engine, Role.ADMIN)
    done = await people.create_person(engine, admin, "meena", "biller", "", "Chosen-pass1")
    assert done.ok and done.password is None
    stored = await value(engine, "SELECT password_hash FROM \"user\" WHERE username = 'meena'")
    assert verify_password("Chosen-pass1", stored)


@pytest.mark.parametrize(
    "username",
    ["ab", "x" * 65, "has space", "ümlaut", "semi;colon", "", None, "<script>"],
)
async def test_usernames_are_3_to_64_letters_digits_dots_dashes_or_underscores(engine, username):
    admin = await make_actor(engine, Role.ADMIN)
    done = await people.create_person(engine, admin, username, "biller", "")
    assert not done.ok
    assert (
        done.message == "Usernames are 3-64 characters: letters, digits, dot, dash or underscore."
    )


async def test_usernames_are_unique_whatever_their_case(engine):
    admin = await make_actor(engine, Role.ADMIN)
    assert (await people.create_person(engine, admin, "Priya_S", "biller", "")).ok
    done = await people.create_person(engine, admin, "priya_s", "supervisor", "")
    assert (done.ok, done.message) == (False, "User priya_s already exists.")


@pytest.mark.parametrize(
    ("password", "missing"),
    [
        ("Short1!", "at least 8 characters"),
        ("lowercase-only1", "an upper-case letter"),
        ("NoDigits-here", "a digit"),
        ("NoSymbol123", "a symbol"),
    ],
)
async def test_new_passwords_must_meet_the_policy(engine, password, missing):
    admin = await make_actor(engine, Role.ADMIN)
    done = await people.create_person(engine, admin, "weakling", "biller", "", password)
    assert not done.ok and missing in done.message
    assert await user_id(engine, "weakling") is None


async def test_a_dispatcher_must_have_a_known_area(engine):
    admin = await make_actor(engine, Role.ADMIN)
    biller = await make_actor(engine, Role.BILLER)
    no_area = await people.create_person(engine, admin, "nobody", "dispatcher", "")
    assert no_area.message == "A dispatcher must have a dispatch area: choose one."
    unknown = await people.create_person(engine, admin, "nobody", "dispatcher", "atlantis")
    assert unknown.message == "There is no dispatch area called atlantis."
    to_dispatcher = await people.update_person(engine, admin, biller.user_id, "dispatcher", "")
    assert to_dispatcher.message == "A dispatcher must have a dispatch area: choose one."
    bad_role = await people.create_person(engine, admin, "nobody", "overlord", "")
    assert not bad_role.ok and "Choose a role" in bad_role.message


# The dispatcher cap ---------------------------------------------------------------------------


async def test_twelve_simultaneous_dispatchers_for_an_empty_area_create_exactly_ten(engine):
    admin = await make_actor(engine, Role.ADMIN)
    assert await active_dispatchers(engine, "akola") == 0
    results = await asyncio.gather(
        *(
            people.create_person(engine, admin, f"akola_{n}", "dispatcher", "akola")
            for n in range(12)
        )
    )
    assert sum(done.ok for done in results) == MAX_DISPATCHERS_PER_AREA
    refused = [done for done in results if not done.ok]
    assert [done.error for done in refused] == ["AREA_FULL", "AREA_FULL"]
    assert "already has 10 active dispatchers" in refused[0].message
    assert await active_dispatchers(engine, "akola") == MAX_DISPATCHERS_PER_AREA


async def test_moving_promoting_or_reactivating_a_dispatcher_respects_the_cap(engine):
    admin = await make_actor(engine, Role.ADMIN)
    team = [await make_actor(engine, Role.DISPATCHER, "hisar") for _ in range(10)]
    outsider = await make_actor(engine, Role.DISPATCHER, "raipur")
    biller = await make_actor(engine, Role.BILLER)

    moved = await people.update_person(engine, admin, outsider.user_id, "dispatcher", "hisar")
    promoted = await people.update_person(engine, admin, biller.user_id, "dispatcher", "hisar")
    assert (moved.error, promoted.error) == ("AREA_FULL", "AREA_FULL")

    assert (await people.set_active(engine, admin, team[0].user_id, active=False)).ok
    assert (await people.update_person(engine, admin, outsider.user_id, "dispatcher", "hisar")).ok
    reactivated = await people.set_active(engine, admin, team[0].user_id, active=True)
    assert reactivated.error == "AREA_FULL"
    # A dispatcher already in the area can be edited without counting twice.
    assert (await people.update_person(engine, admin, team[1].user_id, "dispatcher", "hisar")).ok
    assert await active_dispatchers(engine, "hisar") == MAX_DISPATCHERS_PER_AREA


# Guards on admins and on oneself --------------------------------------------------------------


async def test_nobody_changes_their_own_role_deactivates_or_deletes_themselves(engine):
    admin = await make_actor(engine, Role.ADMIN)
    await make_actor(engine, Role.ADMIN)  # so the last-admin guard is not what answers
    me = admin.user_id
    demoted = await people.update_person(engine, admin, me, "biller", "")
    deactivated = await people.set_active(engine, admin, me, active=False)
    deleted = await people.delete_person(engine, admin, me)
    assert demoted.message == "You cannot change the role of yourself; ask another admin."
    assert deactivated.message == "You cannot deactivate yourself; ask another admin."
    assert deleted.message == "You cannot delete yourself; ask another admin."
    # The area of one's own account is not a role change.
    assert (await people.update_person(engine, admin, me, "admin", "jaipur")).ok
    state = await rows(engine, 'SELECT role, active FROM "user" WHERE id = :i', i=me)
    assert state == [("admin", True)]


async def test_the_last_active_admin_cannot_be_demoted_deactivated_or_deleted(engine):
    admin = await make_actor(engine, Role.ADMIN)
    me = admin.user_id
    for done in (
        await people.update_person(engine, admin, me, "supervisor", ""),
        await people.set_active(engine, admin, me, active=False),
        await people.delete_person(engine, admin, me),
    ):
        assert done.error == "LAST_ADMIN"
        assert f"{admin.username} is the last active admin" in done.message
    assert await value(engine, "SELECT count(*) FROM \"user\" WHERE role = 'admin' AND active") == 1


async def test_two_admins_demoting_each_other_at_once_leave_one_admin(engine):
    first = await make_actor(engine, Role.ADMIN)
    second = await make_actor(engine, Role.ADMIN)
    results = await asyncio.gather(
        people.update_person(engine, first, second.user_id, "biller", ""),
        people.update_person(engine, second, first.user_id, "biller", ""),
    )
    assert sorted(done.ok for done in results) == [False, True]
    assert await value(engine, "SELECT count(*) FROM \"user\" WHERE role = 'admin' AND active") == 1


# Sessions -------------------------------------------------------------------------------------


async def test_resetting_a_password_ends_the_users_sessions_and_the_new_one_works(app, engine):
    dispatcher = await make_actor(engine, Role.DISPATCHER, "jaipur")
    their_phone = await signed_in_as(app, dispatcher.username)
    admin = await admin_browser(app)
    response = await admin.post(f"/admin/users/{dispatcher.user_id}/password")
    body = await page_text(response)
    assert response.status_code == 200 and "it is not shown again" in body
    password = re.search(r"<code data-secret>([^<]+)</code>", body).group(1)

    after = await their_phone.get("/")
    assert after.status_code == 302 and after.headers["Location"].startswith("/login")
    with pytest.raises(AssertionError):
        await signed_in_as(app, dispatcher.username, USER_PASSWORD)
    assert await (await signed_in_as(app, dispatcher.username, password)).signed_in()


@pytest.mark.parametrize("lift", ["reset_password", "reactivate"])
async def test_an_admins_reset_or_reactivation_lifts_the_users_sign_in_pauses(app, engine, lift):
    biller = await make_actor(engine, Role.BILLER)
    admin = await users.actor_for(engine, "admin")
    if lift == "reactivate":
        assert (await people.set_active(engine, admin, biller.user_id, active=False)).ok
    async with engine.begin() as conn:
        for pause in (
            "INSERT INTO sign_in_guard (user_id, client, locked_until)"
            " VALUES (:id, 'somewhere', now() + interval '15 minutes')",
            "UPDATE \"user\" SET totp_locked_until = now() + interval '15 minutes' WHERE id = :id",
        ):
            await conn.execute(text(pause), {"id": biller.user_id})
    if lift == "reactivate":
        assert (await people.set_active(engine, admin, biller.user_id, active=True)).ok
    else:
        assert (await people.reset_password(engine, admin, biller.user_id)).ok
    assert await value(engine, "SELECT count(*) FROM sign_in_guard") == 0
    assert await value(engine, 'SELECT count(totp_locked_until) FROM "user"') == 0


async def test_changing_a_role_ends_the_users_sessions(app, engine):
    biller = await make_actor(engine, Role.BILLER)
    their_laptop = await signed_in_as(app, biller.username)
    admin = await admin_browser(app)
    response = await admin.post(
        f"/admin/users/{biller.user_id}", {"role": "supervisor", "area": ""}
    )
    assert "is now supervisor" in await page_text(response)
    after = await their_laptop.get("/")
    assert after.status_code == 302 and after.headers["Location"].startswith("/login")


async def test_an_area_change_alone_keeps_the_dispatcher_signed_in(app, engine):
    dispatcher = await make_actor(engine, Role.DISPATCHER, "jaipur")
    their_phone = await signed_in_as(app, dispatcher.username)
    admin = await admin_browser(app)
    await admin.post(f"/admin/users/{dispatcher.user_id}", {"role": "dispatcher", "area": "akola"})
    assert await their_phone.signed_in()
    assert "· akola" in await page_text(await their_phone.get("/"))


async def test_revoking_sessions_signs_the_user_out_everywhere(app, engine):
    supervisor = await make_actor(engine, Role.SUPERVISOR)
    phone = await signed_in_as(app, supervisor.username)
    tv = await signed_in_as(app, supervisor.username)
    admin = await admin_browser(app)
    response = await admin.post(f"/admin/users/{supervisor.user_id}/sessions")
    assert "has been ended" in await page_text(response)
    assert not await phone.signed_in()
    assert not await tv.signed_in()


async def test_an_admin_revoking_their_own_sessions_stays_signed_in_on_this_device(app, engine):
    admin = await admin_browser(app)
    other_device = await admin_browser(app)
    admin_id = await user_id(engine, "admin")
    response = await admin.post(f"/admin/users/{admin_id}/sessions")
    assert response.status_code == 200
    assert await admin.signed_in()
    assert not await other_device.signed_in()


async def test_a_deactivated_user_is_signed_out_and_reactivation_does_not_revive_old_sessions(
    app, engine
):
    biller = await make_actor(engine, Role.BILLER)
    old_session = await signed_in_as(app, biller.username)
    admin = await admin_browser(app)
    await admin.post(f"/admin/users/{biller.user_id}/deactivate")
    assert not await old_session.signed_in()
    refused = Browser(app)
    with pytest.raises(AssertionError):
        await refused.sign_in(biller.username)
    response = await admin.post(f"/admin/users/{biller.user_id}/reactivate")
    assert "is active again" in await page_text(response)
    assert not await old_session.signed_in()
    assert await (await signed_in_as(app, biller.username)).signed_in()


# Deleting -------------------------------------------------------------------------------------


async def test_deleting_a_user_keeps_their_audit_rows_with_no_author(app, engine):
    dispatcher = await make_actor(engine, Role.DISPATCHER, "jaipur")
    await signed_in_as(app, dispatcher.username)  # writes login.password_ok as them
    admin = await admin_browser(app)
    path = f"/admin/users/{dispatcher.user_id}/delete"
    unconfirmed = await admin.post(path, {"confirm": "someone else"})
    assert unconfirmed.status_code == 400
    assert await user_id(engine, dispatcher.username) == dispatcher.user_id

    response = await admin.post(path, {"confirm": dispatcher.username})
    assert response.status_code == 200
    assert f"User {dispatcher.username} deleted." in await page_text(response)
    assert await user_id(engine, dispatcher.username) is None
    theirs = await rows(
        engine,
        "SELECT actor_id, action FROM audit WHERE actor_name = :name ORDER BY id",
        name=dispatcher.username,
    )
    assert "login.password_ok" in {row.action for row in theirs}
    assert {row.actor_id for row in theirs} == {None}
    deletion = await rows(
        engine,
        "SELECT before, after FROM audit WHERE action = 'user.delete' AND entity_id = :name",
        name=dispatcher.username,
    )
    assert deletion == [({**deletion[0].before, "role": "dispatcher"}, None)]


# Audit of changes -----------------------------------------------------------------------------


async def test_every_change_is_audited_with_who_before_after_request_id_and_ip(app, engine):
    biller = await make_actor(engine, Role.BILLER)
    admin = await admin_browser(app)
    response = await admin.post(
        f"/admin/users/{biller.user_id}",
        {"role": "dispatcher", "area": "indore"},
        scope_base={"client": ("203.0.113.77", 50000)},
    )
    [entry] = await rows(
        engine,
        "SELECT * FROM audit WHERE action = 'user.role_change' AND entity_id = :name",
        name=biller.username,
    )
    assert entry.actor_name == "admin" and entry.actor_id == await user_id(engine, "admin")
    assert entry.entity_type == "user"
    assert entry.before == {
        "username": biller.username,
        "role": "biller",
        "area": None,
        "active": True,
    }
    assert entry.after["role"] == "dispatcher" and entry.after["area"] == "indore"
    assert entry.request_id == response.headers["X-Request-ID"]
    assert entry.ip == "203.0.113.0"
    [event] = await rows(engine, "SELECT kind, area, payload FROM event ORDER BY id DESC LIMIT 1")
    assert (event.kind, event.area) == ("user.changed", None)
    assert event.payload == {"user_id": biller.user_id, "sessions_revoked": True, "deleted": False}


async def test_a_refused_change_writes_nothing(engine):
    admin = await make_actor(engine, Role.ADMIN)
    before = await value(engine, "SELECT count(*) FROM audit")
    done = await people.create_person(engine, admin, "lonely", "dispatcher", "")
    assert not done.ok
    assert await value(engine, "SELECT count(*) FROM audit") == before
    assert await value(engine, "SELECT count(*) FROM event") == 0


async def test_an_admin_demoted_meanwhile_can_change_nothing(engine):
    first = await make_actor(engine, Role.ADMIN)
    second = await make_actor(engine, Role.ADMIN)
    assert (await people.update_person(engine, first, second.user_id, "biller", "")).ok
    done = await people.create_person(engine, second, "sneaky", "admin", "")
    assert done.error == "NOT_ADMIN"


# Bad input over HTTP --------------------------------------------------------------------------


async def test_bad_admin_input_answers_with_a_message_never_a_server_error(app, engine):
    admin = await admin_browser(app)
    cases = [
        ("/admin/users", {"username": "x", "role": "biller"}, 400),
        ("/admin/users", {"username": "okname", "role": "king"}, 400),
        ("/admin/users", {"username": "okname", "role": "dispatcher", "area": "nowhere"}, 400),
        ("/admin/users/999999", {"role": "biller"}, 404),
        ("/admin/users/999999/deactivate", {}, 404),
        ("/admin/users/999999/password", {}, 404),
        ("/admin/users/999999/delete", {"confirm": "x"}, 404),
        ("/admin/areas", {"name": "Bad Name!", "label": "x"}, 400),
        ("/admin/displays", {"label": "", "areas": "jaipur"}, 400),
        ("/admin/displays", {"label": "TV", "areas": "atlantis"}, 400),
        ("/admin/displays/999999/revoke", {}, 404),
    ]
    for path, form, status in cases:
        response = await admin.post(path, form)
        assert response.status_code == status, (path, form)
        assert 'class="banner error"' in await page_text(response), (path, form)
    assert (await admin.get("/admin/users/999999")).status_code == 404
    assert (await admin.get("/admin/audit?since=yesterday&before=abc")).status_code == 400


# Dispatch areas -------------------------------------------------------------------------------


async def test_admin_adds_a_dispatch_area_which_lists_its_dispatcher_count(app, engine):
    admin = await admin_browser(app)
    response = await admin.post("/admin/areas", {"name": "nagpur", "label": "Nagpur Depot"})
    assert "Dispatch area nagpur (Nagpur Depot) added." in await page_text(response)
    again = await admin.post("/admin/areas", {"name": "nagpur", "label": ""})
    assert "Dispatch area nagpur already exists." in await page_text(again)
    await make_actor(engine, Role.DISPATCHER, "nagpur")
    areas = {area.name: area for area in await people.list_areas(engine)}
    assert (areas["nagpur"].label, areas["nagpur"].dispatchers) == ("Nagpur Depot", 1)
    assert "Nagpur Depot" in await page_text(await admin.get("/admin/areas"))


@pytest.mark.parametrize("name", ["A", "Nagpur", "new area", "x" * 41, "delhi-ncr", ""])
async def test_area_names_are_2_to_40_lower_case_letters_digits_or_underscores(engine, name):
    admin = await make_actor(engine, Role.ADMIN)
    done = await people.add_area(engine, admin, name, "")
    assert done.error == "INVALID_AREA"


# Display links --------------------------------------------------------------------------------


async def test_a_display_link_opens_the_wall_until_it_is_revoked(app, engine):
    admin = await admin_browser(app)
    response = await admin.post(
        "/admin/displays", {"label": "Bay 3 TV", "areas": ["jaipur", "akola", "jaipur"]}
    )
    body = await page_text(response)
    url = re.search(r"<code data-secret>([^<]+)</code>", body).group(1)
    token = url.rsplit("/display/", 1)[1]
    [link] = await rows(engine, "SELECT id, token_hash, areas FROM display_link")
    assert link.token_hash == hash_token(token) and link.areas == ["akola", "jaipur"]
    assert token not in await page_text(await admin.get("/admin/displays"))

    tv = app.test_client()
    opened = await tv.get(f"/display/{token}")
    assert opened.status_code == 302 and opened.headers["Location"] == "/wall"
    async with tv.session_transaction() as session:
        assert session["display_link"] == link.id
    assert (await people.display_link_access(engine, link.id)).areas == ["akola", "jaipur"]

    await admin.post(f"/admin/displays/{link.id}/revoke")
    refused = await app.test_client().get(f"/display/{token}")
    assert refused.status_code == 404
    assert "not valid or has been revoked" in await page_text(refused)
    assert await people.display_link_access(engine, link.id) is None


async def test_an_unknown_display_token_is_a_clear_404(app):
    for token in ["nope", "x" * 43, "y" * 500, "dots.are.not.in.tokens.at.all"]:
        response = await app.test_client().get(f"/display/{token}")
        assert response.status_code == 404, token
        assert "not valid or has been revoked" in await page_text(response)


# Audit log ------------------------------------------------------------------------------------


async def insert_audit(engine, count: int, **values) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO audit (action, entity_type, entity_id, actor_name, at) "
                "SELECT :action, :entity_type, 'E' || n, :actor, :at FROM generate_series(1, :n) n"
            ),
            {
                "action": values.get("action", "bill.create"),
                "entity_type": values.get("entity_type", "bill"),
                "actor": values.get("actor", "meena"),
                "at": datetime.fromisoformat(values.get("at", "2025-01-15T10:00:00+00:00")),
                "n": count,
            },
        )


async def test_audit_pages_are_disjoint_and_in_id_order(engine):
    await insert_audit(engine, 120)
    every_id = [row.id for row in await rows(engine, "SELECT id FROM audit ORDER BY id DESC")]
    pages, before = [], None
    while True:
        found = await people.search_audit(engine, AuditFilter(), before)
        pages.append([entry.id for entry in found.entries])
        if found.older is None:
            break
        before = found.older
    assert [len(page) for page in pages][:2] == [50, 50]
    assert [entry for page in pages for entry in page] == every_id


async def test_the_audit_page_links_to_older_entries_keeping_the_filter(app, engine):
    await insert_audit(engine, 60, actor="meena")
    admin = await admin_browser(app)
    first = await page_text(await admin.get("/admin/audit?actor=meena"))
    older = re.search(r'rel="next" href="([^"]+)"', first).group(1).replace("&amp;", "&")
    assert "actor=meena" in older and "before=" in older
    second = await page_text(await admin.get(older))
    first_ids = set(re.findall(r'data-audit-id="(\d+)"', first))
    second_ids = set(re.findall(r'data-audit-id="(\d+)"', second))
    assert (len(first_ids), len(second_ids)) == (50, 10)
    assert not first_ids & second_ids
    assert 'rel="next"' not in second


async def test_the_audit_log_filters_by_actor_action_entity_and_dates(engine):
    await insert_audit(
        engine, 3, actor="meena", action="bill.create", at="2025-01-10T23:59:00+00:00"
    )
    await insert_audit(engine, 2, actor="Ravi", action="user.create", entity_type="user")
    await insert_audit(
        engine, 4, actor="ravi", action="bill.complete", at="2025-02-01T00:00:00+00:00"
    )

    async def count(**where) -> int:
        return len((await people.search_audit(engine, AuditFilter(**where), None)).entries)

    assert await count(actor="RAVI") == 6
    assert await count(action="bill.") == 7
    assert await count(action="bill.create") == 3
    assert await count(action="%") == 0  # a prefix, not a pattern
    assert await count(entity_type="user", entity_id="E2") == 1
    assert await count(until=date(2025, 1, 10)) == 3
    assert await count(since=date(2025, 1, 11)) == 6


async def test_the_audit_page_shows_snapshots_request_id_and_anonymised_ip(app, engine):
    biller = await make_actor(engine, Role.BILLER)
    admin = await admin_browser(app)
    response = await admin.post(
        f"/admin/users/{biller.user_id}/deactivate",
        scope_base={"client": ("198.51.100.23", 50000)},
    )
    body = await page_text(await admin.get("/admin/audit?action=user.deactivate"))
    assert response.headers["X-Request-ID"] in body
    assert "&#34;active&#34;:true" in body and "&#34;active&#34;:false" in body
    assert "· 198.51.100.0</td>" in body and "198.51.100.23" not in body


# Who may open these pages ---------------------------------------------------------------------

ADMIN_PAGES = ["/admin/users", "/admin/users/1", "/admin/areas", "/admin/displays", "/admin/audit"]


@pytest.mark.parametrize("role", [Role.BILLER, Role.DISPATCHER, Role.SUPERVISOR])
async def test_non_admins_get_403_on_admin_pages(app, engine, role):
    person = await make_actor(engine, role, "jaipur" if role == Role.DISPATCHER else None)
    browser = await signed_in_as(app, person.username)
    for path in ADMIN_PAGES:
        assert (await browser.get(path)).status_code == 403, path
    for path in ["/admin/users", "/admin/users/1/delete", "/admin/displays"]:
        assert (await browser.post(path, {"username": "x"})).status_code == 403, path
    assert "Users" not in await page_text(await browser.get("/"))


async def test_anonymous_visitors_are_sent_to_sign_in(app):
    for path in ADMIN_PAGES:
        response = await app.test_client().get(path)
        assert response.status_code == 302 and "/login" in response.headers["Location"]


async def test_admins_see_users_and_audit_in_the_navigation(app):
    admin = await admin_browser(app)
    home = await page_text(await admin.get("/"))
    assert 'href="/admin/users"' in home and 'href="/admin/audit"' in home
    listing = await page_text(await admin.get("/admin/users"))
    assert "admin</a> (you)" in listing
