"""``masklam-bench reproduce``: run a result file's run again and compare every metric.

A result file records everything its run was made with: the settings, the preset's overrides, the
torch thread count, the dataset's sha256, the suite's commit and the method's source hash. This
command rebuilds the run from it, runs it in folders of its own (``--workdir``; resumable: the same
command again continues an interrupted reproduction), and lists every metric that differs. Speeds
(``runner.TIME_DEPENDENT_METRICS``) are left out. Exit status 0: identical; 1: something differs.

Bit-identical results need the same machine type, torch version and thread count (BENCHMARK.md,
"Presets"), and a CPU: on CUDA, bf16 convolutions are not deterministic, so a GPU file's rerun
differs slightly. Where the suite's commit or the method's source differ from the file's, it says
so before running, since those may change numbers too; a file of an older protocol (other preset
values) is refused, since this version cannot run it.
"""

from __future__ import annotations

import argparse
import json
import math
import re
from pathlib import Path
from typing import Any

from masklam_bench.errors import UserError

DEFAULT_WORKDIR = "reproductions"
"""Where reproductions keep their run folders (``runs/``) and result files (``results/``)."""

_THREADS = re.compile(r"torch threads (\d+)")


def load_record(path: str | Path) -> dict[str, Any]:
    """A result file's JSON, or a one-line error saying why it cannot be reproduced."""
    path = Path(path)
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: no such result file.") from None
    except (OSError, ValueError) as exc:
        raise UserError(f"{path} is not a readable result file ({exc}).") from None
    run = (record.get("config") or {}).get("run") if isinstance(record, dict) else None
    if not isinstance(run, dict) or "method" not in run or not isinstance(
            record.get("metrics"), dict):
        raise UserError(f"{path} is not a result file of `masklam-bench run` (no config.run or "
                        "metrics).")
    _check_settings(path, run)
    return record


_SETTING_TYPES: dict[str, tuple[type, ...]] = {
    "int": (int,), "str": (str,), "bool": (bool,), "bool | None": (bool, type(None)),
    "dict[str, Any]": (dict,)}
"""The Python types a result file's ``config.run`` entries may hold, by ``RunConfig``'s
annotation of the field."""


def _check_settings(path: str | Path, run: dict[str, Any]) -> None:
    """Refuse a ``config.run`` that ``run`` cannot have written (an entry of the wrong type, no
    preset): a file edited by hand, or damaged, would otherwise fail deep inside the rerun."""
    import dataclasses

    from masklam_bench.runner import RunConfig

    if "preset" not in run:
        raise UserError(f"{path} records no preset in config.run; it was not written by "
                        "`masklam-bench run`, or was edited.")
    for field in dataclasses.fields(RunConfig):
        if field.name not in run:
            continue
        value, allowed = run[field.name], _SETTING_TYPES[field.type]
        if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
            raise UserError(f"{path}: config.run.{field.name} is {value!r}, which `masklam-bench "
                            f"run` never writes ({field.type} expected); was the file edited?")


def recorded_threads(record: dict[str, Any]) -> int:
    """The torch thread count the run used: its ``--threads``, else the count its machine gave."""
    threads = int(record["config"]["run"].get("threads") or 0)
    if threads:
        return threads
    found = _THREADS.search(str(record.get("machine", "")))
    return int(found.group(1)) if found else 0


def config_from_record(record: dict[str, Any], workdir: str | Path, data_root: str | None = None,
                       threads: int | None = None, device: str | None = None):
    """The :class:`~masklam_bench.runner.RunConfig` that made ``record``, writing into
    ``workdir``; ``data_root``, ``threads`` and ``device`` replace the recorded ones if given."""
    import dataclasses

    from masklam_bench.runner import RunConfig

    known = {f.name for f in dataclasses.fields(RunConfig)}
    settings = {k: v for k, v in record["config"]["run"].items() if k in known}
    settings.setdefault("bf16", True)  # files made before the precision was decided were bf16
    workdir = Path(workdir)
    settings.update(runs_root=str(workdir / "runs"), results_dir=str(workdir / "results"),
                    threads=recorded_threads(record) if threads is None else threads)
    if data_root is not None:
        settings["data_root"] = data_root
    elif str(settings.get("data_root", "")).startswith(".../"):
        raise UserError(f"the file names its dataset folder only as {settings['data_root']!r} "
                        "(made outside the working folder); pass --data-root with that folder.")
    if device is not None:
        settings["device"] = device
    return RunConfig(**settings)


