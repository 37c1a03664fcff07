"""TraitorTrack: real-time warehouse bag tracking."""

from pathlib import Path

from quart import Quart

from traitortrack.config import Settings

ROOT = Path(__file__).resolve().parent.parent


def create_app(settings: Settings | None = None) -> Quart:
    from quart_auth import QuartAuth

    from traitortrack import runtime
    from traitortrack.logs import configure_logging
    from traitortrack.services import accounts
    from traitortrack.web import (
        admin,
        api,
        auth,
        bags,
        bills,
        dashboard,
        exports,
        health,
        hooks,
        inputs,
        limits,
        monitoring,
        scan,
        ws,
    )

    settings = settings or Settings.from_env()
    configure_logging(settings.is_production)
    app = Quart(
        __name__, template_folder=str(ROOT / "templates"), static_folder=str(ROOT / "static")
    )
    app.config.update(
        SECRET_KEY=settings.session_secret,
        MAX_CONTENT_LENGTH=64 * 1024,
        SESSION_COOKIE_NAME="tt_session",
        SESSION_COOKIE_SECURE=settings.secure_cookies,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_HTTPONLY=True,
        PERMANENT_SESSION_LIFETIME=accounts.SHIFT_LENGTH,
        QUART_AUTH_COOKIE_NAME="tt_auth",
        QUART_AUTH_COOKIE_SECURE=settings.secure_cookies,
        QUART_AUTH_COOKIE_SAMESITE="Lax",
        QUART_AUTH_DURATION=int(accounts.SHIFT_LENGTH.total_seconds()),
        QUART_AUTH_SALT="traitortrack-auth",
    )
    QuartAuth(app)
    # Hooks first: the rate limits key on the account the hooks load.
    hooks.install(app)
    limits.install(app, settings)
    app.url_map.converters["int"] = inputs.RowId  # before any route is added
    for module in (health, auth, dashboard, admin, monitoring, scan, bills, bags, exports, api, ws):
        app.register_blueprint(module.blueprint)

    @app.before_serving
    async def start() -> None:
        await runtime.start(app, settings)

    @app.after_serving
    async def stop() -> None:
        await runtime.stop(app)

    return app
