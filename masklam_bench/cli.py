"""The ``masklam-bench`` command line."""

from __future__ import annotations

import argparse
import importlib
import json
import signal
import sys
import threading
from collections.abc import Sequence

from masklam_bench import interrupts
from masklam_bench.checks import (
    check_declared_outputs,
    check_device,
    int_at_least,
    method_class,
    parse_dims,
    parse_int_list,
    parse_overrides,
)
from masklam_bench.errors import BenchError, UserError
from masklam_bench.plan import check_experts, run_jobs
from masklam_bench.precision import add_bf16_flag, float32_note, say_if_float32, uses_bf16


def _cmd_show(args: argparse.Namespace) -> None:
    """Write a grid of frames, masks, and ID vs OOD vs clean for one id."""
    from masklam_bench.show import image_format, rollout_frames, save_strip

    image_format(args.out)  # before rolling out: a bad --out loses no minutes
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


def _cmd_run(args: argparse.Namespace) -> None:
    """Run the benchmark pipeline for every (env, latent dim, seed) of one method."""
    import torch

    from masklam_bench.presets import default_preset_name, get_preset, split_overrides

    args.preset = args.preset or default_preset_name()
    args.overrides, same = split_overrides(get_preset(args.preset),
                                           parse_overrides(args.set, args.labels))
    if same:
        print(f"note: {', '.join(same)} already {'is' if len(same) == 1 else 'are'} the "
              f"{args.preset} preset's value; the run is the preset's own, not a variant.")
    jobs = run_jobs(args)
    device = check_device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    check_experts(t for t, _, _ in jobs)
    say_if_float32(args.bf16, device)
    from masklam_bench.runner import RunConfig, run

    print(f"preset {args.preset}" + (f" with --set {args.overrides}" if args.overrides else "")
          + f", {len(jobs)} run(s), results -> {args.out}/")
    for n, (task, dim, seed) in enumerate(jobs, 1):
        config = RunConfig(method=args.method, task=task, latent_dim=dim, seed=seed,
                           preset=args.preset, device=device, data_root=args.data_root,
                           runs_root=args.runs_root, results_dir=args.out,
                           threads=args.threads, compile=args.compile,
                           mask_source=args.mask_source, bf16=args.bf16,
                           overrides=args.overrides, tensorboard=not args.no_tensorboard)
        print(f"[{n}/{len(jobs)}] {config.run_name}")
        result = run(config)
        m = result["metrics"]
        print(f"  probe NMSE {_fmt(m.get('probe_nmse'))} (untrained IDM "
              f"{_fmt(m.get('probe_nmse_untrained'))}), normalised return ID "
              f"{_fmt(m.get('normalized_return_id'))} OOD {_fmt(m.get('normalized_return_ood'))}"
              f", {result['timings']['total_s']:.0f} s -> {args.out}/{config.run_name}.json")


def _cmd_bench_train(args: argparse.Namespace) -> None:
    """Print LAM training samples/s of our loop next to a bare PyTorch loop on the same networks."""
    from masklam_bench.baselines.base import LamConfig
    from masklam_bench.baselines.bench import train_throughput

    dims = parse_dims(args.dims)
    threads = parse_int_list(args.threads, "--threads", minimum=1, example="1,2")
    check_device(args.device)
    for name in args.methods.split(","):
        method_class(name)
    bf16 = uses_bf16(args.bf16, args.device)
    if float32_note(args.bf16, args.device):
        print("note: float32, since this CPU has no bf16 instructions (AVX-512 or AMX), where "
              "bf16 autocast is 9-77x slower; --bf16 times bf16 anyway.")
    print("| method | encoder | latent | bf16 | threads | ours samples/s | bare loop samples/s |"
          "\n|---|---|---:|---|---:|---:|---:|")
    for name in args.methods.split(","):
        for dim in dims:
            for n in threads:
                config = LamConfig(latent_dim=dim, encoder=args.encoder, bf16=bf16)
                res = train_throughput(name, config, 64, batch=args.batch, steps=args.steps,
                                       device=args.device, threads=n)
                bare = res["bare_samples_per_s"]
                print(f"| {name} | {args.encoder} | {dim} | {bf16} | {n} | "
                      f"{res['method_samples_per_s']:.0f} | "
                      f"{'n/a' if bare is None else f'{bare:.0f}'} |")


def _cmd_train_expert(args: argparse.Namespace) -> None:
    """Train (or resume) a state-based SAC expert and export its actor to RUN_DIR/candidate.pt.

    The shipped expert is replaced only with ``--replace-shipped``.
    """
    from masklam_bench.envs import get_task
    from masklam_bench.experts import train_expert

    task = get_task(args.task).name
    overrides = {"num_threads": args.threads, "stand_bonus": args.stand_bonus,
                 "stop_return": args.stop_return, "init_from": args.init_from}
    summary = train_expert(task, steps=args.steps, out_dir=args.out, seed=args.seed,
                           resume=not args.restart, export_weights=not args.no_export,
                           replace_shipped=args.replace_shipped, **overrides)
    print(json.dumps(summary, indent=2, default=str))


