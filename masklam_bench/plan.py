"""The jobs of a ``run`` or ``sweep`` command, with every argument checked before any job starts.

``cli`` (``run``) and ``sweep`` both call these, so both refuse the same input with the same
sentence. The heavy modules (methods, presets, mask sources, experts) are imported on first use.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable

from masklam_bench.checks import method_class, parse_dims, parse_envs, parse_int_list
from masklam_bench.errors import UserError


def check_run_options(method_cls: type, mask_source: str, envs: str) -> None:
    """Refuse options that would do nothing for this method or these envs."""
    from masklam_bench.mask_sources import parse_mask_source

    label = parse_mask_source(mask_source).label
    if label != "exact" and not getattr(method_cls, "uses_masks", False):
        raise UserError(
            f"mask source {mask_source}: method {method_cls.name!r} trains without agent masks, "
            "so the run would repeat the plain one under another name; use it with masklam, "
            "masklam-full, laom-masked or a method that reads masks.")
    for name in envs.split(","):
        if "OOD-v" in name or name.strip().startswith("Clean"):
            raise UserError(
                f"--envs {name.strip()}: runs train on a task's ID data and are evaluated in its "
                "ID and OOD envs (the oracle in the clean env); name the task, e.g. --envs cheetah.")


def run_jobs(args: argparse.Namespace) -> list[tuple[str, int, int]]:
    """Check every ``run`` argument before any job starts; return the (task, dim, seed) jobs.

    ``args`` holds ``method``, ``mask_source``, ``dims``, ``seeds``, ``envs``, ``preset`` and
    ``overrides`` (as :func:`masklam_bench.checks.parse_overrides` gives them).
    """
    from masklam_bench.presets import apply_overrides, get_preset

    dims = parse_dims(args.dims)
    seeds = parse_int_list(args.seeds, "--seeds", minimum=0, example="0,1,2")
    tasks = parse_envs(args.envs)
    cls = method_class(args.method)
    check_run_options(cls, args.mask_source, args.envs)
    data = apply_overrides(get_preset(args.preset), args.overrides).data
    if data.labelled_transitions > data.train_episodes * data.episode_steps:
        raise UserError(
            f"{data.labelled_transitions} labelled transitions (--labels, or --set "
            f"data.labelled_transitions): the {args.preset} preset's train split has at "
            f"most {data.train_episodes * data.episode_steps} transitions ({data.train_episodes} "
            "episodes); label fewer, or collect more with --set data.train_episodes=N.")
    if cls.latent_is_action and len(dims) > 1:
        print(f"note: {args.method} has no latent (its latent is the action): one run per seed, "
              "whatever --dims says.")
    if cls.latent_is_action:
        dims = [0]
    return [(t, d, s) for t in tasks for d in dims for s in seeds]


def check_experts(tasks: Iterable[str]) -> None:
    """Refuse, naming them all, tasks without a shipped expert: before any job runs."""
    from masklam_bench.experts import available_experts

    shipped = available_experts()
    missing = sorted({t for t in tasks if t not in shipped})
    if missing:  # before any job runs, not after the others have taken hours
        raise UserError(
            f"no shipped expert for {', '.join(missing)}, so no dataset can be collected; "
            "see BENCHMARK.md#experts (`masklam-bench train-expert --task TASK` trains one)."
        )


__all__ = ["check_experts", "check_run_options", "run_jobs"]
