"""What the logs say about a request: our request id, the client's kept apart, no secrets."""

import asyncio
import io
import logging

import httpx

from tests.conftest import make_actor
from tests.web import app_for
from traitortrack.domain.roles import Role
from traitortrack.logs import KeyValueFormatter
from traitortrack.services import people

CLIENT_REQUEST_ID = "proxy-7f3a.42"


def log_to(stream: io.StringIO) -> None:
    """Our log handler (which create_app installed) writes to ``stream`` from here on."""
    [ours] = [h for h in logging.getLogger().handlers if isinstance(h.formatter, KeyValueFormatter)]
    ours.setStream(stream)


async def test_the_clients_request_id_is_logged_apart_from_ours(settings):
    app = app_for(settings)
    async with app.test_app() as test_app:
        client = test_app.test_client()
        for given in (CLIENT_REQUEST_ID, "spaces are not ids", "x" * 65):
            log_to(lines := io.StringIO())
            response = await client.post(
                "/login", form={"csrf_token": "forged"}, headers={"X-Request-ID": given}
            )

            [line] = [line for line in lines.getvalue().splitlines() if "csrf" in line]
            assert f"request_id='{response.headers['X-Request-ID']}'" in line
            if given == CLIENT_REQUEST_ID:
                assert f"client_request_id='{given}'" in line
            else:
                assert "client_request_id" not in line


async def test_the_access_log_shows_no_display_link_token(web_server, engine):
    admin = await make_actor(engine, Role.ADMIN)
    done = await people.create_display_link(engine, admin, "Bay 3 TV", ["jaipur"])
    assert done.token

    async with httpx.AsyncClient(base_url=web_server.base) as client:
        opened = await client.get(f"/display/{done.token}")
    assert opened.status_code == 302

    async with asyncio.timeout(10):
        # The server's log is a file another process writes: polling is all there is.
        while "GET /display/" not in (log := web_server.log_path.read_text()):  # noqa: ASYNC110
            await asyncio.sleep(0.1)
    assert done.token not in log
    assert '"GET /display/<redacted> 1.1" 302' in log
