"""More evaluation episodes for finished runs, without training anything again.

    python benchmarks/more_episodes.py RUN_DIR [RUN_DIR ...] --episodes 10 \
        --results leaderboards/results [--out F.json] [--png F.png]

Stage 5 rolls out ``train.eval_episodes`` episodes (3 at ``cpu``) with env seeds
``EVAL_SEED_BASE + i``. This script opens a run that finished stage 4 (its identity checked as
for a resume; other method source is accepted, as in ``decoder_protocols.py``), rolls out episodes
``0 .. N-1`` of its ID env (the clean env for the oracle) with its latent policy and decoder, and
normalises them with the reference scores of the run's result file (found by run name in
``--results``). The first episodes are the run's own: they must come out identical to the result
file's, or the script stops, since this code or machine then does not reproduce the run.

For ``bc-labels`` runs it also prints the ceiling curve's trend
(:func:`masklam_bench.curves.fit_ceiling`) and, with ``--png``, draws the points as ``curve
ceiling`` does. The output JSON holds one row per run; ``--refit JSON`` starts from such a file:
only run folders not in it are rolled out, and every row is fitted and drawn again. A run that
already rolled out at least ``--episodes`` episodes in its stage 5 (``--set
train.eval_episodes=10``) needs no folder: ``--result FILE`` takes its first episodes from its
result file.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from masklam_bench import curves, metrics
from masklam_bench.envs import env_id
from masklam_bench.errors import BenchError
from masklam_bench.fileio import atomic_write_bytes, atomic_write_json
from masklam_bench.runner import evaluate_policy, load_run_folder


def _result_file(run_name: str, results: list[Path]) -> dict:
    for folder in results:
        path = folder / f"{run_name}.json"
        if path.exists():
            return json.loads(path.read_text())
    raise BenchError(f"no result file {run_name}.json in {', '.join(map(str, results))}")


def score(run_dir: Path, episodes: int, results: list[Path], progress: bool) -> dict[str, object]:
    """``episodes`` ID returns of one finished run, normalised; the first checked against its
    result file."""
    trained = load_run_folder(run_dir, check_code=False)
    run = trained.run
    config = run.config
    record = _result_file(run.config.run_name, results)
    saved = record["metrics"]
    split = "none" if run.cls.uses_clean_data else "id"
    returns = evaluate_policy(trained.policy, trained.decoder,
                              {"id": env_id(config.task, split)}, episodes,
                              run.preset.train.eval_episode_steps,
                              run.method.config.context_frames, run.device, progress,
                              f"{run_dir.name}: {episodes} episodes")["id"]
    known = saved["return_id_episodes"][:episodes]
    if returns[:len(known)] != known:
        raise BenchError(f"{run_dir}: episodes 0-{len(known) - 1} gave {returns[:len(known)]}, "
                         f"its result file says {known}; this code does not reproduce the run")
    return _row(run_dir.name, record, returns, len(known))


def from_result(path: Path, episodes: int) -> dict:
    """A row from a result file whose stage 5 rolled out at least ``episodes`` episodes."""
    try:
        record = json.loads(path.read_text())
        returns = record["metrics"]["return_id_episodes"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BenchError(f"{path}: not a result file ({exc!r})") from None
    if len(returns) < episodes:
        raise BenchError(f"{path}: its run rolled out {len(returns)} episodes, fewer than "
                         f"--episodes {episodes}; give its run folder instead")
    return _row(path.stem, record, returns[:episodes], episodes)


def _row(name: str, record: dict, returns: list[float], reproduced: int) -> dict:
    """One output row: ``returns`` (raw ID returns) of the run whose result file is ``record``,
    normalised with its reference scores, beside the run's sizes as a ceiling point has them."""
    m = record["metrics"]
    normalised = [metrics.normalized_return(x, m["ref_min_score"], m["ref_max_score"])
                  for x in returns]
    sizes = curves.ceiling_point(record)
    free = curves.CEILING_SWEPT + curves.CEILING_MEASUREMENT
    return {"run": name, "task": record["task"], "method": record["method"],
            "preset": record["config"]["preset"]["name"],
            "other_overrides": {k: v for k, v in (record.get("overrides") or {}).items()
                                if k not in free},
            "seed": record["seed"], "latent_dim": record["config"]["run"]["latent_dim"],
            **{k: sizes[k] for k in ("bc_steps", "train_episodes", "bc_random_shift")},
            "episodes": normalised, "returns": returns, "reproduced_episodes": reproduced,
            "normalized_return_id": float(sum(normalised) / len(normalised))}


