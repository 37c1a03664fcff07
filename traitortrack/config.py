"""Settings, read from the environment in one place (ARCHITECTURE.md, "Configuration")."""

import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

MIN_SECRET_BYTES = 32


class ConfigError(RuntimeError):
    """The environment cannot be run as it is; the message says what to set."""


def normalize_database_url(url: str) -> str:
    """Point every PostgreSQL URL spelling at the asyncpg driver."""
    for prefix in (
        "postgres://",
        "postgresql://",
        "postgresql+psycopg2://",
        "postgresql+psycopg://",
    ):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix) :]
    if url.startswith("postgresql+asyncpg://"):
        return url
    raise ConfigError(
        "DATABASE_URL must be a PostgreSQL URL (postgresql://user:password@host:5432/name)."
    )


@dataclass(frozen=True)
class Settings:
    env: str = "development"
    database_url: str | None = None
    redis_url: str | None = None
    redis_prefix: str = "traitortrack"
    session_secret: str = field(default="", repr=False)
    admin_password: str | None = field(default=None, repr=False)
    data_dir: Path = Path("var")
    slow_query_ms: float = 100.0
    # Lets a Prometheus server scrape /metrics without an admin session (Bearer token).
    metrics_token: str | None = field(default=None, repr=False)
    db_pool_size: int = 20
    db_max_overflow: int = 10
    migrate_on_start: bool = True
    # The warehouses' day for "today" counters.
    timezone: str = "Asia/Kolkata"
    # Outbox events older than this are dropped (a partition at a time); a client that was
    # away longer reloads its snapshot instead of replaying.
    event_retention_days: int = 30
    # Abuse limits per account (docs/security.md): scans a second, a burst, open sockets.
    scans_per_second: float = 10.0
    scan_burst: int = 30
    sockets_per_account: int = 20
    # `serve` gives up (and exits non-zero) when a worker crashed this many times in a minute.
    worker_crash_limit: int = 5

    @property
    def is_production(self) -> bool:
        return self.env == "production"

    @property
    def uses_embedded_database(self) -> bool:
        return self.database_url is None

    @property
    def secure_cookies(self) -> bool:
        return self.is_production

    def with_database(self, url: str) -> "Settings":
        return replace(self, database_url=normalize_database_url(url))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "Settings":
        environ = os.environ if environ is None else environ
        production = (
            environ.get("TRAITORTRACK_ENV", "").lower() == "production"
            or environ.get("REPLIT_DEPLOYMENT") == "1"
        )
        env = "production" if production else environ.get("TRAITORTRACK_ENV", "development")
        if env not in {"production", "development"}:
            raise ConfigError("TRAITORTRACK_ENV must be 'production' or 'development'.")
        raw_url = environ.get("PRODUCTION_DATABASE_URL") or environ.get("DATABASE_URL")
        data_dir = Path(environ.get("TRAITORTRACK_DATA_DIR", "var"))
        settings = cls(
            env=env,
            database_url=normalize_database_url(raw_url) if raw_url else None,
            redis_url=environ.get("REDIS_URL") or None,
            redis_prefix=environ.get("REDIS_PREFIX", "traitortrack"),
            session_secret=environ.get("SESSION_SECRET", ""),
            admin_password=environ.get("ADMIN_PASSWORD") or None,
            data_dir=data_dir,
            slow_query_ms=float(environ.get("SLOW_QUERY_MS", "100")),
            metrics_token=environ.get("METRICS_TOKEN") or None,
            db_pool_size=int(environ.get("DB_POOL_SIZE", "20")),
            db_max_overflow=int(environ.get("DB_MAX_OVERFLOW", "10")),
            migrate_on_start=environ.get("MIGRATE_ON_START", "1") != "0",
            timezone=environ.get("TRAITORTRACK_TZ", "Asia/Kolkata"),
            event_retention_days=int(environ.get("EVENT_RETENTION_DAYS", "30")),
            scans_per_second=float(environ.get("SCANS_PER_SECOND", "10")),
            scan_burst=int(environ.get("SCAN_BURST", "30")),
            sockets_per_account=int(environ.get("SOCKETS_PER_ACCOUNT", "20")),
            worker_crash_limit=int(environ.get("WORKER_CRASH_LIMIT", "5")),
        )
        return settings.checked()

    def checked(self) -> "Settings":
        """Refuse an unsafe production setup; fill in development's missing secret."""
        if self.is_production:
            missing = [
                name
                for name, value in (
                    ("SESSION_SECRET", self.session_secret),
                    ("ADMIN_PASSWORD", self.admin_password),
                )
                if not value
            ]
            if missing:
                raise ConfigError(
                    f"Production needs {' and '.join(missing)} set in the environment; "
                    "refusing to start without them."
                )
            if len(self.session_secret.encode()) < MIN_SECRET_BYTES:
                raise ConfigError(
                    f"SESSION_SECRET is too weak: use at least {MIN_SECRET_BYTES} random bytes "
                    '(python -c "import secrets; print(secrets.token_urlsafe(48))").'
                )
            return self
        if not self.session_secret:
            return replace(self, session_secret=_development_secret(self.data_dir))
        return self


def _development_secret(data_dir: Path) -> str:
    """Keep a generated secret in the data folder so sessions survive restarts."""
    path = data_dir / "session_secret"
    if path.exists():
        return path.read_text().strip()
    data_dir.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(48)
    path.touch(mode=0o600)
    path.write_text(secret)
    print(f"WARNING: SESSION_SECRET is not set; generated one for development in {path}.")
    return secret
