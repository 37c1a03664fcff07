"""TraitorTrack: real-time warehouse bag tracking."""

from pathlib import Path

from quart import Quart

from traitortrack.config import Settings

ROOT = Path(__file__).resolve().parent.parent


def create_app(settings: Settings | None = None) -> Quart:
    from traitortrack import runtime
    from traitortrack.logs import configure_logging
    from traitortrack.web import health

    settings = settings or Settings.from_env()
    configure_logging(settings.is_production)
    app = Quart(
        __name__, template_folder=str(ROOT / "templates"), static_folder=str(ROOT / "static")
    )
    app.config.update(SECRET_KEY=settings.session_secret, MAX_CONTENT_LENGTH=64 * 1024)
    app.register_blueprint(health.blueprint)

    @app.before_serving
    async def start() -> None:
        await runtime.start(app, settings)

    @app.after_serving
    async def stop() -> None:
        await runtime.stop(app)

    return app
