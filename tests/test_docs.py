"""docs/design.md keeps its section numbers, every `docs/design.md §N` cited in the repository exists, and
nothing points at a design document or spec outside the repository."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DESIGN = ROOT / "docs" / "design.md"
SCANNED_DIRS = ("etl", "tests", "migrations", "deploy", "docs", ".ci")
SCANNED_FILES = ("README.md", "CHANGELOG.md", "pyproject.toml", "Makefile", "jobs.yaml")
TEXT_SUFFIXES = {".py", ".md", ".toml", ".yaml", ".yml", ".ini", ".mako", ".json", ".txt", ""}
HEADING = re.compile(r"^#{2,3} (\d+(?:\.\d+)?)\.? ", re.MULTILINE)
CITATION = re.compile(r"docs/design\.md((?:,? ?§\d+(?:\.\d+)?)+)")
SECTION = re.compile(r"§(\d+(?:\.\d+)?)")
# the numbering code comments were written against; a renumbering would silently re-point them
REQUIRED = {"1", "2", "3", "3.1", "3.2", "3.3", "4", "4.1", "4.2", "5", "6", "7", "7.1", "8", "9", "10"}
# built by concatenation so this file does not match itself
OUTSIDE = ("DESIGN" + " §", "../" + "shared", "/work/" + "shared")


def sections() -> set[str]:
    return set(HEADING.findall(DESIGN.read_text(encoding="utf-8")))


def repository_texts() -> dict[Path, str]:
    paths = [ROOT / name for name in SCANNED_FILES if (ROOT / name).is_file()]
    for folder in SCANNED_DIRS:
        paths += sorted(p for p in (ROOT / folder).rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    return {
        p.relative_to(ROOT): p.read_text(encoding="utf-8")
        for p in paths
        if p.suffix in TEXT_SUFFIXES and p.stat().st_size < 2_000_000
    }


def test_design_keeps_the_section_numbers_the_code_cites() -> None:
    """Sections 1 to 10, with 3.1 to 3.3, 4.1, 4.2 and 7.1, are headings of docs/design.md."""
    assert sorted(REQUIRED - sections(), key=lambda n: [int(x) for x in n.split(".")]) == []


def test_every_citation_of_the_design_names_an_existing_section() -> None:
    """Each `docs/design.md §N` in code, tests and docs (and each §N inside the design) has its heading."""
    known = sections()
    dangling = []
    texts = repository_texts()
    for path, text in texts.items():
        for match in CITATION.finditer(text):
            dangling += [f"{path}: §{n}" for n in SECTION.findall(match.group(1)) if n not in known]
    design = texts[Path("docs/design.md")]
    dangling += [f"docs/design.md: §{n}" for n in SECTION.findall(design) if n not in known]
    assert dangling == []
    assert sum(len(CITATION.findall(text)) for text in texts.values()) >= 40  # the comments really cite it


def test_nothing_points_outside_the_repository() -> None:
    """No design-section comment in the old form and no path into the shared design workspace remains."""
    found = [
        f"{path}:{number}: {line.strip()}"
        for path, text in repository_texts().items()
        for number, line in enumerate(text.splitlines(), 1)
        if any(marker in line for marker in OUTSIDE)
    ]
    assert found == []
