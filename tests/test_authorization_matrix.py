"""Every route of the app, for every kind of visitor: allowed or refused, as SPEC §4 says.

The table is checked against the app's URL map: a new route without a line here fails, so
nothing is ever left open by accident.
"""

import re

import pytest

from tests.conftest import make_actor
from tests.web import ADMIN_PASSWORD, app_for, csrf_from, sign_in
from traitortrack.domain.roles import Role

PUBLIC = "public"
ADMIN = {"admin"}
STAFF = {"admin", "biller", "dispatcher", "supervisor"}
SCANNING = {"admin", "dispatcher"}
BILLING = {"admin", "biller"}
VIEWING = {"admin", "biller", "supervisor"}
OVERSEEING = {"admin", "supervisor"}

EXPECTED: dict[str, str | set[str]] = {
    "static": PUBLIC,
    "health.health": PUBLIC,
    "health.ready": PUBLIC,
    "auth.login": PUBLIC,
    "auth.login_submit": PUBLIC,
    "auth.totp": PUBLIC,
    "auth.totp_submit": PUBLIC,
    "auth.logout": PUBLIC,
    "auth.account_page": STAFF,
    "auth.change_password": STAFF,
    "auth.totp_start": ADMIN,
    "auth.totp_confirm": ADMIN,
    "auth.totp_disable": ADMIN,
    "auth.session_info": STAFF,
    "auth.keep_session": STAFF,
    "dashboard.home": STAFF,
    "admin.users": ADMIN,
    "admin.create_user": ADMIN,
    "admin.user": ADMIN,
    "admin.update_user": ADMIN,
    "admin.deactivate_user": ADMIN,
    "admin.reactivate_user": ADMIN,
    "admin.reset_password": ADMIN,
    "admin.revoke_sessions": ADMIN,
    "admin.delete_user": ADMIN,
    "admin.areas": ADMIN,
    "admin.add_area": ADMIN,
    "admin.displays": ADMIN,
    "admin.create_display": ADMIN,
    "admin.revoke_display": ADMIN,
    "admin.open_display": PUBLIC,
    "admin.audit": ADMIN,
    "scan.scanner": SCANNING,
    "bills.index": VIEWING,
    "bills.create": BILLING,
    "bills.view": VIEWING,
    "bills.live": VIEWING,
    "bills.print_view": VIEWING,
    "bills.edit": BILLING,
    "bills.link_parent": BILLING,
    "bills.remove_parent": BILLING,
    "bills.complete": BILLING,
    "bills.reopen": BILLING,
    "bills.delete": ADMIN,
    "bags.search": STAFF,
    "bags.detail": STAFF,
    "bags.delete": ADMIN,
    "exports.index": STAFF,
    "exports.bags": STAFF,
    "exports.bills": VIEWING,
    "exports.bill": VIEWING,
    "exports.activity": OVERSEEING,
    "api.post_scan": SCANNING,
    "api.missed_events": STAFF,
    "api.stats": STAFF,  # and display links (tests/test_monitoring.py)
    "dashboard.wall": OVERSEEING,  # and display links (tests/test_monitoring.py)
    "monitoring.system_health": ADMIN,
    "monitoring.system_health_history": ADMIN,
    "monitoring.metrics": ADMIN,  # or the scrape token (tests/test_monitoring.py)
    "ws.ws": PUBLIC,  # authenticates itself before accepting: see tests/test_ws.py
}
SAMPLE_ARGUMENTS = {
    "user_id": "999999",
    "link_id": "999999",
    "token": "nope",
    "filename": "css/app.css",
    "bill_id": "999999",
    "code": "SB99999",
    "fmt": "csv",
}
VISITORS = ["anonymous", "dispatcher", "biller", "supervisor", "admin"]


def _path(rule) -> str:
    return re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", lambda m: SAMPLE_ARGUMENTS[m.group(1)], rule.rule)


def test_every_route_has_a_line_in_the_matrix(settings):
    app = app_for(settings)
    endpoints = {rule.endpoint for rule in app.url_map.iter_rules()}
    assert endpoints == set(EXPECTED)
    for endpoint in endpoints - {"static"}:
        declared = getattr(app.view_functions[endpoint], "access", None)
        assert declared is not None, f"{endpoint} declares no access rule"
        kind, roles = declared
        expected = EXPECTED[endpoint]
        assert (kind == "public") == (expected == PUBLIC), endpoint
        if expected != PUBLIC:
            assert {str(r) for r in roles} == expected, endpoint


@pytest.mark.parametrize("visitor", VISITORS)
async def test_each_visitor_reaches_exactly_what_their_role_allows(settings, engine, visitor):
    app = app_for(settings)
    async with app.test_app() as test_app:
        client = test_app.test_client()
        if visitor == "admin":
            await sign_in(client, "admin", ADMIN_PASSWORD)
        elif visitor != "anonymous":
            await make_actor(engine, Role(visitor), "jaipur", name=f"{visitor}1")
            await sign_in(client, f"{visitor}1", "Secret-pass1")
        token = await csrf_from(client, "/login" if visitor == "anonymous" else "/")
        rules = sorted(
            (r for r in test_app.app.url_map.iter_rules() if r.endpoint != "ws.ws"),
            key=lambda r: r.endpoint == "auth.logout",  # signing out last
        )
        wrong = []
        for rule in rules:
            for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
                response = await client.open(
                    _path(rule),
                    method=method,
                    form={"csrf_token": token} if method == "POST" else None,
                    headers={"X-CSRF-Token": token, "Accept": "text/html"},
                )
                expected = EXPECTED[rule.endpoint]
                allowed = expected == PUBLIC or visitor in expected
                to_login = response.status_code == 302 and response.headers["Location"].startswith(
                    "/login?next="
                )
                # A public form answers 401 to wrong credentials: that is not a role refusal.
                refusals = {403} if expected == PUBLIC else {401, 403}
                refused = response.status_code in refusals or to_login
                if allowed == refused:
                    wrong.append((method, rule.rule, response.status_code))
                if not allowed and visitor != "anonymous" and response.status_code != 403:
                    wrong.append((method, rule.rule, "signed in but not 403"))
        assert wrong == []
