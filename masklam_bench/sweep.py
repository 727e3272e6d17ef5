"""``masklam-bench sweep``: a grid of benchmark runs on local Ray, an existing Ray cluster or Slurm.

The grid (methods x tasks x dims x seeds x mask sources, at one preset) comes from flags or a TOML
file with the same keys, and is checked as a whole with the errors of ``masklam-bench run`` before
anything starts. Every run goes through :func:`masklam_bench.runner.run`, so a finished run (its
result file exists) is skipped and an unfinished one resumes from its checkpoints. Each task's
dataset is collected once, by a job its runs wait for. The suite schedules nothing itself: Ray or
Slurm (through submitit) does.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import os
import re
import shutil
import time
import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from masklam_bench import interrupts
from masklam_bench.checks import (
    check_device,
    check_output_folder,
    int_at_least,
    method_class,
    parse_overrides,
)
from masklam_bench.errors import BenchError, UserError
from masklam_bench.plan import check_experts, check_run_options, run_jobs
from masklam_bench.precision import add_bf16_flag, float32_note, uses_bf16

if TYPE_CHECKING:
    from masklam_bench.runner import RunConfig

LAUNCHERS = ("ray", "slurm", "local-submitit")
"""``ray``: a local Ray instance, or the cluster at ``--ray-address``; ``slurm``: one Slurm job
per run through submitit; ``local-submitit``: submitit's local executor (tests, debugging)."""
GRID_KEYS = ("methods", "envs", "dims", "seeds", "mask-sources", "preset", "set")
"""Keys of a grid file; each is also a flag of ``sweep`` (``--mask-sources``, ...)."""
GRID_DEFAULTS: dict[str, str | None] = {
    "methods": None, "envs": "cheetah", "dims": "64", "seeds": "0", "mask-sources": "exact",
    "preset": None,
}
"""Values of the grid keys that neither a flag nor the grid file gives (``preset``: see
:func:`_default_preset`; ``methods`` is required)."""
_EXAMPLES = {
    "methods": 'methods = ["lapo", "masklam"]', "envs": 'envs = ["cheetah", "walker"]',
    "dims": "dims = [64, 8192]", "seeds": "seeds = [0, 1, 2]",
    "mask-sources": 'mask-sources = ["exact", "dilate-3"]', "preset": 'preset = "cpu"',
    "set": '[set] then train.lam_steps = 6000',
}
"""An example of each grid-file key, quoted in its type errors."""
SUBMITIT_POLL_S = 2.0
"""Seconds between two looks at the state of submitit jobs."""
DEFAULT_TIMEOUT_MIN = 180
"""Slurm time limit of one job, in minutes (a ``gpu``-preset run's time is unmeasured;
``masklam-bench gpu-check`` estimates it)."""
_SUBMITIT_LOG_VAR = "SUBMITIT_LOG_LEVEL"
"""submitit reads its log level from this variable; ``NOCONFIG`` leaves logging alone."""
STATUSES = ("done", "skipped", "stale", "failed")
"""What can become of a run, in the order of the final table."""


