"""Structured logging: one line per event, JSON in production, key=value in development.

Extra fields go in ``extra={...}``. Never pass passwords, TOTP secrets, cookies or full IPs;
the one secret that travels in URLs (a display link's token) is redacted from every line.
Lines logged while a request is served carry its ``request_id`` (the one the audit log records
and the ``X-Request-ID`` response header shows), so one id finds everything about a request. We
make that id; one the client sent is logged apart, as ``client_request_id``, never recorded.
"""

import json
import logging
import re
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

_DISPLAY_LINK = re.compile(r"(/display/)[^\s/?#\"']+")
_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}
_request_ids: ContextVar[tuple[str | None, str | None]] = ContextVar(
    "request_ids", default=(None, None)
)


def bind_request_id(request_id: str | None, client_request_id: str | None = None) -> None:
    """Tag the log lines of the request (or task) being served from here on: ``request_id``
    is ours; an id the client sent (a proxy's, say) is only ever ``client_request_id``."""
    _request_ids.set((request_id, client_request_id))


class _RequestIds(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        for name, found in zip(
            ("request_id", "client_request_id"), _request_ids.get(), strict=True
        ):
            if found is not None and name not in record.__dict__:
                setattr(record, name, found)
        return True


class _Redactions(logging.Filter):
    """Secrets that travel in a URL are cut out of every line, Hypercorn's access log too: a
    wall display's link (``/display/<token>``) opens the wall to whoever reads the line."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if _DISPLAY_LINK.search(message):
            record.msg, record.args = _DISPLAY_LINK.sub(r"\1<redacted>", message), None
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
    handler.addFilter(_Redactions())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
