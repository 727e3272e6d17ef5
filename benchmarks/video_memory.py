"""Peak memory and time of generating one procedural background video at a canvas size.

    python benchmarks/video_memory.py --canvas 2048     # the canvas of a size=1024 env

An env of ``size`` S cuts its frames from videos on a 2S-pixel canvas (``envs/backgrounds.py``);
this makes the first ID video once, in a fresh process, and prints the process's peak resident
memory (``ru_maxrss``, which includes the interpreter and NumPy) and the seconds it took.
"""

from __future__ import annotations

import argparse
import resource
import time

from masklam_bench.envs import backgrounds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--canvas", type=int, default=128, help="canvas side in pixels")
    args = parser.parse_args()
    start = time.perf_counter()
    video = backgrounds.render_video(backgrounds.video_pool("id")[0], args.canvas)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"canvas {args.canvas}: video {video.nbytes / 2**20:,.0f} MiB, "
          f"peak resident {peak:,.0f} MiB, {seconds:.1f} s")


if __name__ == "__main__":
    main()
