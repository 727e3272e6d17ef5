"""benchmarks/time_main_job.py --compare: the before/after table of BENCHMARK.md from saved timings."""

import copy
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TIMINGS = ROOT / "benchmarks" / "timings"


@pytest.fixture(scope="module")
def script(benchmark_script):
    """``benchmarks/time_main_job.py``, loaded once."""
    return benchmark_script("time_main_job")


PAIRS = {  # before and after issue 19, each pair timed on one day: the docs that quote it
    ("main_job_before_fb72a49.json", "main_job_after_0ac5e19.json"): ("BENCHMARK.md",),
    ("main_job_fb72a49_2026-12-04.json", "main_job_f83ccc3_2026-12-04.json"):
        ("README.md", "BENCHMARK.md"),
}


FIRST_PAIR = next(iter(PAIRS))


def _pair(names=FIRST_PAIR):
    return tuple(json.loads((TIMINGS / name).read_text()) for name in names)


def test_the_committed_pairs_agree_and_their_tables_match_the_figures(script):
    for names, docs in PAIRS.items():
        before, after = _pair(names)
        table = script.compare(before, after)
        assert f"**{before['wall_s'] / after['wall_s']:.2f}x**" in table
        assert "identical in every run" in table
        # The README's and BENCHMARK's figures are these files' figures.
        for doc in docs:
            text = (ROOT / doc).read_text()
            assert f"{after['wall_s']:,.0f} s" in text and f"{before['wall_s']:,.0f} s" in text
            assert f"{before['wall_s'] / after['wall_s']:.2f}x" in text


def test_a_changed_metric_is_reported_and_a_changed_speed_is_not(script):
    before, after = _pair()
    run = next(iter(after["metrics"]))
    faster = copy.deepcopy(after)
    faster["metrics"][run]["lam_samples_per_s"] *= 2
    assert "identical" in script.agreement(before, faster)
    changed = copy.deepcopy(after)
    changed["metrics"][run]["probe_nmse"] += 1e-12
    assert script.agreement(before, changed) == f"Metrics DIFFER: {run}: probe_nmse."
    del changed["metrics"]
    assert "not recorded" in script.agreement(before, changed)