def _mixed(ceiling: list[dict]) -> str | None:
    """Why the ``bc-labels`` rows cannot be one curve (another task or preset, or overrides
    outside the sizes a ceiling curve varies and the episode count), or None."""
    keys = ("task", "preset", "other_overrides")
    missing = [r["run"] for r in ceiling if any(k not in r for k in keys)]
    if missing:
        return (f"rows made before this script recorded preset and overrides: {missing}; "
                "score them again")
    kinds = {json.dumps([r[k] for k in keys], sort_keys=True) for r in ceiling}
    if len(kinds) > 1:
        return ("the bc-labels rows are not one curve: (task, preset, other overrides) differ: "
                f"{sorted(kinds)}")
    return None


def _score_all(run_dirs: list[Path], episodes: int, results: list[Path]) -> list[dict] | None:
    """:func:`score` for every run, printed as it goes; None (and the reason) on a bad run."""
    rows = []
    for run_dir in run_dirs:
        try:
            rows.append(score(run_dir, episodes, results, progress=True))
        except BenchError as exc:
            print(f"{run_dir}: {exc}", file=sys.stderr)
            return None
        row = rows[-1]
        mean, low, high = metrics.mean_ci(row["episodes"])
        print(f"{row['run']}: {episodes} episodes, normalised return {mean:.3f} "
              f"[{low:.3f}, {high:.3f}] (first {row['reproduced_episodes']} as in its result "
              "file)", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dirs", nargs="*", type=Path, help="finished run folders")
    parser.add_argument("--episodes", type=int, default=10, help="ID episodes per run")
    parser.add_argument("--results", type=Path, action="append", default=[],
                        help="folder of the runs' result files (repeatable)")
    parser.add_argument("--result", type=Path, action="append", default=[], metavar="FILE",
                        help="a result file with at least --episodes stage-5 episodes: its row "
                             "without a run folder (repeatable)")
    parser.add_argument("--refit", type=Path, metavar="JSON",
                        help="start from the rows of an earlier --out file (with its episode "
                             "count): only runs not in it are rolled out, then all are fitted")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: all)")
    parser.add_argument("--out", type=Path, help="write the rows as JSON here")
    parser.add_argument("--png", type=Path, help="draw the bc-labels rows as a ceiling curve")
    args = parser.parse_args(argv)
    if args.episodes < 1:
        parser.error("--episodes must be at least 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    if args.refit:
        try:
            saved = json.loads(args.refit.read_text())
            rows, args.episodes = saved["rows"], saved["episodes"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            print(f"{args.refit}: not an output of this script ({exc!r})", file=sys.stderr)
            return 2
    elif not args.run_dirs and not args.result:
        parser.error("give run folders (or --refit JSON, or --result FILE)")
    if args.run_dirs:
        if not args.results:
            parser.error("--results is needed to check the runs' first episodes")
        done = {row["run"] for row in rows}
        todo = [d for d in dict.fromkeys(args.run_dirs) if d.name not in done]
        if len({d.name for d in todo}) < len(todo):
            parser.error("two run folders of the same name: one run counted twice")
        more = _score_all(todo, args.episodes, args.results)
        if more is None:
            return 2
        rows += more
    done = {row["run"] for row in rows}
    for path in args.result:
        if path.stem in done:
            continue
        try:
            rows.append(from_result(path, args.episodes))
        except BenchError as exc:
            print(exc, file=sys.stderr)
            return 2
        done.add(path.stem)
        print(f"{path.stem}: {args.episodes} episodes from its result file, normalised return "
              f"{rows[-1]['normalized_return_id']:.3f}", flush=True)
    ceiling = [r for r in rows if r["method"] == "bc-labels"]
    problem = _mixed(ceiling)
    if problem:
        print(problem, file=sys.stderr)
        return 2
    fits = curves.fit_ceiling(ceiling) if ceiling else []
    for fit in fits:
        print(f"bc-labels trend, {curves.describe_fit(fit)}")
    if args.out:
        atomic_write_json(args.out, {"episodes": args.episodes, "rows": rows, "fits": fits})
    if args.png and ceiling:
        title = f"{ceiling[0]['task']}, bc-labels, {args.episodes} eval episodes per run"
        atomic_write_bytes(args.png, curves.plot_ceiling(ceiling, title, fits))
    return 0


if __name__ == "__main__":
    sys.exit(main())
