"""The ``traitortrack`` command: serve, migrate, create-admin, seed-demo, and every use case."""

import argparse
import asyncio
import getpass
import os
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from traitortrack.config import ConfigError, Settings
from traitortrack.db.embedded import start_embedded_postgres
from traitortrack.db.engine import create_engine
from traitortrack.db.migrate import migrate
from traitortrack.domain.outcomes import Outcome
from traitortrack.domain.roles import Role
from traitortrack.logs import configure_logging
from traitortrack.services import bags, bills, scans
from traitortrack.services.commands import Result
from traitortrack.services.users import UserExists, actor_for, create_user

ROOT = Path(__file__).resolve().parent.parent
MIN_PASSWORD_LENGTH = 8

# name -> (service, positional arguments after the actor, options passed by keyword)
USE_CASES: dict[str, tuple[Callable[..., Awaitable[Result]], tuple[str, ...], tuple[str, ...]]] = {
    "scan-parent": (scans.scan_parent, ("code",), ()),
    "link-child": (scans.link_child, ("parent", "child"), ()),
    "undo": (scans.undo_last_child, ("parent",), ()),
    "finish": (scans.finish_parent, ("parent",), ()),
    "delete-bag": (bags.delete_bag, ("code",), ()),
    "bill-create": (bills.create_bill, ("number", "capacity", "description"), ()),
    "bill-edit": (bills.edit_bill, ("number",), ("capacity", "description")),
    "bill-link": (bills.link_bill_parent, ("number", "parent"), ()),
    "bill-remove": (bills.remove_bill_parent, ("number", "parent"), ()),
    "bill-complete": (bills.complete_bill, ("number",), ()),
    "bill-reopen": (bills.reopen_bill, ("number",), ()),
    "bill-delete": (bills.delete_bill, ("number",), ()),
}


def resolve_settings() -> Settings:
    """Settings, with the embedded PostgreSQL started when no database URL is configured.

    The URL is exported so that Hypercorn's worker processes join the same server.
    """
    settings = Settings.from_env()
    if settings.uses_embedded_database:
        url = start_embedded_postgres(settings.data_dir)
        os.environ["DATABASE_URL"] = url
        settings = settings.with_database(url)
    return settings


@asynccontextmanager
async def migrated_engine(settings: Settings) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(settings)
    try:
        await migrate(engine)
        yield engine
    finally:
        await engine.dispose()


def serve(args: argparse.Namespace) -> int:
    from hypercorn.config import Config

    from traitortrack.server import run

    settings = resolve_settings()
    configure_logging(settings.is_production)
    config = Config.from_toml(str(args.config))
    config.application_path = "traitortrack:create_app()"
    if args.bind:
        config.bind = [args.bind]
    workers = args.workers or int(os.environ.get("WEB_CONCURRENCY", config.workers))
    if workers > 1 and not settings.redis_url:
        print(
            f"Refusing to start {workers} workers without REDIS_URL: the in-process event bus "
            "only reaches clients of one worker. Set REDIS_URL or use --workers 1.",
            file=sys.stderr,
        )
        return 2
    config.workers = workers
    url = config.bind[0]
    print(
        f"TraitorTrack is starting at http://{url} ({workers} worker{'s' * (workers > 1)}).\n"
        "Log in as 'admin': with ADMIN_PASSWORD if you set it, otherwise with the password "
        "printed below on the first start.",
        flush=True,
    )
    return run(config, settings.worker_crash_limit)


async def _migrate(settings: Settings) -> None:
    async with migrated_engine(settings):
        print("Database is at the latest schema.")


async def _create_admin(settings: Settings, username: str, password: str) -> None:
    async with migrated_engine(settings) as engine:
        await create_user(engine, username, password, Role.ADMIN)
    print(f"Admin {username} created.")


async def _seed_demo(settings: Settings, args: argparse.Namespace) -> None:
    from traitortrack.demo import seed_demo

    parents = 0 if args.bags else args.parents
    async with migrated_engine(settings) as engine:
        report = await seed_demo(engine, parents, bags=args.bags, history=args.history)
    print(report)


async def _use_case(settings: Settings, name: str, args: argparse.Namespace) -> int:
    service, positional, options = USE_CASES[name]
    async with migrated_engine(settings) as engine:
        try:
            actor = await actor_for(engine, args.user)
        except LookupError as error:
            print(f"{error}. Create the user first (or check the spelling).", file=sys.stderr)
            return 2
        result = await service(
            engine,
            actor,
            args.client_id or str(uuid.uuid4()),
            *(getattr(args, field) for field in positional),
            **{field: getattr(args, field) for field in options},
        )
    print(f"{result.outcome}: {result.message}" + (" (replayed)" if result.replayed else ""))
    return 1 if result.outcome == Outcome.REJECTED else 0


def _read_password() -> str:
    if not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\n")
    first = getpass.getpass("Password: ")
    if first != getpass.getpass("Repeat password: "):
        raise SystemExit("The passwords differ; nothing was changed.")
    return first


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="traitortrack", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve_parser = sub.add_parser("serve", help="run the web app with Hypercorn")
    serve_parser.add_argument("--config", type=Path, default=ROOT / "hypercorn.toml")
    serve_parser.add_argument("--bind", help="host:port (default from hypercorn.toml)")
    serve_parser.add_argument("--workers", type=int, help="worker processes (needs REDIS_URL > 1)")
    sub.add_parser("migrate", help="upgrade the database schema")
    admin_parser = sub.add_parser("create-admin", help="add an admin (password read from stdin)")
    admin_parser.add_argument("username")
    seed_parser = sub.add_parser("seed-demo", help="load realistic demo data")
    sizes = seed_parser.add_mutually_exclusive_group()
    sizes.add_argument("--parents", type=int, default=1000, help="parents to add (default 1000)")
    sizes.add_argument("--bags", type=int, default=0, help="fill up to this many bags in all")
    seed_parser.add_argument(
        "--history", type=int, default=0, help="and about this many scan and event rows in all"
    )
    for name, (service, positional, options) in USE_CASES.items():
        use_case = sub.add_parser(name, help=(service.__doc__ or name).strip().splitlines()[0])
        use_case.add_argument("--as", dest="user", required=True, help="username acting")
        use_case.add_argument("--client-id", help="idempotency key (default: a new UUID)")
        for field in positional:
            use_case.add_argument(field, nargs="?" if field == "description" else None, default="")
        for field in options:
            use_case.add_argument(f"--{field}")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "serve":
            return serve(args)
        settings = resolve_settings()
        configure_logging(settings.is_production)
        work: dict[str, Callable[[], Awaitable[Any]]] = {
            "migrate": lambda: _migrate(settings),
            "create-admin": lambda: _create_admin(settings, args.username, _checked_password()),
            "seed-demo": lambda: _seed_demo(settings, args),
        }
        if args.command in work:
            asyncio.run(work[args.command]())
            return 0
        return asyncio.run(_use_case(settings, args.command, args))
    except ConfigError as error:
        print(f"Configuration error: {error}", file=sys.stderr)
        return 2
    except UserExists as error:
        print(f"{error}; choose another username.", file=sys.stderr)
        return 1


def _checked_password() -> str:
    password = _read_password()
    if len(password) < MIN_PASSWORD_LENGTH:
        raise SystemExit(f"Password too short (min {MIN_PASSWORD_LENGTH} characters).")
    return password
