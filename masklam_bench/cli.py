"""The ``masklam-bench`` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence


class UserError(Exception):
    """Bad input from the user: printed as one sentence, without a traceback."""


def _cmd_show(args: argparse.Namespace) -> None:
    """Write a grid of frames, masks, and ID vs OOD vs clean for one id."""
    from masklam_bench.show import rollout_frames, save_strip

    kwargs = {"level": args.level, "floor": args.floor}
    rows = rollout_frames(args.env, frames=args.frames, every=args.every, seed=args.seed, **kwargs)
    out = save_strip(rows, args.out, f"{args.env} (seed {args.seed}, every {args.every} steps, "
                                     f"level {args.level}, floor {args.floor})")
    print(f"wrote {out}")


def _cmd_bench_env(args: argparse.Namespace) -> None:
    """Print frames/s of each id next to stock dm_control rendering measured in the same run."""
    from masklam_bench.bench import format_table, run_benchmark
    from masklam_bench.envs import parse_env_id, registered_ids

    names = args.envs.split(",") if args.envs else registered_ids()
    for name in names:
        parse_env_id(name)
    print(format_table(run_benchmark(names, args.steps)))


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="masklam-bench",
        description="Benchmark latent action models on DeepMind Control with distracting backgrounds.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("show", help="write a PNG strip of frames and masks, ID vs OOD vs clean")
    p.add_argument("env", help="a registered id, e.g. DistractingCheetah-v0")
    p.add_argument("--out", default="strip.png", help="PNG path to write (default: strip.png)")
    p.add_argument("--frames", type=int, default=8, help="columns (default: 8)")
    p.add_argument("--every", type=int, default=10, help="steps between columns (default: 10)")
    p.add_argument("--seed", type=int, default=0, help="seed of the episode and actions")
    p.add_argument("--level", default="low", choices=["low", "hard"], help="distractor level")
    p.add_argument("--floor", default="keep", choices=["keep", "replace"], help="floor mode")
    p.set_defaults(func=_cmd_show)

    p = sub.add_parser("bench-env", help="frames/s of each id next to stock dm_control rendering")
    p.add_argument("--envs", default="", help="comma-separated ids (default: all twelve)")
    p.add_argument("--steps", type=int, default=300, help="steps timed per id (default: 300)")
    p.set_defaults(func=_cmd_bench_env)

    for register in _EXTRA_COMMANDS:
        register(sub)
    return parser


_EXTRA_COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = []
"""Sub-command registrars of other harness modules (each adds its parsers)."""


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except (UserError, ValueError, FileNotFoundError) as err:
        print(f"masklam-bench {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"masklam-bench {args.command}: interrupted; finished work is kept on disk.",
              file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
