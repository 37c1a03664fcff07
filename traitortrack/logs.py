"""Structured logging: one line per event, JSON in production, key=value in development.

Extra fields go in ``extra={...}``. Never pass passwords, TOTP secrets, cookies or full IPs.
Lines logged while a request is served carry its ``request_id`` (the one the audit log records
and the ``X-Request-ID`` response header shows), so one id finds everything about a request.
"""

import json
import logging
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}
_request_id: ContextVar[str | None] = ContextVar("request_id", default=None)


def bind_request_id(request_id: str | None) -> None:
    """Tag the log lines of the request (or task) being served from here on."""
    _request_id.set(request_id)


class _RequestIds(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if "request_id" not in record.__dict__ and (found := _request_id.get()) is not None:
            record.request_id = found
        return True


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "at": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
        "level": record.levelname.lower(),
        "logger": record.name,
        "msg": record.getMessage(),
    }
    fields.update({k: v for k, v in record.__dict__.items() if k not in _STANDARD})
    if record.exc_info:
        fields["exc"] = logging.Formatter().formatException(record.exc_info)
    return fields


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(_fields(record), default=str)


class KeyValueFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = _fields(record)
        at, level, logger, msg = (fields.pop(k) for k in ("at", "level", "logger", "msg"))
        head = f"{at} {level:7} {logger}: {msg}"
        exc = fields.pop("exc", None)
        tail = " ".join(f"{k}={v!r}" for k, v in fields.items())
        return " ".join(part for part in (head, tail) if part) + (f"\n{exc}" if exc else "")


def configure_logging(production: bool, level: int = logging.INFO) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if production else KeyValueFormatter())
    handler.addFilter(_RequestIds())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
