"""What comes in from outside, checked once at the edge, before any view or service sees it.

Ids in paths (``<int:...>``) are row ids: a number no row can have matches no route (404).

Every text input of a request (path values, query arguments, form field names and values,
JSON keys and strings) is refused with a 400 if it holds a character no person types and
PostgreSQL may not store: a control character other than tab, CR and LF (scanners end codes
with those; text areas hold line breaks), or a lone surrogate (UTF-8 cannot encode one).

JSON is parsed here too, with every way to fail one ``BadInput``: not UTF-8, not JSON, or
nested deeper than any message of ours (Python's parser recurses, and a deep enough body
raises ``RecursionError``, which is no ``ValueError``).
"""

import json
import re
from collections.abc import Iterable, Iterator
from typing import Any

from quart import g, request
from werkzeug.exceptions import BadRequest, NotFound
from werkzeug.routing import IntegerConverter

WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})
FORM_TYPES = frozenset({"application/x-www-form-urlencoded", "multipart/form-data"})
MAX_ROW_ID = 2**31 - 1
MAX_JSON_DEPTH = 8  # a scan message is one flat object
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_SURROGATE = re.compile("[\ud800-\udfff]")
_SHOWN_NAME = re.compile(r"[\w.-]{1,40}")


class BadInput(ValueError):
    """Input refused at the edge; ``str()`` says why, for the sender."""


class RowId(IntegerConverter):
    """``<int:...>`` in every route: a row id, 1 to 2**31 - 1 (a PostgreSQL ``integer``).
    Any other number is a 404 instead of a query that fails. (``NotFound``, not werkzeug's
    ``ValidationError``: with that, a path whose rule has another method is answered 405.)"""

    def to_python(self, value: str) -> int:
        number = int(value) if len(value) <= len(str(MAX_ROW_ID)) else 0
        if not 1 <= number <= MAX_ROW_ID:
            raise NotFound()
        return number


def decode_json(raw: str | bytes) -> Any:
    """A JSON message (a websocket frame, a request body), or ``BadInput`` saying why not."""
    try:
        text = raw.decode() if isinstance(raw, bytes) else raw
    except UnicodeDecodeError:
        raise BadInput("The message is not UTF-8 text.") from None
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        raise BadInput("The message is not valid JSON.") from None
    if _depth(value) > MAX_JSON_DEPTH:
        raise BadInput(f"The message is nested more than {MAX_JSON_DEPTH} levels deep.")
    return value


async def json_body() -> Any:
    """The request's body as JSON, whatever its content type says; parsed once per request.
    Unreadable: ``BadRequest`` (a 400 with the reason)."""
    if "json_body" not in g:
        try:
            g.json_body = decode_json(await request.get_data())
        except BadInput as error:
            raise BadRequest(f"{error} Nothing was changed.") from None
    return g.json_body


async def check_request() -> None:
    """Refuse (``BadRequest``, a 400 with the reason) a request with a character we never
    accept in any of its text inputs."""
    _check("address", (request.view_args or {}).items())
    _check("query argument", request.args.items(multi=True))
    if request.method not in WRITES:
        return
    if request.mimetype in FORM_TYPES:
        _check("field", (await request.form).items(multi=True))
    elif (request.is_json or request.path.startswith("/api/")) and await request.get_data():
        # (An empty body is no JSON to check: "stay signed in" posts nothing.)
        _check("JSON field", _json_pairs(await json_body()))


def _check(kind: str, pairs: Iterable[tuple[str, object]]) -> None:
    for name, value in pairs:
        if (flaw := _flaw(name)) is not None:
            raise BadRequest(f"A {kind} name contains {flaw}; nothing was changed.")
        if isinstance(value, str) and (flaw := _flaw(value)) is not None:
            shown = f"'{name}'" if _SHOWN_NAME.fullmatch(name) else "value"
            raise BadRequest(f"The {kind} {shown} contains {flaw}; nothing was changed.")


def _flaw(text: str) -> str | None:
    if _CONTROL.search(text):
        return "a control character"
    if _SURROGATE.search(text):
        return "a broken character (a lone surrogate)"
    return None


def _json_pairs(value: Any) -> Iterator[tuple[str, object]]:
    """(key, value) of every object member and ("", item) of every array item, all the way
    down; the top level too, as ("", value)."""
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:
        name, item = stack.pop()
        yield name, item
        if isinstance(item, dict):
            stack.extend(item.items())
        elif isinstance(item, list):
            stack.extend(("", element) for element in item)


def _depth(value: Any) -> int:
    """How many arrays and objects nest (a scalar: 0, ``{}``: 1); without recursion, as the
    parser allows more levels than Python's stack."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, level)
            elements = item.values() if isinstance(item, dict) else item
            stack.extend((element, level + 1) for element in elements)
    return deepest
