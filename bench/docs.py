"""Writing a benchmark's figures into docs/performance.md, one section per benchmark."""

from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "performance.md"


def write_section(heading: str, command: str, source: str, body: str, postgres: str) -> None:
    """Replace (or append) the section under ``heading`` with this run's figures."""
    section = (
        f"{heading}\n\nMeasured by `{command}` ({source}) on PostgreSQL {postgres}.\n\n{body}\n"
    )
    text = DOC.read_text() if DOC.exists() else "# Performance\n"
    start = text.find(heading)
    if start < 0:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        end = text.find("\n## ", start + len(heading))
        text = text[:start] + section + (text[end:] if end >= 0 else "")
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text(text)