def check_protocol(path: str | Path, record: dict[str, Any], config) -> None:
    """Refuse a file whose preset values (overrides applied) are not this version's: rerunning it
    here would run another protocol and report every number as different."""
    from masklam_bench.presets import preset_record
    from masklam_bench.provenance import flatten
    from masklam_bench.runner import resolve

    _, preset = resolve(config)
    recorded = record["config"].get("preset")
    commit = ((record.get("code") or {}).get("git_commit") or "")[:7]
    back = f"check out commit {commit}" if commit else "check out the version that made it"
    if not isinstance(recorded, dict):
        raise UserError(f"{path} records no preset values, so its protocol is unknown; {back} "
                        "to rerun it.")
    old, new = flatten(recorded), flatten(preset_record(preset))
    changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    if changed:
        shown = ", ".join(f"{k} {_value(old, k)} -> {_value(new, k)}" for k in changed[:3])
        more = f" and {len(changed) - 3} more" if len(changed) > 3 else ""
        raise UserError(f"{path} was made with other {config.preset} preset values than this "
                        f"version's ({shown}{more}): an older protocol; {back} to rerun it.")


def _value(flat: dict[str, Any], key: str) -> str:
    return repr(flat[key]) if key in flat else "(not recorded)"


def check_videos(record: dict[str, Any]) -> None:
    """Refuse where ``$MASKLAM_DAVIS_DIR`` would give other distractor videos than the file's."""
    from masklam_bench.envs.backgrounds import DAVIS_VIDEOS, distractor_videos
    from masklam_bench.leaderboard import recorded_videos

    wanted, here = recorded_videos(record), distractor_videos()
    if wanted != here:
        how = ("set $MASKLAM_DAVIS_DIR to the DAVIS 2017 folder" if wanted == DAVIS_VIDEOS
               else "unset $MASKLAM_DAVIS_DIR")
        raise UserError(f"the file's run used {wanted} distractor videos and this shell gives "
                        f"{here}: {how} to reproduce it.")


def code_notes(record: dict[str, Any], config) -> list[str]:
    """What differs between the code that made ``record`` and this checkout's."""
    from masklam_bench.checks import method_class
    from masklam_bench.provenance import git_state, method_sha256

    code = record.get("code") or {}
    if not code:
        return ["the file records no code version: numbers may differ for that reason."]
    notes = []
    made, here = code.get("git_commit"), git_state().get("git_commit")
    if made and here and made != here:
        notes.append(f"made at commit {made[:7]}; this checkout is at {here[:7]}.")
    if code.get("git_dirty"):
        notes.append("the checkout that made it had uncommitted changes, so its code was not "
                     "exactly that commit's.")
    if code.get("method_sha256") and code["method_sha256"] != method_sha256(
            method_class(config.method)):
        notes.append(f"the method's source files ({', '.join(code.get('method_files') or [])}) "
                     "differ from those that made the file: numbers may differ for that reason.")
    return notes


def precision_notes(config) -> list[str]:
    """A note when the file's run used bf16 autocast and this machine's CPU does not compute in
    bf16 fast (:func:`masklam_bench.precision.fast_bf16`)."""
    from masklam_bench.precision import fast_bf16

    if config.bf16 and not fast_bf16(config.device):
        return [("the file's run used bf16 autocast, and this CPU has no bf16 instructions "
                 "(AVX-512 or AMX): the rerun is 9-77x slower than float32 here, and its "
                 "numbers differ from those of a CPU with them (other kernels).")]
    return []


