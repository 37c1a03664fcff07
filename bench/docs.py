"""Writing a benchmark's figures into docs/performance.md, one section per benchmark."""

from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "performance.md"


def write_section(
    heading: str, command: str, source: str, body: str, postgres: str, doc: Path = DOC
) -> None:
    """Replace (or append) the section under ``heading`` of ``doc`` with this run's figures."""
    section = (
        f"{heading}\n\nMeasured by `{command}` ({source}) on PostgreSQL {postgres}.\n\n{body}\n"
    )
    text = doc.read_text() if doc.exists() else "# Performance\n"
    start = text.find(heading)
    if start < 0:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        end = text.find("\n## ", start + len(heading))
        text = text[:start] + section + (text[end:] if end >= 0 else "")
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(text)
