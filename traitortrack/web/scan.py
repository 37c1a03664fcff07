"""The scanner screen (SPEC §2): parent, then its children, from a wedge, a camera or typing.

The page only renders; scans travel as ``scan``/``undo``/``finish`` messages over ``/ws``
(``static/js/scanner.js``), queued first in the browser's outbox so nothing is lost offline.
"""

from quart import Blueprint, render_template

from traitortrack.domain.codes import BAD_PARENT_FORMAT, PARENT_PATTERN
from traitortrack.domain.linking import MAX_CHILDREN
from traitortrack.web.access import SCANNING, account, page

blueprint = Blueprint("scan", __name__)

# Keyboard-wedge scanners type ~7-8 ms per key and people over 100 ms: a burst typed at most
# this per key (the median gap), of at least this many characters, is a scan. A code is saved
# only when it arrives whole, ended by the scanner's Enter or Tab ("auto": learned per device);
# one that goes this long silent without it is shown to check, and one whose keys stop for the
# stall limit is dropped (static/js/wedge.js). A device may override each of them.
WEDGE_MS_PER_KEY = 50
WEDGE_MIN_CHARS = 4  # no bag code is shorter (SPEC §1)
WEDGE_SILENCE_MS = 100
WEDGE_STALL_MS = 1500
WEDGE_TERMINATOR = "auto"


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
            "stall_ms": WEDGE_STALL_MS,
            "terminator": WEDGE_TERMINATOR,
        },
    )