def _cmd_eval_expert(args: argparse.Namespace) -> None:
    """Measure the shipped expert's and a random policy's return (mean and std over episodes)."""
    from masklam_bench.envs import get_task
    from masklam_bench.experts import LAOM_RETURNS, evaluate_expert, random_policy_return

    tasks = [get_task(name.strip()).name for name in args.task.split(",")]
    if args.weights is not None and len(tasks) != 1:
        raise UserError("--weights names one expert file, so --task must name one task.")
    for task in tasks:
        res = evaluate_expert(task, episodes=args.episodes, seed=args.seed, path=args.weights)
        rnd = random_policy_return(task, episodes=args.episodes, seed=args.seed)
        laom = LAOM_RETURNS.get(task)
        share = (f"{res['mean'] / laom:.1%} of LAOM's expert ({laom})" if laom is not None
                 else "no LAOM reference (add one to masklam_bench.experts.LAOM_RETURNS)")
        print(f"{task}: expert {res['mean']:.1f} +- {res['std']:.1f} over {args.episodes} "
              f"episodes (seed {args.seed}); random policy {rnd:.1f}; {share}")
        print(f"  expert episodes: {' '.join(f'{r:.1f}' for r in res['returns'])}")


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _add_run_parser(sub: argparse._SubParsersAction) -> None:
    """The ``run`` sub-command and its flags."""
    p = sub.add_parser("run", help="train and evaluate a method; writes one result JSON per run")
    p.add_argument("--method", required=True,
                   help="registered method (lapo, masklam, masklam-full, laom, laom-labels, "
                        "laom-masked, oracle, bc-labels, untrained-idm, bc-labelled) or "
                        "module:Class")
    p.add_argument("--dims", default="64", help="latent dims, comma-separated (default: 64)")
    p.add_argument("--envs", default="cheetah",
                   help="tasks, comma-separated: cheetah,walker,hopper,humanoid (default: cheetah)")
    p.add_argument("--seeds", default="0", help="training seeds, comma-separated (default: 0)")
    p.add_argument("--preset", default=None, choices=["smoke", "cpu", "gpu"],
                   help="size preset (default: gpu when CUDA is available, else cpu)")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available)")
    p.add_argument("--out", default="results",
                   help="folder for result JSON files (default: results; the committed "
                        "leaderboard's files are added to leaderboards/results by hand)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a preset field, e.g. --set train.lam_steps=6000 (repeatable)")
    p.add_argument("--labels", type=int_at_least(1), default=None, metavar="N",
                   help="labelled transitions for the action decoder (= --set "
                        "data.labelled_transitions=N; the paper sweeps 2k..128k)")
    p.add_argument("--data-root", default="data", help="dataset folder (collected if missing)")
    p.add_argument("--runs-root", default="runs", help="checkpoint folder (runs resume from it)")
    p.add_argument("--threads", type=int_at_least(0), default=0,
                   help="torch CPU threads (0: all cores)")
    p.add_argument("--compile", action="store_true", help="torch.compile the networks (CUDA)")
    add_bf16_flag(p)
    p.add_argument("--no-tensorboard", action="store_true",
                   help="write no TensorBoard curves (default: RUNS_ROOT/<run>/tb/, see "
                        "`tensorboard --logdir runs`)")
    p.add_argument("--mask-source", default="exact",
                   help="masks to train with: exact, sam2, dilate-R, erode-R, flip-P, drop-P "
                        "(default: exact); non-exact sources get their own leaderboard rows")
    p.set_defaults(func=_cmd_run, output_folders=("out", "data_root", "runs_root"))


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="masklam-bench",
        description="Benchmark latent action models on DeepMind Control with distracting backgrounds.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("show", help="write a PNG strip of frames and masks, ID vs OOD vs clean")
    p.add_argument("env", help="a registered id, e.g. DistractingCheetah-v0")
    p.add_argument("--out", default="strip.png", help="PNG path to write (default: strip.png)")
    p.add_argument("--frames", type=int_at_least(1), default=8, help="columns (default: 8)")
    p.add_argument("--every", type=int_at_least(1), default=10,
                   help="steps between columns (default: 10)")
    p.add_argument("--seed", type=int_at_least(0), default=0, help="seed of the episode and actions")
    p.add_argument("--level", default="low", choices=["low", "hard"], help="distractor level")
    p.add_argument("--floor", default="keep", choices=["keep", "replace"], help="floor mode")
    p.set_defaults(func=_cmd_show, output_files=("out",))

    p = sub.add_parser("bench-env", help="frames/s of each id next to stock dm_control rendering")
    p.add_argument("--envs", default="", help="comma-separated ids (default: all twelve)")
    p.add_argument("--steps", type=int_at_least(1), default=300,
                   help="steps timed per id (default: 300)")
    p.set_defaults(func=_cmd_bench_env)

    _add_run_parser(sub)

    p = sub.add_parser("bench-train",
                       help="LAM training samples/s: our loop vs a bare PyTorch loop")
    p.add_argument("--methods", default="lapo,masklam", help="comma-separated method names")
    p.add_argument("--dims", default="64,8192", help="latent sizes (default: 64,8192)")
    p.add_argument("--threads", default="1", help="torch thread counts (default: 1)")
    p.add_argument("--encoder", default="light", choices=["light", "impala"])
    p.add_argument("--batch", type=int_at_least(1), default=64)
    p.add_argument("--steps", type=int_at_least(1), default=20, help="timed steps per block")
    p.add_argument("--device", default="cpu")
    add_bf16_flag(p)
    p.set_defaults(func=_cmd_bench_train)

    p = sub.add_parser("train-expert", help="train (or resume) a state-based SAC expert")
    p.add_argument("--task", required=True, help="cheetah-run, walker-run, hopper-hop, ...")
    p.add_argument("--steps", type=int_at_least(1), default=1_000_000,
                   help="environment steps in total")
    p.add_argument("--out", default=None, help="checkpoint folder (default runs/experts/TASK)")
    p.add_argument("--seed", type=int_at_least(0), default=0)
    p.add_argument("--threads", type=int_at_least(1), default=1,
                   help="torch CPU threads (default: 1)")
    p.add_argument("--stand-bonus", type=float, default=0.0,
                   help="dense standing term added to the training reward only (walker, hopper, "
                        "humanoid; humanoid-walk and hopper-hop's first stage were trained with "
                        "0.1)")
    p.add_argument("--stop-return", type=float, default=None,
                   help="stop once a training evaluation's mean return reaches this")
    p.add_argument("--init-from", default=None, metavar="RUN_DIR",
                   help="start from another run's agent, with an empty replay buffer (e.g. "
                        "fine-tune a hopper trained with --stand-bonus without it)")
    p.add_argument("--restart", action="store_true", help="ignore existing checkpoints")
    p.add_argument("--no-export", action="store_true", help="do not export the trained actor")
    p.add_argument("--replace-shipped", action="store_true",
                   help="export over the package's shipped expert (default: RUN_DIR/candidate.pt;"
                        " datasets of the old expert are then refused)")
    p.set_defaults(func=_cmd_train_expert, output_folders=("out",))

    p = sub.add_parser("eval-expert", help="measure shipped experts' returns next to random's")
    p.add_argument("--task", required=True, help="task, or a comma-separated list")
    p.add_argument("--episodes", type=int_at_least(1), default=10)
    p.add_argument("--seed", type=int_at_least(0), default=0)
    p.add_argument("--weights", default=None, metavar="PATH",
                   help="an exported expert file to measure instead of the shipped one")
    p.set_defaults(func=_cmd_eval_expert)

    for module in _EXTRA_COMMANDS:
        importlib.import_module(module).add_cli(sub)
    return parser