def _same(a: Any, b: Any) -> bool:
    """Equal as JSON values, NaN equal to NaN."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def differences(recorded: dict[str, Any], reproduced: dict[str, Any]
                ) -> tuple[list[tuple[str, Any, Any]], int]:
    """Fields that differ (name, recorded, reproduced) and how many were compared: every metric
    but the speeds, the dataset's sha256 and, for a ``sam2`` run, its mask file's."""
    from masklam_bench.runner import TIME_DEPENDENT_METRICS

    old, new = recorded["metrics"], reproduced["metrics"]
    pairs = [(f"metrics.{k}", old.get(k), new.get(k)) for k in sorted(set(old) | set(new))
             if k not in TIME_DEPENDENT_METRICS]
    pairs.append(("dataset.sha256", (recorded.get("dataset") or {}).get("sha256"),
                  (reproduced.get("dataset") or {}).get("sha256")))
    if recorded.get("sam_masks") or reproduced.get("sam_masks"):  # the masks it trained on
        pairs.append(("sam_masks.sha256", (recorded.get("sam_masks") or {}).get("sha256"),
                      (reproduced.get("sam_masks") or {}).get("sha256")))
    return [(name, a, b) for name, a, b in pairs if not _same(a, b)], len(pairs)


def report(path: str | Path, diffs: list[tuple[str, Any, Any]], compared: int) -> str:
    """One line when identical, else a Markdown table of what differs."""
    if not diffs:
        return f"{path}: reproduced: all {compared} fields identical (speeds not compared)."
    rows = [f"| {name} | {_short(a)} | {_short(b)} |" for name, a, b in diffs]
    return "\n".join([f"{path}: {len(diffs)} of {compared} fields differ:",
                      "| field | recorded | reproduced |", "|---|---|---|", *rows])


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    """Register ``masklam-bench reproduce``."""
    from masklam_bench.checks import int_at_least

    p = subparsers.add_parser(
        "reproduce", help="run a result file's run again and compare every metric")
    p.add_argument("results", nargs="+", metavar="RESULT_JSON", help="result files to reproduce")
    p.add_argument("--workdir", default=DEFAULT_WORKDIR,
                   help=f"folder for the runs and their result files (default: {DEFAULT_WORKDIR}"
                        "/; the same command again resumes there)")
    p.add_argument("--data-root", default=None,
                   help="dataset folder (default: the file's; collected if missing)")
    p.add_argument("--threads", type=int_at_least(0), default=None,
                   help="torch threads (default: the file's count; another count changes numbers)")
    p.add_argument("--device", default=None, help="torch device (default: the file's)")
    p.add_argument("--dry-run", action="store_true",
                   help="print what would run and the code differences, run nothing")
    p.set_defaults(func=_cmd_reproduce, output_folders=("workdir", "data_root"))


def _checked_jobs(args: argparse.Namespace) -> list[tuple[str, dict[str, Any], Any]]:
    """(path, record, config) of every file, each checked before any of them runs."""
    import torch

    from masklam_bench.checks import check_device, method_class

    jobs = []
    for path in args.results:
        record = load_record(path)
        config = config_from_record(record, args.workdir, args.data_root, args.threads,
                                    args.device)
        method_class(config.method)  # an unknown name or a plug-in that does not import
        if config.device.startswith("cuda") and not torch.cuda.is_available():
            raise UserError(f"{path} was made on {config.device} and this machine has no CUDA "
                            "device; pass --device cpu to rerun it on the CPU (its numbers will "
                            "differ: GPU and CPU kernels round differently).")
        check_device(config.device)
        check_protocol(path, record, config)
        check_videos(record)
        jobs.append((path, record, config))
    return jobs


def _cmd_reproduce(args: argparse.Namespace) -> int:
    import torch

    from masklam_bench.runner import run

    jobs = _checked_jobs(args)
    all_cores = torch.get_num_threads()
    status = 0
    for n, (path, record, config) in enumerate(jobs, 1):
        torch.set_num_threads(config.threads or all_cores)  # a 0 after a 1 gets all cores again
        print(f"[{n}/{len(jobs)}] {path}: {config.run_name}, preset {config.preset}, "
              f"threads {config.threads}, device {config.device}"
              + (f", --set {config.overrides}" if config.overrides else ""))
        for note in code_notes(record, config) + precision_notes(config):
            print(f"  note: {note}")
        if args.dry_run:
            continue
        diffs, compared = differences(record, run(config))
        print(report(path, diffs, compared))
        status = status or (1 if diffs else 0)
    return status
