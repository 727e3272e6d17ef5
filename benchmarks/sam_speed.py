"""Seconds per frame of SAM 2.1 tiny's video tracking at two input sizes, on this machine.

    MUJOCO_GL=egl HF_HUB_OFFLINE=1 python benchmarks/sam_speed.py --out sam_speed.json

The weights are random (none can be downloaded here); a real checkpoint has the same
architecture and so the same cost per frame. Each size tracks a freshly collected tiny dataset
(2 episodes of random actions) through ``add_sam_masks``, which records its seconds per frame.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")


def main() -> None:
    import torch

    from masklam_bench.collect import collect
    from masklam_bench.fileio import atomic_write_json
    from masklam_bench.sam_masks import add_sam_masks, sidecar_settings

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="256:20,1024:5",
                        help="SIZE:STEPS pairs, episode steps per size (default 256:20,1024:5)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    parser.add_argument("--out", default=None, help="JSON file for the figures")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    result = {"threads": torch.get_num_threads(), "seconds_per_frame": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for pair in args.sizes.split(","):
            size, steps = (int(v) for v in pair.split(":"))
            data = collect("DistractingCheetah-v0", Path(tmp) / f"d{size}", episodes=2,
                           episode_steps=steps, workers=1, policy="random", progress=False,
                           test_episodes=1)
            add_sam_masks(data, "random", image_size=size, chunk=8, progress=False)
            seconds = sidecar_settings(data)["seconds_per_frame"]
            result["seconds_per_frame"][size] = seconds
            print(f"image size {size}: {seconds:.2f} s per frame", flush=True)
    if args.out:
        atomic_write_json(args.out, result)


if __name__ == "__main__":
    main()