_EXTRA_COMMANDS = (
    "masklam_bench.collect",
    "masklam_bench.curves",
    "masklam_bench.gpu_check",
    "masklam_bench.leaderboard",
    "masklam_bench.sam_masks",
    "masklam_bench.mask_quality",
    "masklam_bench.reproduce",
    "masklam_bench.sweep",
)
"""Harness modules that add their own sub-commands through ``add_cli(subparsers)``."""


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    from masklam_bench.allocator import tune_allocator

    tune_allocator()  # every sub-command trains or renders large buffers
    # SIGTERM (kill, a scheduler's pre-emption) gets Ctrl-C's clean-up, and neither is lost when
    # it lands where Python swallows exceptions (masklam_bench.interrupts); only the main thread
    # may set a handler, so main() called from another thread keeps the defaults.
    in_main = threading.current_thread() is threading.main_thread()
    previous = interrupts.install() if in_main else {}
    try:
        check_declared_outputs(args)  # an unwritable --out refused now, not after the work
        status = args.func(args)  # None, or a command's own exit status (reproduce: 1 = differs)
    except BenchError as err:  # bad input; anything else is a bug and keeps its traceback
        print(f"masklam-bench {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as stop:
        print(f"masklam-bench {args.command}: interrupted; finished work is kept on disk.",
              file=sys.stderr)
        return 128 + signal.SIGTERM if isinstance(stop, interrupts.Terminated) else 130
    finally:
        interrupts.clear()
        interrupts.restore(previous)
    return status or 0


if __name__ == "__main__":
    sys.exit(main())
