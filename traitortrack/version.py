"""The deployment's version, which open wall displays compare to know when to reload.

``TRAITORTRACK_VERSION`` (a release tag or commit id set by the deployment) when given;
otherwise the package version plus a digest of the templates and static files, which changes
exactly when what a browser runs changes. Every worker of a deployment computes the same.
"""

import hashlib
import os
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _digest() -> str:
    digest = hashlib.sha256()
    for folder in ("templates", "static"):
        for path in sorted((ROOT / folder).rglob("*")):
            if path.is_file():
                digest.update(str(path.relative_to(ROOT)).encode())
                digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def _package() -> str:
    try:
        return metadata.version("traitortrack")
    except metadata.PackageNotFoundError:
        return "0"


VERSION = os.environ.get("TRAITORTRACK_VERSION") or f"{_package()}+{_digest()}"