@dataclasses.dataclass(frozen=True)
class SweepOptions:
    """How and where a sweep runs: everything but the grid."""

    launcher: str = "ray"
    """One of :data:`LAUNCHERS`."""
    ray_address: str | None = None
    """Address of an existing Ray cluster (``auto``, ``ray://host:10001``); None: a local one."""
    ray_cpus: int | None = None
    """CPUs of the local Ray instance; None: every core of this machine."""
    cpus_per_run: int = 1
    """CPUs each run (and each dataset job) asks for; also its torch threads and OMP_NUM_THREADS."""
    gpus_per_run: float = 0.0
    """GPUs each run asks for (Ray accepts fractions, Slurm whole GPUs); > 0 runs on ``cuda``."""
    data_root: str = "data"
    """Dataset folder, shared by every worker."""
    runs_root: str = "runs"
    """Checkpoint folder, shared by every worker (runs resume from it)."""
    out: str = "results"
    """Folder of the result files; a run whose file is here is skipped."""
    bf16: bool | None = None
    """bf16 autocast (``--bf16`` / ``--no-bf16``, as for ``run``); None: decided for every run
    when the sweep is planned (:attr:`uses_bf16`), so that the runs' names are known before any
    worker starts."""
    tensorboard: bool = True
    """TensorBoard curves in each run's folder (``--no-tensorboard`` turns them off)."""
    compile: bool = False
    """``torch.compile`` the networks (CUDA)."""
    slurm_partition: str | None = None
    """Slurm partition of every job; None: the cluster's default."""
    timeout_min: int = DEFAULT_TIMEOUT_MIN
    """Time limit of one submitit job, in minutes."""
    mem_gb: int | None = None
    """Memory of every Slurm job in GB; None: the cluster's default (often a few GB per CPU,
    less than a ``gpu``-preset run holds)."""
    slurm_params: dict[str, str] = dataclasses.field(default_factory=dict)
    """Further ``sbatch`` options of every job (``account``, ``qos``, ``constraint``, ...)."""
    logs: str | None = None
    """Folder of submitit's job files and logs; None: ``<runs_root>/submitit``."""
    dry_run: bool = False
    """Print the grid and the resources it asks for, and start nothing."""
    leaderboard: bool = True
    """Regenerate ``<out>/leaderboard`` from ``out`` at the end."""

    @property
    def device(self) -> str:
        """The torch device of every run."""
        return "cuda" if self.gpus_per_run > 0 else "cpu"

    @property
    def cluster_cpus_unknown(self) -> bool:
        """Whether the runs' precision was not given and their CPUs are a cluster's, not this
        machine's, so this machine's CPU cannot decide it."""
        return self.bf16 is None and self.on_cluster and self.device == "cpu"

    @property
    def uses_bf16(self) -> bool:
        """The precision of every run, decided when the sweep is planned: the flag's, else bf16
        where this machine computes in bf16 fast; but on a cluster's CPUs
        (:attr:`cluster_cpus_unknown`), bf16 (the presets' precision) unless ``--no-bf16``."""
        return True if self.cluster_cpus_unknown else uses_bf16(self.bf16, self.device)

    @property
    def log_dir(self) -> str:
        """Where submitit writes its job files and logs."""
        return self.logs or str(Path(self.runs_root) / "submitit")

    @property
    def on_cluster(self) -> bool:
        """Whether workers may run on other machines (so paths must be shared)."""
        return self.ray_address is not None or self.launcher == "slurm"


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What became of one run."""

    name: str
    """The run's name (its result file is ``<out>/<name>.json``)."""
    status: str
    """One of :data:`STATUSES`."""
    error: str = ""
    """The failure, in one line."""


