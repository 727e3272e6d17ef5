"""Gather what a lent GPU machine lacks for ``masklam-bench gpu-check``, ready to carry there.

    python scripts/device_wheels.py [--python 3.12] [--out .whl] [--gl .gl]

The GPU machines this project may be lent (one H100/H200, no network) run Python 3.12 with
PyTorch, NumPy, SciPy, h5py, tqdm and most of the scientific stack, but not the physics stack
(the device tool's KINDS.md lists their packages). This script, run on a machine that reaches
PyPI and Debian, writes into ``--out``:

- the wheels of the packages in ``WHEELS`` for ``--python`` on manylinux x86-64 (the suite's own
  pins where pyproject.toml has them, else the versions measured to work with them);
- dm_control's wheel with the data files of the parts the suite never loads left out
  (``SLIM_PREFIXES``: soccer and CMU-humanoid meshes, the dog's assets, test assets), which takes
  it from 56 MB to 3.4 MB, since everything the device tool carries must fit in 64 MiB;
- a wheel of this project (built here, so nothing is built there), and the commit it was built
  from in ``BUILT_FROM`` (gpu-check's JSON records it under ``code``);

and into ``--gl`` the Debian packages of the EGL loader (libglvnd), for a machine whose image lacks
them. ``scripts/gpu_check_device.sh`` installs all of it there and runs the check. The total size
is checked against the carry limit before anything is left in place.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WHEELS = {
    # pinned in pyproject.toml (tests/test_device_wheels.py keeps the two equal)
    "mujoco": "3.17.0",
    "dm_control": "1.0.50",
    "PyOpenGL": "3.1.10",
    "gymnasium": "1.4.0",
    "shimmy": "2.0.1",
    "minari": "0.5.4",
    # what those need and the GPU machine's image lacks: the versions setup.sh installs
    "dm-env": "1.6",
    "dm-tree": "0.1.10",
    "glfw": "2.11.0",
    "labmaze": "1.0.6",
    "Farama-Notifications": "0.0.6",
    "websockets": "17.4",
}
"""Every package ``gpu-check`` imports that the GPU machine's image does not hold."""
SLIM_PREFIXES = (
    "dm_control/locomotion/soccer/",
    "dm_control/locomotion/walkers/assets/",
    "dm_control/suite/dog_assets/",
    "dm_control/mujoco/testing/",
    "dm_control/mjcf/test_assets/",
    "dm_control/blender/",
)
"""Folders of dm_control whose data files (not modules: shimmy imports them) are left out."""
GL_PACKAGES = ("libegl1", "libglvnd0", "libopengl0", "libgl1", "libglx0", "libgles2")
"""The EGL/OpenGL loaders, as the device tool's README names them for its machines."""
CARRY_LIMIT = 64 * 2**20
"""What the device tool carries in one call: the working tree and the carried folders."""
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64",
             "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux_2_5_x86_64",
             "manylinux1_x86_64")


def download(python: str, dest: Path) -> None:
    """Every wheel of ``WHEELS`` for CPython ``python`` (e.g. "3.12") on Linux x86-64."""
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                    "--only-binary=:all:", "--python-version", python, "--implementation", "cp",
                    *platforms, "-d", str(dest),
                    *(f"{name}=={version}" for name, version in WHEELS.items())], check=True)


def slim_wheel(path: Path, prefixes: tuple[str, ...] = SLIM_PREFIXES) -> int:
    """Rewrite the wheel at ``path`` without the non-module files under ``prefixes``, with a
    RECORD that lists what is left (with hashes, as pip expects); returns the bytes saved."""
    before = path.stat().st_size

    def dropped(name: str) -> bool:
        return name.startswith(prefixes) and not name.endswith(".py")

    with zipfile.ZipFile(path) as src:
        record = next(n for n in src.namelist() if n.endswith(".dist-info/RECORD"))
        kept = [info for info in src.infolist() if not dropped(info.filename)
                and info.filename != record]
        lines = []
        tmp = path.with_suffix(".slim")
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as dst:
            for info in kept:
                data = src.read(info)
                dst.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED)
                if not info.is_dir():
                    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
                    lines.append(f"{info.filename},sha256={digest.decode()},{len(data)}")
            lines.append(f"{record},,")
            dst.writestr(record, "\n".join(lines) + "\n")
    tmp.replace(path)
    return before - path.stat().st_size


