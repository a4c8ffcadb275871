"""The code's citations of ``docs/reference.md`` resolve, and none points outside the repo.

Comments give their reasons as ``docs/reference.md#<section>``; a renamed or deleted section
would leave them pointing nowhere, which this catches.
"""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO / "docs" / "reference.md"
_CITATION = re.compile(r"docs/reference\.md#([A-Za-z0-9_-]+)")
_ANCHOR = re.compile(r'<a id="([^"]+)"></a>')
# The document that docs/reference.md replaced, cited by section number.
_OUTSIDE = re.compile(r"SPEC\s*§|SPEC\.md|\.\./shared")


def cited_files() -> list[Path]:
    """Every text file that may cite the reference: code, configs, READMEs."""
    roots = ["jaxecg", "convert", "benchmarks", "configs", "tests"]
    files = [p for root in roots for p in (REPO / root).rglob("*") if p.suffix in {".py", ".yaml"}]
    return sorted(files + [REPO / "README.md", REFERENCE])


def test_every_citation_names_an_anchor_of_the_reference() -> None:
    anchors = set(_ANCHOR.findall(REFERENCE.read_text()))
    cited = {
        (path.relative_to(REPO).as_posix(), anchor)
        for path in cited_files()
        for anchor in _CITATION.findall(path.read_text())
    }
    assert len(cited) > 20  # the models, losses, data and training modules all cite it
    assert {(path, a) for path, a in cited if a not in anchors} == set()
    internal = set(re.findall(r"\]\(#([^)]+)\)", REFERENCE.read_text()))
    assert internal - anchors == set()


def test_nothing_cites_a_document_outside_the_repository() -> None:
    offenders = [
        f"{path.relative_to(REPO)}:{n}"
        for path in cited_files()
        if path != Path(__file__).resolve()
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if _OUTSIDE.search(line)
    ]
    assert offenders == []