# ------------------------------------------------------------------------------------------------
# The grid
# ------------------------------------------------------------------------------------------------
def read_grid_file(path: str | os.PathLike) -> dict[str, Any]:
    """The keys of a TOML grid file as flag values (comma-separated strings; ``set`` a list)."""
    try:
        data = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"--grid {path}: no such file.") from None
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"--grid {path} cannot be read as a TOML text file ({err}).") from None
    except tomllib.TOMLDecodeError as err:
        raise UserError(f"--grid {path} is not valid TOML ({err}).") from None
    values: dict[str, Any] = {}
    for raw_key, value in data.items():
        key = raw_key.replace("_", "-")
        if key in values:
            raise UserError(f"--grid {path}: {raw_key!r} and an earlier key are both {key!r} "
                            "('_' and '-' spell the same key); keep one.")
        if key not in GRID_KEYS:
            close = difflib.get_close_matches(key, GRID_KEYS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise UserError(f"--grid {path}: unknown key {raw_key!r}{hint}; the keys are "
                            f"{', '.join(GRID_KEYS)}.")
        values[key] = _grid_value(path, key, value)
    return values


def _grid_value(path: str | os.PathLike, key: str, value: Any) -> Any:
    """One grid-file value as the matching flag's text, or a clear sentence on its type."""
    numbers = key in ("dims", "seeds")
    kind = int if numbers else str
    if key == "set":
        items = _set_items(value)
        if items is not None:
            return items
    elif key == "preset":
        if isinstance(value, str):
            return value
    elif isinstance(value, list) and value and all(_is(v, kind) for v in value):
        return ",".join(str(v) for v in value)
    elif isinstance(value, str) or (numbers and _is(value, int)):
        return str(value)
    expected = {"set": "a table of preset fields", "preset": "a preset name"}.get(
        key, f"a list of {'integers' if numbers else 'names'}")
    raise UserError(f"--grid {path}: {key!r} must be {expected}, e.g. {_EXAMPLES[key]}; "
                    f"got {value!r}.")


def _is(value: Any, kind: type) -> bool:
    """isinstance, except that a bool is no integer."""
    return isinstance(value, kind) and not (kind is int and isinstance(value, bool))


def _set_items(value: Any) -> list[str] | None:
    """A ``set`` table (``[set]`` with ``train.lam_steps = 6000``) as KEY=VALUE items, or None."""
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    if not isinstance(value, dict):
        return None
    items = []
    for name, field in value.items():
        fields = field if isinstance(field, dict) else {"": field}
        for sub, v in fields.items():
            if isinstance(v, dict | list | bool):
                return None
            items.append(f"{name}.{sub}={v}" if sub else f"{name}={v}")
    return items


def grid_values(args: argparse.Namespace) -> dict[str, Any]:
    """The grid's keys: a flag given wins over the grid file, which wins over the defaults."""
    values: dict[str, Any] = dict(GRID_DEFAULTS, set=[])
    if args.grid:
        values.update(read_grid_file(args.grid))
    for key in GRID_KEYS:
        given = getattr(args, key.replace("-", "_"))
        if key == "set":
            values["set"] = list(values["set"]) + list(given)
        elif given is not None:
            values[key] = given
    if not values["methods"]:
        raise UserError("sweep needs methods: --methods lapo,masklam, or methods = [...] in the "
                        "--grid file.")
    return values


def _default_preset(options: SweepOptions) -> str:
    """``gpu`` when runs get GPUs, else ``cpu``: what the runs get, not what the machine that
    starts the sweep has (a login node with or without CUDA names the runs the same)."""
    return "gpu" if options.gpus_per_run > 0 else "cpu"


def expand_grid(values: dict[str, Any], options: SweepOptions) -> list[RunConfig]:
    """Every run of the grid, checked with ``run``'s errors before anything starts."""
    from masklam_bench.presets import PRESETS, split_overrides
    from masklam_bench.runner import RunConfig

    preset = values["preset"] or _default_preset(options)
    if preset not in PRESETS:
        raise UserError(f"--preset {preset!r} is not a preset; choose one of: "
                        f"{', '.join(PRESETS)}.")
    # --set at the preset's own value is the preset's run (its name and result file), not a variant
    overrides, _ = split_overrides(PRESETS[preset], parse_overrides(values["set"], None))
    methods = [m.strip() for m in values["methods"].split(",")]
    sources = [s.strip() for s in values["mask-sources"].split(",")]
    runs: dict[str, RunConfig] = {}
    for method in methods:
        for source in _sources_for(method, sources, values["envs"]):
            ns = argparse.Namespace(method=method, mask_source=source, dims=values["dims"],
                                    seeds=values["seeds"], envs=values["envs"], preset=preset,
                                    overrides=overrides)
            jobs = run_jobs(ns)
            for task, dim, seed in jobs:
                config = RunConfig(
                    method=method, task=task, latent_dim=dim, seed=seed, preset=preset,
                    device=options.device, data_root=options.data_root,
                    runs_root=options.runs_root, results_dir=options.out,
                    threads=options.cpus_per_run, compile=options.compile, mask_source=source,
                    bf16=options.uses_bf16, overrides=overrides,
                    tensorboard=options.tensorboard)
                runs.setdefault(config.run_name, config)
    check_experts(c.task for c in runs.values())
    return list(runs.values())


def _sources_for(method: str, sources: list[str], envs: str) -> list[str]:
    """The mask sources ``method`` runs with: all of them if it reads masks, else exact only.

    A method without masks given only other sources gets ``run``'s error for that pair.
    """
    from masklam_bench.mask_sources import parse_mask_source

    cls = method_class(method)
    labels = [parse_mask_source(s).label for s in sources]
    if getattr(cls, "uses_masks", False):
        return sources
    kept = [s for s, label in zip(sources, labels) if label == "exact"]
    if not kept:
        check_run_options(cls, sources[0], envs)  # raises run's sentence
    elif len(kept) < len(sources):
        print(f"note: {method} trains without agent masks: it runs with exact masks only.")
    return kept[:1]


def check_options(options: SweepOptions) -> None:
    """Refuse launcher options that cannot work, in one sentence."""
    if options.on_cluster:
        paths = {"--data-root": options.data_root, "--runs-root": options.runs_root,
                 "--out": options.out}
        if options.launcher == "slurm":
            paths["--slurm-logs"] = options.log_dir
        for flag, path in paths.items():
            if not Path(path).is_absolute():
                raise UserError(
                    f"{flag} {path} must be an absolute path on storage every node sees when "
                    "--ray-address or --launcher slurm is used, e.g. /shared/data.")
    if options.launcher != "ray" and options.gpus_per_run != int(options.gpus_per_run):
        raise UserError(f"--gpus-per-run {options.gpus_per_run}: submitit asks Slurm for whole "
                        "GPUs; give an integer, or use the Ray launcher for a share of one.")
    if options.launcher != "ray" and (options.ray_address or options.ray_cpus):
        raise UserError("--ray-address and --ray-cpus are for --launcher ray.")
    if options.launcher != "slurm" and (options.mem_gb or options.slurm_params):
        raise UserError("--mem-gb and --slurm-param are for --launcher slurm.")
    if options.ray_address and options.ray_cpus:
        raise UserError("--ray-cpus sizes a local Ray instance; the cluster at --ray-address has "
                        "the CPUs it was started with. Drop one of them.")
    if options.gpus_per_run > 0 and not options.on_cluster:
        check_device("cuda")
    if options.launcher == "slurm" and not options.dry_run and shutil.which("srun") is None:
        raise UserError("--launcher slurm needs Slurm's srun and sbatch, and this machine has no "
                        "srun on its PATH: run the sweep on the cluster's login node, or use "
                        "--launcher local-submitit or the default Ray launcher here.")
    if options.launcher == "ray" and not options.ray_address:
        have = options.ray_cpus or os.cpu_count() or 1
        if options.cpus_per_run > have:
            raise UserError(f"each run asks for {options.cpus_per_run} CPU(s) but the local Ray "
                            f"instance would have {have}; ask for fewer with --cpus-per-run.")
    if not options.on_cluster:  # a cluster's shared storage need not be mounted here
        for flag, path in (("--data-root", options.data_root), ("--runs-root", options.runs_root),
                           ("--out", options.out)):
            check_output_folder(path, flag)


def result_path(config: RunConfig) -> Path:
    """The run's result file; when it exists the run is finished."""
    return Path(config.results_dir) / f"{config.run_name}.json"


def stale_reason(config: RunConfig) -> str:
    """Why a finished run's result file was not made by this code and preset ("" when it was):
    its method's source hash or its resolved preset differ. Such a run is not run again (its run
    folder would refuse a resume); the table names it with what to do."""
    from masklam_bench.baselines import get_method
    from masklam_bench.presets import preset_record
    from masklam_bench.provenance import method_sha256
    from masklam_bench.runner import resolve

    try:
        record = json.loads(result_path(config).read_text())
        made_with = (record["code"]["method_sha256"], record["config"]["preset"])
    except (OSError, ValueError, KeyError, TypeError):
        return "its result file is unreadable or incomplete"
    _, preset = resolve(config)
    differ = [name for name, old, now in (
        ("method source", made_with[0], method_sha256(get_method(config.method))),
        ("preset", made_with[1], preset_record(preset))) if old != now]
    return f"made with another {' and '.join(differ)}" if differ else ""


def datasets_of(configs: Iterable[RunConfig]) -> dict[str, list[RunConfig]]:
    """The runs grouped by the dataset they train on (each is collected once)."""
    from masklam_bench.runner import dataset_path

    groups: dict[str, list[RunConfig]] = {}
    for config in configs:
        groups.setdefault(str(dataset_path(config)), []).append(config)
    return groups


def dry_run_text(runs: list[RunConfig], options: SweepOptions) -> str:
    """The grid, what is already finished, and what each job asks for."""
    pending = [c for c in runs if not result_path(c).exists()]
    where = {"ray": f"Ray at {options.ray_address}" if options.ray_address else
             f"a local Ray instance ({options.ray_cpus or os.cpu_count()} CPUs)",
             "slurm": f"Slurm partition {options.slurm_partition or '(default)'}, "
                      f"{options.timeout_min} min"
                      f"{f', {options.mem_gb} GB' if options.mem_gb else ''} per job"
                      + "".join(f", --{k}={v}" for k, v in options.slurm_params.items()),
             "local-submitit": "submitit's local executor"}[options.launcher]
    # Why each finished run is stale ("" if it is not; None for a run still to do): read once.
    why = {c.run_name: stale_reason(c) if result_path(c).exists() else None for c in runs}
    stale = sum(1 for reason in why.values() if reason)
    lines = [(f"{len(runs)} run(s) at preset {runs[0].preset}, "
              f"{len(runs) - len(pending) - stale} finished (skipped), "
              + (f"{stale} stale (not run again), " if stale else "")
              + f"{len(pending)} to run on {where}; results -> {options.out}/"),
             (f"each run asks for {options.cpus_per_run} CPU(s) (torch threads, "
              f"OMP_NUM_THREADS) and {options.gpus_per_run:g} GPU(s), device {options.device}")]
    for c in runs:
        reason = why[c.run_name]
        lines.append(f"  run  {c.run_name}" if reason is None else f"  skip {c.run_name}"
                     if not reason else f"  stale {c.run_name} ({reason}: not run again)")
    groups = datasets_of(pending)
    if groups:
        lines.append(f"{len(groups)} dataset job(s) first, {options.cpus_per_run} CPU(s) each:")
        lines += [f"  {path} (for {len(group)} run(s))" for path, group in groups.items()]
    if options.launcher == "slurm" and shutil.which("srun") is None:
        lines.append("note: no srun on this machine's PATH: launch it where Slurm is.")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# What every worker runs
# ------------------------------------------------------------------------------------------------
def _worker_setup(cpus: int) -> None:
    """This worker's OpenMP thread count (set before torch starts) and headless rendering.
    Torch's own thread count is the run's ``threads``, which :func:`runner.run` sets."""
    os.environ["OMP_NUM_THREADS"] = str(cpus)
    os.environ.setdefault("MUJOCO_GL", "egl")


def collect_task(config: dict[str, Any], cpus: int) -> str:
    """Collect (or resume, or verify) the dataset of a run; returns its folder."""
    _worker_setup(cpus)
    from masklam_bench.runner import RunConfig, ensure_dataset, resolve

    resolved, preset = resolve(RunConfig(**config))
    return str(ensure_dataset(resolved, preset, progress=False))


def run_task(config: dict[str, Any], cpus: int, dataset: str | None = None) -> dict[str, Any]:
    """Run (or resume) one benchmark run after its ``dataset`` job; returns its name and time."""
    _worker_setup(cpus)
    from masklam_bench.runner import RunConfig, run

    result = run(RunConfig(**config), progress=False)
    return {"run_name": result["run_name"], "total_s": result["timings"]["total_s"]}


def one_line(err: BaseException) -> str:
    """An exception (Ray's wrapper unwrapped) as ``Type: first line``."""
    cause = getattr(err, "cause", None) or err
    text = [line for line in str(cause).strip().splitlines() if line.strip()]
    return f"{type(cause).__name__}: {text[0] if text else ''}".strip()


_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(: |$)")
"""A traceback's line naming the exception: ``RuntimeError: message``."""


def _last_error_line(text: str) -> str:
    """The last line of a traceback in ``text`` that names an exception (``XError: ...``), else
    the last ``word: text`` line, else the whole text on one line (up to 300 characters: e.g.
    submitit's "Job ... has not produced any output (state: CANCELLED)")."""
    lines = [line for line in text.splitlines() if _EXCEPTION_LINE.match(line)]
    errors = [line for line in lines if re.match(r"^[\w.]*(Error|Exception|Interrupt)\b", line)]
    found = errors or lines
    return found[-1] if found else " ".join(text.split())[:300]


# ------------------------------------------------------------------------------------------------
# Launchers
# ------------------------------------------------------------------------------------------------
LOCAL_WORKER_NICENESS = 0
"""Niceness of the local Ray instance's workers (Ray's default 15); ``RAY_worker_niceness`` wins."""


def _start_ray(options: SweepOptions) -> bool:
    """Join the cluster, or start a local instance sized to the machine; True if we started it."""
    import logging

    import ray

    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": False}
    if options.ray_address:
        with interrupts.kept():
            ray.init(address=options.ray_address, **kwargs)
    else:
        # Ray starts its workers at niceness 15, so that its own services stay responsive.
        # Beside anything else on the machine a run then gets only the CPU left over (with two
        # other runs on both cores, a smoke run's evaluation alone took 56-140 s; the whole run
        # takes 10 s). The local instance's runs are the work the user asked for: give them the
        # priority `run` has.
        os.environ.setdefault("RAY_worker_niceness", str(LOCAL_WORKER_NICENESS))
        # address="local": a new instance even where $RAY_ADDRESS or a `ray start` instance
        # exists (Ray would join that cluster instead, where `local` checks do not hold).
        with interrupts.kept():
            ray.init(address="local", num_cpus=options.ray_cpus, include_dashboard=False,
                     **kwargs)
    have = ray.cluster_resources()
    for kind, ask in (("CPU", options.cpus_per_run), ("GPU", options.gpus_per_run)):
        if ask > have.get(kind, 0) and not options.ray_address:
            ray.shutdown()
            raise UserError(f"each run asks for {ask:g} {kind}(s) but the local Ray instance has "
                            f"{have.get(kind, 0):g}; ask for fewer with --{kind.lower()}s-per-run.")
    return True


def launch_ray(pending: list[RunConfig], options: SweepOptions) -> list[Outcome]:
    """Run ``pending`` as Ray tasks, each after its dataset's task; one failure stops no other."""
    import ray
    from tqdm.auto import tqdm

    started = _start_ray(options)
    try:
        cpus = options.cpus_per_run
        env = {"env_vars": {"OMP_NUM_THREADS": str(cpus),
                            "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}}
        collect = ray.remote(collect_task).options(num_cpus=cpus, runtime_env=env)
        run = ray.remote(run_task).options(num_cpus=cpus, num_gpus=options.gpus_per_run,
                                           runtime_env=env)
        refs = {}
        for configs in datasets_of(pending).values():
            dataset = collect.remote(dataclasses.asdict(configs[0]), cpus)
            for config in configs:
                refs[run.remote(dataclasses.asdict(config), cpus, dataset)] = config.run_name
        outcomes, waiting = [], list(refs)
        with tqdm(total=len(refs), desc="sweep", unit="run") as bar:
            while waiting:
                ready, waiting = ray.wait(waiting, num_returns=1)
                try:
                    ray.get(ready[0])
                    outcomes.append(Outcome(refs[ready[0]], "done"))
                except Exception as err:  # noqa: BLE001 - any failure of a run is reported
                    outcomes.append(Outcome(refs[ready[0]], "failed", one_line(err)))
                bar.update(1)
        return outcomes
    finally:
        if started:
            ray.shutdown()


def _import_submitit() -> Any:
    """submitit, imported without its logging set-up, which closes every log handler already
    open (pytest's, Ray's) through ``logging.config.dictConfig``."""
    saved = os.environ.get(_SUBMITIT_LOG_VAR)
    os.environ[_SUBMITIT_LOG_VAR] = "NOCONFIG"
    try:
        import submitit
    finally:
        if saved is None:
            del os.environ[_SUBMITIT_LOG_VAR]
        else:
            os.environ[_SUBMITIT_LOG_VAR] = saved
    return submitit


def _executor(options: SweepOptions) -> Any:
    """A submitit executor for Slurm or for local processes, with the sweep's resources."""
    submitit = _import_submitit()
    cluster = "slurm" if options.launcher == "slurm" else "local"
    executor = submitit.AutoExecutor(folder=options.log_dir, cluster=cluster)
    cpus = options.cpus_per_run
    params: dict[str, Any] = {"timeout_min": options.timeout_min, "cpus_per_task": cpus,
                              "gpus_per_node": int(options.gpus_per_run), "nodes": 1,
                              "tasks_per_node": 1}
    if cluster == "slurm":
        params["slurm_setup"] = [f"export OMP_NUM_THREADS={cpus}",
                                 f"export MUJOCO_GL={os.environ.get('MUJOCO_GL', 'egl')}"]
        if options.slurm_partition:
            params["slurm_partition"] = options.slurm_partition
        if options.mem_gb:
            params["mem_gb"] = options.mem_gb
    executor.update_parameters(**params)
    return executor


def _slurm_extra(options: SweepOptions, **more: str) -> dict[str, str]:
    """``--slurm-param`` options and ``more`` (a job's dependency), for ``sbatch``."""
    return {**options.slurm_params, **more}


def launch_submitit(pending: list[RunConfig], options: SweepOptions) -> list[Outcome]:
    """One job per dataset, then one job per run; on Slurm the runs wait with ``afterok``."""
    executor = _executor(options)
    slurm = options.launcher == "slurm"
    cpus, outcomes, jobs = options.cpus_per_run, [], {}
    for path, configs in datasets_of(pending).items():
        # Collection renders on the CPU: its job asks for no GPU.
        executor.update_parameters(name=f"masklam-data-{Path(path).name}", gpus_per_node=0)
        if slurm:
            executor.update_parameters(slurm_additional_parameters=_slurm_extra(options))
        try:
            data_job = executor.submit(collect_task, dataclasses.asdict(configs[0]), cpus)
        except Exception as err:  # noqa: BLE001 - a refused submission fails its runs only
            outcomes += [Outcome(c.run_name, "failed", f"dataset job not submitted: "
                                 f"{one_line(err)}") for c in configs]
            continue
        executor.update_parameters(gpus_per_node=int(options.gpus_per_run))
        if slurm:  # the runs wait in Slurm's queue; a failed dataset job cancels them
            executor.update_parameters(slurm_additional_parameters=_slurm_extra(
                options, dependency=f"afterok:{data_job.job_id}", **{"kill-on-invalid-dep": "yes"}))
        else:  # the local executor has no dependencies: wait for the dataset here
            error = _job_error(data_job)
            if error:
                outcomes += [Outcome(c.run_name, "failed", f"dataset: {error}") for c in configs]
                continue
        for config in configs:
            executor.update_parameters(name=f"masklam-{config.run_name}")
            try:
                jobs[config.run_name] = executor.submit(run_task, dataclasses.asdict(config), cpus)
            except Exception as err:  # noqa: BLE001 - e.g. Slurm's per-user job limit
                outcomes.append(Outcome(config.run_name, "failed",
                                        f"job not submitted: {one_line(err)}"))
    print(f"{len(jobs)} job(s) submitted; logs in {options.log_dir}/")
    return outcomes + _wait_jobs(jobs)


def _job_error(job: Any) -> str:
    """Wait for a submitit job; its failure in one line, or "" when it succeeded."""
    try:
        job.result()
    except Exception as err:  # noqa: BLE001 - any failure of a job is reported
        return _last_error_line(str(err))
    return ""


def _wait_jobs(jobs: dict[str, Any]) -> list[Outcome]:
    """Wait for every submitit job, with a progress bar; their outcomes in order of ending."""
    from tqdm.auto import tqdm

    outcomes, waiting = [], dict(jobs)
    with tqdm(total=len(jobs), desc="sweep", unit="run") as bar:
        while waiting:
            for name in [n for n, job in waiting.items() if job.done()]:
                error = _job_error(waiting.pop(name))
                outcomes.append(Outcome(name, "failed" if error else "done", error))
                bar.update(1)
            if waiting:
                time.sleep(SUBMITIT_POLL_S)
    return outcomes


# ------------------------------------------------------------------------------------------------
# The command
# ------------------------------------------------------------------------------------------------
def sweep(runs: list[RunConfig], options: SweepOptions) -> list[Outcome]:
    """Run every unfinished run of the grid on the chosen launcher; outcomes in grid order."""
    finished = {c.run_name: stale_reason(c) for c in runs if result_path(c).exists()}
    skipped = [Outcome(name, "stale" if why else "skipped", why)
               for name, why in finished.items()]
    pending = [c for c in runs if c.run_name not in finished]
    outcomes: list[Outcome] = []
    if pending:
        launch = launch_ray if options.launcher == "ray" else launch_submitit
        outcomes = launch(pending, options)
    by_name = {o.name: o for o in skipped + outcomes}
    return [by_name[c.run_name] for c in runs]


def summary_table(outcomes: list[Outcome]) -> str:
    """Counts of done, skipped, stale and failed runs, then each failure and stale result."""
    lines = ["| status | runs |", "|---|---:|"]
    lines += [f"| {s} | {sum(o.status == s for o in outcomes)} |" for s in STATUSES]
    lines += [f"failed: {o.name}: {o.error}" for o in outcomes if o.status == "failed"]
    lines += [f"stale: {o.name}: {o.error}; not run again: move its result file and run folder "
              "away to redo it" for o in outcomes if o.status == "stale"]
    return "\n".join(lines)


def options_from_args(args: argparse.Namespace) -> SweepOptions:
    """The sweep's options from its flags; local paths made absolute for the workers."""
    local = args.ray_address is None and args.launcher != "slurm"
    absolute = (lambda p: str(Path(p).resolve())) if local else str
    return SweepOptions(
        launcher=args.launcher, ray_address=args.ray_address, ray_cpus=args.ray_cpus,
        cpus_per_run=args.cpus_per_run, gpus_per_run=args.gpus_per_run,
        data_root=absolute(args.data_root), runs_root=absolute(args.runs_root),
        out=absolute(args.out), bf16=args.bf16, tensorboard=not args.no_tensorboard,
        compile=args.compile,
        slurm_partition=args.slurm_partition, timeout_min=args.timeout_min,
        mem_gb=args.mem_gb, slurm_params=_parse_slurm_params(args.slurm_param),
        logs=args.slurm_logs and absolute(args.slurm_logs), dry_run=args.dry_run,
        leaderboard=not args.no_leaderboard)


def _parse_slurm_params(given: list[str] | None) -> dict[str, str]:
    """``--slurm-param KEY=VALUE`` flags as ``{KEY: VALUE}``; a malformed one is refused."""
    params: dict[str, str] = {}
    for item in given or []:
        key, sep, value = item.partition("=")
        key = key.strip().lstrip("-").replace("_", "-")  # submitit writes _ as -
        if not sep or not key or not value.strip():
            raise UserError(f"--slurm-param {item!r}: give an sbatch option as KEY=VALUE, e.g. "
                            "--slurm-param account=myproject or --slurm-param qos=normal.")
        if key in _SLURM_OWN:
            raise UserError(f"--slurm-param {key}: the sweep sets it itself ({_SLURM_OWN[key]}).")
        params[key] = value.strip()
    return params


_SLURM_OWN = {"dependency": "each run waits for its dataset's job",
              "kill-on-invalid-dep": "each run waits for its dataset's job",
              "partition": "--slurm-partition", "time": "--timeout-min", "mem": "--mem-gb",
              "mem-per-cpu": "--mem-gb", "mem-per-gpu": "--mem-gb",
              "cpus-per-task": "--cpus-per-run", "gpus-per-node": "--gpus-per-run",
              "gpus": "--gpus-per-run", "gres": "--gpus-per-run", "nodes": "one node per run",
              "ntasks": "one task per run", "ntasks-per-node": "one task per run",
              "output": "--slurm-logs", "error": "--slurm-logs", "job-name": "the run's name"}
"""sbatch options ``--slurm-param`` may not set, and the flag or rule that does."""


def _expand_naming_the_file(args: argparse.Namespace, options: SweepOptions) -> list[RunConfig]:
    """:func:`expand_grid`, whose errors name the grid file's key when a value from the file is
    at fault (they are ``run``'s sentences, which name its flags: ``--dims``, ``--set``)."""
    values = grid_values(args)
    try:
        return expand_grid(values, options)
    except UserError as err:
        if args.grid:
            from_file = [key for key in read_grid_file(args.grid)
                         if key == "set" or getattr(args, key.replace("-", "_")) is None]
            blamed = [key for key in from_file if f"--{key}" in str(err)]
            if blamed:
                raise UserError(f"--grid {args.grid}, key {blamed[0]!r}: {err}") from None
        raise


def _cmd_sweep(args: argparse.Namespace) -> None:
    """Check the whole grid, run what is unfinished, print the outcome table."""
    options = options_from_args(args)
    check_options(options)
    runs = _expand_naming_the_file(args, options)
    if runs and runs[0].preset == "gpu" and options.device == "cpu":
        print("note: preset gpu with no GPU per run: every run trains the gpu preset's IMPALA "
              "networks (30,000 LAM steps, 440 episodes) on the CPU, which it was not sized for; "
              "pass --gpus-per-run 1, or --preset cpu for the CPU-sized benchmark.")
    if options.cluster_cpus_unknown:
        note = ("note: the runs train in bf16, the presets' precision, on the cluster's CPUs; "
                "where those lack bf16 instructions (AVX-512 or AMX) bf16 is 9-77x slower than "
                "float32: pass --no-bf16 for such nodes.")
    else:
        note = float32_note(options.bf16, options.device)
    if runs and note:
        print(note)
    if options.dry_run:
        print(dry_run_text(runs, options))
        return
    outcomes = sweep(runs, options)
    print(summary_table(outcomes))
    if options.leaderboard and any(o.status != "failed" for o in outcomes):
        _write_leaderboard(options.out)
    failed = [o.name for o in outcomes if o.status == "failed"]
    if failed:
        raise UserError(f"{len(failed)} of {len(outcomes)} run(s) failed ({', '.join(failed)}); "
                        "run the same sweep again once fixed: finished runs are skipped.")


def _write_leaderboard(out: str) -> None:
    """Regenerate ``<out>/leaderboard`` from the result files in ``out``."""
    from masklam_bench.leaderboard import write_leaderboard

    target = Path(out) / "leaderboard"
    try:
        write_leaderboard(out, target)
    except BenchError as err:
        print(f"note: leaderboard not written ({err})")
        return
    print(f"leaderboard of {out}/ -> {target}/README.md")


def _float_at_least_zero(text: str) -> float:
    """An argparse ``type`` for numbers >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {text}")
    return value


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``sweep`` sub-command to the ``masklam-bench`` parser."""
    p = subparsers.add_parser(
        "sweep", help="run a grid of runs on local Ray, a Ray cluster or Slurm; resumable")
    p.add_argument("--grid", default=None, metavar="FILE",
                   help="TOML file with the grid's keys (flags given too win over it)")
    p.add_argument("--methods", default=None, help="methods, comma-separated (or module:Class)")
    p.add_argument("--envs", default=None, help="tasks, comma-separated (default: cheetah)")
    p.add_argument("--dims", default=None, help="latent dims, comma-separated (default: 64)")
    p.add_argument("--seeds", default=None, help="training seeds, comma-separated (default: 0)")
    p.add_argument("--mask-sources", default=None,
                   help="mask sources, comma-separated (default: exact); methods without masks "
                        "run with exact only")
    p.add_argument("--preset", default=None, help="smoke, cpu or gpu (default: gpu when runs get "
                                                  "GPUs (--gpus-per-run), else cpu)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a preset field for every run (repeatable)")
    p.add_argument("--launcher", default="ray", choices=LAUNCHERS)
    p.add_argument("--ray-address", default=None,
                   help="join this Ray cluster (e.g. auto) instead of starting a local one")
    p.add_argument("--ray-cpus", type=int_at_least(1), default=None,
                   help="CPUs of the local Ray instance (default: every core)")
    p.add_argument("--cpus-per-run", type=int_at_least(1), default=1,
                   help="CPUs per run: torch threads and OMP_NUM_THREADS too (default: 1)")
    p.add_argument("--gpus-per-run", type=_float_at_least_zero, default=0.0,
                   help="GPUs per run (default: 0, runs on the CPU)")
    p.add_argument("--data-root", default="data", help="dataset folder (shared on a cluster)")
    p.add_argument("--runs-root", default="runs", help="checkpoint folder (shared on a cluster)")
    p.add_argument("--out", default="results", help="result folder (shared on a cluster)")
    add_bf16_flag(p)
    p.add_argument("--no-tensorboard", action="store_true",
                   help="write no TensorBoard curves in the runs' folders")
    p.add_argument("--compile", action="store_true", help="torch.compile the networks (CUDA)")
    p.add_argument("--slurm-partition", default=None, help="Slurm partition of every job")
    p.add_argument("--timeout-min", type=int_at_least(1), default=DEFAULT_TIMEOUT_MIN,
                   help=f"time limit of one submitit job (default: {DEFAULT_TIMEOUT_MIN})")
    p.add_argument("--mem-gb", type=int_at_least(1), default=None,
                   help="memory of every Slurm job in GB (default: the cluster's per-CPU default, "
                        "often too little for the gpu preset)")
    p.add_argument("--slurm-param", action="append", default=None, metavar="KEY=VALUE",
                   help="a further sbatch option of every job, e.g. account=myproject, "
                        "qos=normal (repeatable)")
    p.add_argument("--slurm-logs", default=None, metavar="DIR",
                   help="submitit's job files and logs (default: RUNS_ROOT/submitit)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the grid and the resources it asks for; start nothing")
    p.add_argument("--no-leaderboard", action="store_true",
                   help="do not regenerate OUT/leaderboard at the end")
    p.set_defaults(func=_cmd_sweep, output_folders=("slurm_logs",))
