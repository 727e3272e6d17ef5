"""benchmarks/task_table.py: the per-task tables of BENCHMARK.md, from committed result files."""

import json
import shutil
import statistics
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "leaderboards" / "results"


@pytest.fixture(scope="module")
def script(benchmark_script):
    """``benchmarks/task_table.py``, loaded once."""
    return benchmark_script("task_table")


def _row(out: str, method: str) -> list[str]:
    return next(line for line in out.splitlines() if line.startswith(f"| {method} |")).split(" | ")


def test_rows_match_the_result_files_and_skip_overrides_and_other_protocols(tmp_path, capsys,
                                                                          script):
    files = sorted(RESULTS.glob("cheetah-run__lapo__d64__s*__cpu.json"))
    assert len(files) >= 2
    for f in files:
        shutil.copy(f, tmp_path / f.name)
    # the same run under an override, and under another protocol: neither may enter the row
    record = json.loads(files[0].read_text())
    (tmp_path / "cheetah-run__lapo__d64__s9__cpu+set-x.json").write_text(
        json.dumps({**record, "seed": 9, "overrides": {"train.lam_steps": 1}}))
    other = json.loads(files[0].read_text())
    other["config"]["preset"]["train"]["lam_steps"] += 1
    other["seed"] = 8
    (tmp_path / "cheetah-run__lapo__d64__s8__cpu.json").write_text(json.dumps(other))

    script.main(["--task", "cheetah-run", "--results", str(tmp_path)])
    out = capsys.readouterr().out
    cells = _row(out, "lapo")
    probes = [json.loads(f.read_text())["metrics"]["probe_nmse"] for f in files]
    assert cells[1] == str(len(files))
    assert cells[2].startswith(f"{statistics.mean(probes):.3f} +- ")
    assert cells[2].endswith("(" + " / ".join(f"{p:.3f}" for p in probes) + ")")
    # no bc-labels run among these files: the ceiling is unmeasured, so returns are marked
    assert cells[5].endswith("†") and "bc-labels ceiling not measured" in out


def test_returns_are_unmarked_once_the_ceiling_passes_the_gate(tmp_path, capsys, script):
    for name in ("cheetah-run__lapo__d64__s0__cpu.json", "cheetah-run__bc-labels__s0__cpu.json"):
        record = json.loads((RESULTS / name).read_text())
        if record["method"] == "bc-labels":
            record["metrics"]["normalized_return_id"] = script.RETURN_GATE
        (tmp_path / name).write_text(json.dumps(record))
    script.main(["--task", "cheetah-run", "--results", str(tmp_path)])
    out = capsys.readouterr().out
    assert "†" not in out and _row(out, "bc-labels")[5] == f"{script.RETURN_GATE:.3f} (n=1)"


def test_no_matching_files_is_a_clear_error(tmp_path, script):
    with pytest.raises(SystemExit, match="no hopper-hop result files"):
        script.main(["--task", "hopper-hop", "--results", str(tmp_path)])


def test_benchmarks_sweep_table_is_the_scripts_output_from_the_committed_files(capsys, script):
    script.main(["--task", "cheetah-run", "--sweep", "64,256,1024,8192"])
    table = capsys.readouterr().out.strip()
    assert table.count("\n") == 5  # header, rule and one line per dim
    assert table in (ROOT / "BENCHMARK.md").read_text()


def test_sweep_needs_two_methods(script):
    with pytest.raises(SystemExit, match="two methods"):
        script.main(["--task", "cheetah-run", "--sweep", "64", "--methods", "lapo"])
