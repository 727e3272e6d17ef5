"""The documentation's relative links point at files and headings that exist."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ["README.md", "BENCHMARK.md", "leaderboards/README.md"]
_LINK = re.compile(r"\]\(([^)\s]+)\)")


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    return {_slug(line.lstrip("#")) for line in path.read_text().splitlines()
            if line.startswith("#")}


def test_slug_follows_github():
    assert _slug(" Results: does the effect show? (cheetah-run, `cpu` preset)") == (
        "results-does-the-effect-show-cheetah-run-cpu-preset")


@pytest.mark.parametrize("doc", DOCS)
def test_relative_links_resolve(doc):
    source = ROOT / doc
    broken = []
    for target in _LINK.findall(source.read_text()):
        if re.match(r"^[a-z]+:", target):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        path = (source.parent / file_part).resolve() if file_part else source
        missing_anchor = bool(anchor) and path.suffix == ".md" and (
            not path.exists() or anchor not in _anchors(path))
        if not path.exists() or missing_anchor:
            broken.append(target)
    assert not broken, f"{doc} links to missing files or headings: {broken}"
