"""The documentation's links resolve, and its Python blocks run as written."""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ["README.md", "BENCHMARK.md", "leaderboards/README.md"]
CODE_DOCS = ["README.md", "BENCHMARK.md"]
"""Documents whose ```python blocks are run, in this order, in one process."""
_LINK = re.compile(r"\]\(([^)\s]+)\)")
_PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)
_SKIP = re.compile(r"#\s*docs-test:\s*skip\b(?:\s*\((?P<reason>[^)]*)\))?")
"""A block holding ``# docs-test: skip (reason)`` is not run; the reason is required."""
BLOCKS_TIMEOUT_S = 120
"""Every block together; they take well under a minute, so hitting this means something hangs."""
_RUNNER = textwrap.dedent("""
    import json, sys
    namespace = {"__name__": "__main__"}
    for path, line, source in json.load(sys.stdin):
        print(f"running {path}:{line}", flush=True)
        # Padding keeps the document's own line numbers in a traceback.
        exec(compile("\\n" * (line - 1) + source, path, "exec"), namespace)
    print("all blocks ran")
""")


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


def python_blocks(text: str) -> list[tuple[int, str]]:
    """The ```python blocks of a Markdown text: (line of the block's first code line, code)."""
    return [(text.count("\n", 0, m.start(1)) + 1, m.group(1))
            for m in _PYTHON_BLOCK.finditer(text)]


def test_python_blocks_are_found_with_their_line_numbers():
    text = "# t\n\n```python\nx = 1\n```\n\n```bash\nls\n```\n```python\ny = 2\nz = 3\n```\n"
    assert python_blocks(text) == [(4, "x = 1\n"), (11, "y = 2\nz = 3\n")]


@pytest.mark.parametrize("doc", CODE_DOCS)
def test_skipped_blocks_say_why(doc):
    for line, source in python_blocks((ROOT / doc).read_text()):
        mark = _SKIP.search(source)
        assert mark is None or (mark["reason"] or "").strip(), (
            f"{doc}:{line}: write the reason: # docs-test: skip (needs ...)")


def test_python_blocks_run_in_order_in_one_process(fresh_python):
    # One fresh interpreter for all blocks, as a reader pasting them one after another would
    # run them: a block that breaks a later one (issue 18: rendering, then an async vector env)
    # fails here. The timeout turns a hang into a failure.
    blocks = [(str(ROOT / doc), line, source) for doc in CODE_DOCS
              for line, source in python_blocks((ROOT / doc).read_text())
              if not _SKIP.search(source)]
    assert blocks, "no runnable ```python block found"
    result = fresh_python(_RUNNER, timeout=BLOCKS_TIMEOUT_S, stdin=json.dumps(blocks),
                          cwd=str(ROOT))
    assert result.returncode == 0, f"{result.stdout[-1000:]}\n{result.stderr[-3000:]}"
    assert result.stdout.strip().endswith("all blocks ran")


def test_experts_table_matches_laom_returns_and_its_commands():
    # BENCHMARK.md's Experts table: LAOM's column is LAOM_RETURNS, the share is ours / LAOM, and
    # each row names the command that measures it (rerun that command to check the figure).
    from masklam_bench.experts import LAOM_RETURNS

    text = (ROOT / "BENCHMARK.md").read_text()
    section = text.split("\n## Experts\n", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[0] in LAOM_RETURNS:
            rows[cells[0]] = cells
    assert sorted(rows) == sorted(LAOM_RETURNS)
    for task, (_, ours, _, laom, share, command, *_) in rows.items():
        mean = float(ours.split("+-")[0])
        assert float(laom) == LAOM_RETURNS[task], task
        assert float(re.search(r"([\d.]+)%", share)[1]) == round(100 * mean / LAOM_RETURNS[task], 1)
        assert command == f"`masklam-bench eval-expert --task {task} --episodes 10`", task


def test_ci_runs_the_readmes_test_command():
    """CI must run the tests the way the README tells a newcomer to (its second command)."""
    blocks = re.findall(r"^```bash\n(.*?)^```", (ROOT / "README.md").read_text(),
                        re.DOTALL | re.MULTILINE)
    (command,) = [b.strip() for b in blocks if "pytest" in b.split("\n")[0]][:1]
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert command in ci and "bash setup.sh" in ci
