"""The scanner screen (SPEC §2): parent, then its children, from a wedge, a camera or typing.

The page only renders; scans travel as ``scan``/``undo``/``finish`` messages over ``/ws``
(``static/js/scanner.js``), queued first in the browser's outbox so nothing is lost offline.
"""

from quart import Blueprint, render_template

from traitortrack.domain.codes import BAD_PARENT_FORMAT, PARENT_PATTERN
from traitortrack.domain.linking import MAX_CHILDREN
from traitortrack.web.access import SCANNING, account, page

blueprint = Blueprint("scan", __name__)

# Keyboard-wedge scanners type ~7-8 ms per key and people over 100 ms: a burst averaging at
# most this per key, of at least this many characters, is a scan (a device may override it).
WEDGE_MS_PER_KEY = 50
WEDGE_MIN_CHARS = 3
WEDGE_SILENCE_MS = 100


@blueprint.get("/scan")
@page(SCANNING)
async def scanner() -> str:
    who = account()
    assert who is not None
    return await render_template(
        "scan/scanner.html",
        user=who.username,
        max_children=MAX_CHILDREN,
        parent_pattern=PARENT_PATTERN,
        parent_format_message=BAD_PARENT_FORMAT,
        wedge={
            "ms_per_key": WEDGE_MS_PER_KEY,
            "min_chars": WEDGE_MIN_CHARS,
            "silence_ms": WEDGE_SILENCE_MS,
        },
    )
