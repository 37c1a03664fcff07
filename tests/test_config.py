import pytest

from traitortrack.config import ConfigError, Settings, normalize_database_url

STRONG = "s" * 48


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("postgres://u:p@h:5432/db", "postgresql+asyncpg://u:p@h:5432/db"),
        ("postgresql://u:p@h/db", "postgresql+asyncpg://u:p@h/db"),
        ("postgresql+asyncpg://u@h/db", "postgresql+asyncpg://u@h/db"),
        ("postgresql+psycopg2://u@h/db", "postgresql+asyncpg://u@h/db"),
    ],
)
def test_postgres_urls_are_normalised_to_asyncpg(given, expected):
    assert normalize_database_url(given) == expected


def test_a_non_postgresql_url_is_refused_with_what_to_use():
    with pytest.raises(ConfigError, match="PostgreSQL URL"):
        normalize_database_url("sqlite:///x.db")


def test_production_database_url_wins_over_database_url(tmp_path):
    settings = Settings.from_env(
        {
            "PRODUCTION_DATABASE_URL": "postgres://prod/db",
            "DATABASE_URL": "postgres://dev/db",
            "TRAITORTRACK_DATA_DIR": str(tmp_path),
        }
    )
    assert settings.database_url == "postgresql+asyncpg://prod/db"


def test_no_database_url_means_the_embedded_database(tmp_path):
    settings = Settings.from_env({"TRAITORTRACK_DATA_DIR": str(tmp_path)})
    assert settings.uses_embedded_database


@pytest.mark.parametrize(
    ("environ", "missing"),
    [
        ({}, "SESSION_SECRET and ADMIN_PASSWORD"),
        ({"SESSION_SECRET": STRONG}, "ADMIN_PASSWORD"),
        ({"ADMIN_PASSWORD": "Admin-pass1"}, "SESSION_SECRET"),
    ],
)
def test_production_refuses_to_start_and_names_the_missing_secret(environ, missing):
    with pytest.raises(ConfigError, match=f"needs {missing} set"):
        Settings.from_env({"TRAITORTRACK_ENV": "production", **environ})


def test_replit_deployment_implies_production():
    with pytest.raises(ConfigError, match="SESSION_SECRET"):
        Settings.from_env({"REPLIT_DEPLOYMENT": "1"})


def test_production_refuses_a_weak_session_secret():
    with pytest.raises(ConfigError, match="too weak"):
        Settings.from_env(
            {"TRAITORTRACK_ENV": "production", "SESSION_SECRET": "short", "ADMIN_PASSWORD": "x"}
        )


def test_production_with_both_secrets_uses_secure_cookies():
    settings = Settings.from_env(
        {"TRAITORTRACK_ENV": "production", "SESSION_SECRET": STRONG, "ADMIN_PASSWORD": "A-pass1x"}
    )
    assert settings.is_production and settings.secure_cookies


def test_development_generates_a_session_secret_once_and_keeps_it(tmp_path):
    first = Settings.from_env({"TRAITORTRACK_DATA_DIR": str(tmp_path)})
    second = Settings.from_env({"TRAITORTRACK_DATA_DIR": str(tmp_path)})
    assert len(first.session_secret) >= 32
    assert first.session_secret == second.session_secret
    assert (tmp_path / "session_secret").stat().st_mode & 0o077 == 0


def test_settings_never_show_secrets_in_their_repr(tmp_path):
    settings = Settings.from_env(
        {"TRAITORTRACK_DATA_DIR": str(tmp_path), "ADMIN_PASSWORD": "Admin-pass1"}
    )
    assert "Admin-pass1" not in repr(settings)
    assert settings.session_secret not in repr(settings)