def own_wheel(dest: Path) -> None:
    """This project as a wheel (pure Python; its experts' weights inside), built from a copy of
    the files the device tool sends, so that nothing stale in the checkout's ``build/`` ships
    and the checkout is left as it was."""
    with tempfile.TemporaryDirectory() as tmp:
        for name in tree_files():
            (Path(tmp) / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, Path(tmp) / name)
        subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                        "--no-build-isolation", "-w", str(Path(dest).resolve()), tmp],
                       check=True)


def gl_debs(dest: Path) -> None:
    """The Debian amd64 packages of ``GL_PACKAGES`` (apt's lists kept apart in a temp folder)."""
    with tempfile.TemporaryDirectory() as lists:
        (Path(lists) / "partial").mkdir()
        opts = ["-oAPT::Architecture=amd64", "-oAPT::Architectures=amd64",
                f"-oDir::State::Lists={lists}"]
        subprocess.run(["apt-get", *opts, "-qq", "update"], check=True)
        subprocess.run(["apt-get", *opts, "-qq", "download", *GL_PACKAGES], check=True, cwd=dest)


def built_from() -> str:
    """The checkout's commit, with "+dirty" if the files the wheel is built from (tracked, and
    untracked but not ignored) differ from it."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, check=True, capture_output=True,
                              text=True).stdout.strip()

    dirty = git("status", "--porcelain", "--untracked-files=all")
    return git("rev-parse", "HEAD") + ("+dirty" if dirty else "")


OURS = ("*.whl", "*.deb", "BUILT_FROM")
"""What this script writes into ``--out`` and ``--gl``: the only files it replaces there."""


def _check_replaceable(folder: Path) -> None:
    """Refuse to replace a folder that holds anything this script did not write."""
    if folder.exists():
        foreign = [p.name for p in folder.iterdir() if not any(p.match(g) for g in OURS)]
        if foreign or not folder.is_dir():
            raise SystemExit(f"{folder} holds other files ({', '.join(sorted(foreign)[:3])}"
                             f"{', ...' if len(foreign) > 3 else ''}): pick an empty or new "
                             "folder for the wheels and .deb files.")


def tree_files() -> list[str]:
    """What the device tool sends besides carried folders: tracked and untracked, not ignored
    files (that exist: a deletion not yet committed is not sent)."""
    names = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                           cwd=ROOT, check=True, capture_output=True).stdout.split(b"\0")
    return [n.decode() for n in names if n and (ROOT / n.decode()).is_file()]


def tree_bytes() -> int:
    """Bytes of :func:`tree_files`."""
    return sum((ROOT / name).stat().st_size for name in tree_files())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--python", default="3.12", help="the GPU machine's Python (3.12)")
    parser.add_argument("--out", default=str(ROOT / ".whl"), help="folder for the wheels")
    parser.add_argument("--gl", default=str(ROOT / ".gl"),
                        help="folder for the EGL loader's .deb files ('' to skip them)")
    args = parser.parse_args()
    out, gl = Path(args.out), Path(args.gl) if args.gl else None
    for folder in (out, gl):
        if folder is not None:
            _check_replaceable(folder)
    with tempfile.TemporaryDirectory() as tmp:
        wheels, debs = Path(tmp) / "whl", Path(tmp) / "gl"
        wheels.mkdir()
        download(args.python, wheels)
        (dm_control,) = wheels.glob("dm_control-*.whl")
        saved = slim_wheel(dm_control)
        own_wheel(wheels)
        (wheels / "BUILT_FROM").write_text(built_from() + "\n")
        if gl is not None:
            debs.mkdir()
            gl_debs(debs)
        carried = sum(f.stat().st_size for d in (wheels, debs) if d.exists() for f in d.iterdir())
        total = carried + tree_bytes()
        if total > CARRY_LIMIT:
            raise SystemExit(f"{total / 2**20:.1f} MiB would travel (wheels and debs "
                             f"{carried / 2**20:.1f} MiB): over the device tool's "
                             f"{CARRY_LIMIT / 2**20:.0f} MiB.")
        for src, dst in ((wheels, out), (debs, gl)):
            if dst is not None and src.exists():
                shutil.rmtree(dst, ignore_errors=True)
                shutil.move(str(src), dst)
    print(f"{len(list(out.glob('*.whl')))} wheels in {out} (dm_control slimmed by "
          f"{saved / 2**20:.0f} MiB)" + (f", {len(list(gl.iterdir()))} .deb files in {gl}"
                                          if gl is not None else "")
          + f"; {total / 2**20:.1f} MiB would travel with the working tree, of "
          f"{CARRY_LIMIT / 2**20:.0f}.")


if __name__ == "__main__":
    main()
