"""The two action-decoder protocols compared offline, on finished runs' checkpoints.

    python benchmarks/decoder_protocols.py runs/cheetah-run__masklam__d64__s0__cpu [RUN_DIR ...] \
        [--threads 1] [--out decoder_protocols.json]

Stage 4 fits the action decoder z -> a on the labelled transitions. ``train.decoder_inputs=idm``
(every preset's default, MaskLAM's code) fits it on the IDM's latents of those transitions;
``policy`` (LAOM's code) on the latent policy's predictions for them. At deployment the decoder
only ever sees the policy's predictions. Where returns are noise (every ``cpu`` cell), a rollout
cannot tell the protocols apart, so this script scores the deployed chain offline, on the held-out
test split, against the true actions (NMSE, as the probe: 1 = predicting the mean action):

- ``idm_decode``: the run's decoder on the IDM's latents of test transitions (what the decoder
  learned, given latents of the kind it was fitted on);
- ``policy_idm``: the run's decoder on the latent policy's predictions (the deployed chain under
  the ``idm`` protocol);
- ``policy_policy``: a decoder fitted as stage 4 would fit it under ``policy`` (same seed, data and
  schedule, made in memory, nothing written), on the policy's predictions.

Each run must have finished stage 4 with ``decoder_inputs=idm``; its identity is checked as for a
resume, so the settings and data must be those it was made with. The method's source may differ
(rows of one table were made at several commits whose method files differ only in comments);
``idm_refit_identical`` then says whether this code, refitting stage 4 in memory under ``idm``,
gives the saved decoder bit for bit, i.e. whether it trains decoders as the run's own code did.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from masklam_bench.errors import BenchError
from masklam_bench.fileio import atomic_write_json
from masklam_bench.leaderboard import TABLE_ORDER
from masklam_bench.metrics import format_mean_ci, probe_nmse
from masklam_bench.runner import encode_all, load_run_folder, policy_latents

COLUMNS = ("idm_decode", "policy_idm", "policy_policy")


@torch.no_grad()
def _decode(decoder: torch.nn.Module, z: np.ndarray) -> np.ndarray:
    decoder.eval()
    device = next(decoder.parameters()).device
    return decoder(torch.from_numpy(z).to(device)).float().cpu().numpy()


def score(run_dir: Path) -> dict[str, object]:
    """The three NMSEs of one finished run (see the module docstring)."""
    trained = load_run_folder(run_dir, check_code=False)
    run = trained.run
    config = run.config
    if run.preset.train.decoder_inputs != "idm":
        raise SystemExit(f"{run_dir}: its decoder was fitted on the policy's predictions; "
                         "this script compares against the idm protocol")
    index = run.test.transitions
    actions = run.test.actions[index]
    z_idm = encode_all(run.method, run.test_s, index)
    z_pol = policy_latents(trained.policy, run.test_s, index)
    other = trained.other_decoder("policy")
    saved, refit = trained.decoder.state_dict(), trained.other_decoder("idm").state_dict()
    return {"run": run_dir.name, "task": run.config.task,
            "method": run.cls.name or config.method, "seed": config.seed,
            "latent_dim": config.latent_dim, "test_transitions": len(index),
            "idm_refit_identical": all(torch.equal(saved[k], refit[k]) for k in saved),
            "idm_decode": probe_nmse(_decode(trained.decoder, z_idm), actions),
            "policy_idm": probe_nmse(_decode(trained.decoder, z_pol), actions),
            "policy_policy": probe_nmse(_decode(other, z_pol), actions)}


def table(rows: list[dict[str, object]]) -> str:
    """Markdown: one line per (task, method, dim), mean +- 95% t half-width over seeds."""
    groups: dict[tuple[str, str, int], list[dict[str, object]]] = defaultdict(list)
    for row in rows:
        groups[(str(row["task"]), str(row["method"]), int(row["latent_dim"]))].append(row)

    def order(key: tuple[str, str, int]) -> tuple:
        task, method, dim = key
        rank = TABLE_ORDER.index(method) if method in TABLE_ORDER else len(TABLE_ORDER)
        return (task, rank, method, dim)

    head = ("| task | method | dim | seeds | decoder on IDM latents | policy -> idm-fitted decoder | "
            "policy -> policy-fitted decoder |")
    lines = [head, "|---|---|---:|---:|---|---|---|"]
    for key in sorted(groups, key=order):
        runs = groups[key]
        cells = [format_mean_ci([float(r[c]) for r in runs]) for c in COLUMNS]
        lines.append(f"| {key[0]} | {key[1]} | {key[2] or '–'} | {len(runs)} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dirs", nargs="+", type=Path, help="finished run folders")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: all)")
    parser.add_argument("--out", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for run_dir in args.run_dirs:
        try:
            rows.append(score(run_dir))
        except BenchError as exc:
            print(f"{run_dir}: {exc}", file=sys.stderr)
            return 2
        print(json.dumps(rows[-1]), flush=True)
    print(table(rows))
    if args.out:
        atomic_write_json(args.out, {"rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
