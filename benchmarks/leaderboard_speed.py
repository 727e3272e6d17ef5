"""Seconds to regenerate the leaderboard with the bootstrap's statistics as shipped
(``aggregate.interquartile_mean`` and ``aggregate.improvement_probability``) and with rliable's
own (``aggregate_iqm`` and ``probability_of_improvement``, through SciPy), which they replaced;
and whether the two give the same files, byte for byte.

    python benchmarks/leaderboard_speed.py [--results leaderboards/results] [--rounds 2]

The two alternate, shipped first, ``--rounds`` times each, into temporary folders.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from rliable import metrics as rly_metrics

from masklam_bench import aggregate, leaderboard

STATISTICS = {"shipped": (aggregate.interquartile_mean, aggregate.improvement_probability),
              "rliable": (rly_metrics.aggregate_iqm, rly_metrics.probability_of_improvement)}


def _timed(results: str, out: Path, name: str) -> float:
    aggregate.interquartile_mean, aggregate.improvement_probability = STATISTICS[name]
    try:
        start = time.perf_counter()
        leaderboard.write_leaderboard(results, out)
        return time.perf_counter() - start
    finally:
        aggregate.interquartile_mean, aggregate.improvement_probability = STATISTICS["shipped"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", default="leaderboards/results")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    seconds: dict[str, list[float]] = {name: [] for name in STATISTICS}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            for name in STATISTICS:
                seconds[name].append(_timed(args.results, Path(tmp) / f"{name}{round_}", name))
        files = sorted(p.name for p in (Path(tmp) / "shipped0").iterdir())
        same = all((Path(tmp) / "shipped0" / f).read_bytes()
                   == (Path(tmp) / "rliable0" / f).read_bytes() for f in files)
    for name, values in seconds.items():
        print(f"{name:8s} " + ", ".join(f"{s:.1f} s" for s in values))
    print(f"the {len(files)} files are {'identical' if same else 'DIFFERENT'}")


if __name__ == "__main__":
    main()
