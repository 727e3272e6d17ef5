"""SAM 2 masks: tracking plumbing end to end (random weights), lossless storage, resume, clear
errors, and the IoU report. Weights cannot be downloaded offline, so the model is built from its
bundled config with random weights: the masks are meaningless, the plumbing is real."""

from __future__ import annotations

import importlib.util
import shutil

import numpy as np
import pytest
import torch

from masklam_bench import cli, sam_masks
from masklam_bench.dataset import load_frames
from masklam_bench.mask_quality import (
    dataset_quality,
    find_datasets,
    mask_iou,
    step_bins,
    write_report,
)
from masklam_bench.mask_sources import resolve_masks
from masklam_bench.sam_masks import (
    PARTIAL_DIR,
    SIDECAR_FILE,
    SamMaskError,
    add_sam_masks,
    build_predictor,
    fill_small_holes,
    load_sam_masks,
    mask_box,
    sidecar_settings,
    track_episode,
)

EPISODES, STEPS, TEST_EPISODES = 3, 5, 1
IMAGE_SIZE = 64  # the smallest SAM 2 input size: keeps the random-weight model fast on CPU
CHUNK = 4  # shorter than an episode (6 frames), so every episode is tracked in two chunks
FRAMES = EPISODES * (STEPS + 1)


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    """No test may reach the Hugging Face hub."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A tiny collected dataset: 3 episodes of 5 random-policy steps at 64x64."""
    from masklam_bench.collect import collect

    root = tmp_path_factory.mktemp("data")
    return collect("DistractingCheetah-v0", root, episodes=EPISODES, episode_steps=STEPS,
                   workers=1, policy="random", progress=False, test_episodes=TEST_EPISODES)


def _copy(dataset, tmp_path):
    """A private copy of the dataset folder (adding masks writes into it)."""
    return shutil.copytree(dataset, tmp_path / "dataset")


class _Spy:
    """Wraps ``track_episode``: records each episode's masks; optionally fails on call N."""

    def __init__(self, fail_on: int | None = None):
        self.masks: list[np.ndarray] = []
        self.fail_on = fail_on

    def __call__(self, predictor, frames, box, chunk):
        if self.fail_on is not None and len(self.masks) == self.fail_on:
            raise KeyboardInterrupt
        self.masks.append(track_episode(predictor, frames, box, chunk))
        return self.masks[-1]


def _add(path, **kwargs):
    kwargs = {"image_size": IMAGE_SIZE, "chunk": CHUNK, "progress": False, **kwargs}
    return add_sam_masks(path, "random", **kwargs)


@pytest.fixture(scope="module")
def reference(dataset, tmp_path_factory):
    """One uninterrupted random-weight run: (dataset copy, masks SAM 2 returned per episode)."""
    pytest.importorskip("sam2")  # a guard only: CI installs the sam2 extra, so this runs there
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    path = shutil.copytree(dataset, tmp_path_factory.mktemp("ref") / "dataset")
    spy = _Spy()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setattr(sam_masks, "track_episode", spy)
        _add(path)
    yield path, spy.masks
    torch.set_num_threads(threads)


def test_random_weights_give_one_lossless_mask_per_frame(reference, monkeypatch):
    path, tracked = reference
    assert len(tracked) == EPISODES
    masks = load_sam_masks(path, "all")
    assert masks.shape == (FRAMES, 64, 64) and masks.dtype == bool
    assert np.array_equal(masks, np.concatenate(tracked))  # stored bit for bit
    assert sidecar_settings(path)["random_weights"] is True
    # The sidecar says which hole filling made these masks (the CPU one without the extension).
    assert sidecar_settings(path)["hole_filling"] == sam_masks._hole_filling()
    assert not (path / PARTIAL_DIR).exists()
    # Aligned with the loader's splits, and served as the runner's `sam2` mask source.
    for split in ("train", "test"):
        data = load_frames(path, split)
        served = resolve_masks("sam2", data, path, seed=0)
        assert served.shape == data.frames.shape[:3]
        assert np.array_equal(served, load_sam_masks(path, split))
    assert np.array_equal(load_sam_masks(path, "test"), np.concatenate(tracked[-TEST_EPISODES:]))
    # A finished run is not redone.
    spy = _Spy()
    monkeypatch.setattr(sam_masks, "track_episode", spy)
    assert _add(path) == path / SIDECAR_FILE and spy.masks == []


def test_interrupted_run_resumes_with_the_unfinished_episodes_only(reference, tmp_path,
                                                                   monkeypatch):
    ref_path, _ = reference
    path = _copy(ref_path, tmp_path)
    (path / SIDECAR_FILE).unlink()
    monkeypatch.setattr(sam_masks, "track_episode", _Spy(fail_on=1))
    with pytest.raises(KeyboardInterrupt):
        _add(path)
    assert (path / PARTIAL_DIR / "episode_0.npy").exists()
    with pytest.raises(SamMaskError, match="unfinished SAM 2 mask run"):
        load_sam_masks(path, "all")
    spy = _Spy()
    monkeypatch.setattr(sam_masks, "track_episode", spy)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the reference's count, a recorded setting
    try:
        _add(path)
    finally:
        torch.set_num_threads(threads)
    assert len(spy.masks) == EPISODES - 1  # episode 0 was kept
    # Random weights are seeded, so the resumed run equals the uninterrupted one, file and all
    # (its timing is kept beside it, not in it).
    assert np.array_equal(load_sam_masks(path, "all"), load_sam_masks(ref_path, "all"))
    assert (path / SIDECAR_FILE).read_bytes() == (ref_path / SIDECAR_FILE).read_bytes()
    assert sam_masks.sidecar_settings(path)["seconds_per_frame"] > 0


def test_other_settings_need_overwrite(reference, tmp_path, monkeypatch):
    path = _copy(reference[0], tmp_path)
    with pytest.raises(SamMaskError, match=r"other settings \(chunk\).*--overwrite"):
        _add(path, chunk=CHUNK + 1)
    monkeypatch.setattr(sam_masks, "track_episode",
                        lambda predictor, frames, box, chunk: np.ones(frames.shape[:3], bool))
    _add(path, chunk=CHUNK + 1, overwrite=True)
    assert load_sam_masks(path, "all").all()


def test_an_unreadable_mask_file_is_one_clear_error_and_overwrite_replaces_it(reference,
                                                                               tmp_path,
                                                                               monkeypatch):
    path = _copy(reference[0], tmp_path)
    file = sam_masks.sam_masks_file(path)
    file.write_bytes(file.read_bytes()[:5000])  # truncated, as by a full disk
    for read in (sam_masks.sam_masks_file, sam_masks.sidecar_settings,
                 lambda p: load_sam_masks(p, "all")):
        with pytest.raises(SamMaskError, match="cannot be read .*--overwrite"):
            read(path)
    with pytest.raises(SamMaskError, match="cannot be read"):
        _add(path)
    monkeypatch.setattr(sam_masks, "track_episode",
                        lambda predictor, frames, box, chunk: np.ones(frames.shape[:3], bool))
    _add(path, overwrite=True)
    assert load_sam_masks(path, "all").all()


def test_missing_checkpoint_says_what_to_download_and_which_flag():
    pytest.importorskip("sam2")
    for checkpoint in ("checkpoints/sam2.1_hiera_tiny.pt", None):
        with pytest.raises(SamMaskError, match=r"download sam2\.1_hiera_tiny\.pt .*huggingface"
                                               r".*--checkpoint"):
            build_predictor(checkpoint)
    with pytest.raises(SamMaskError, match="Could not fetch facebook/sam2.1-hiera-tiny"):
        build_predictor("facebook/sam2.1-hiera-tiny")  # offline here
    with pytest.raises(SamMaskError, match="Unknown SAM 2 config"):
        build_predictor("random", config="configs/sam9/tiny.yaml")
    with pytest.raises(SamMaskError, match="multiple of 32"):
        build_predictor("random", image_size=100)


@pytest.mark.parametrize("content", [b"<html>Not found</html>", b""])
def test_a_file_that_is_no_checkpoint_says_so_and_how_to_get_one(tmp_path, content):
    """A failed download saved under the checkpoint's name: one sentence, no traceback."""
    pytest.importorskip("sam2")
    bad = tmp_path / "sam2.1_hiera_tiny.pt"
    bad.write_bytes(content)
    with pytest.raises(SamMaskError, match=r"is not a SAM 2 checkpoint .*download sam2\.1_hiera"):
        build_predictor(str(bad))


def test_cli_reports_a_missing_checkpoint_in_one_line(dataset, tmp_path, capsys):
    pytest.importorskip("sam2")
    code = cli.main(["masks", "--dataset", str(dataset), "--source", "sam2",
                     "--checkpoint", str(tmp_path / "sam2.1_hiera_tiny.pt")])
    err = capsys.readouterr().err
    assert code == 2 and "not found: download sam2.1_hiera_tiny.pt" in err
    assert len(err.strip().splitlines()) == 1


def test_sam2_source_without_masks_says_which_command_makes_them(dataset):
    data = load_frames(dataset, "train")
    with pytest.raises(SamMaskError, match="masklam-bench masks --dataset .* --source sam2"):
        resolve_masks("sam2", data, dataset, seed=0)


def test_chunks_overlap_by_one_frame_and_reprompt_from_the_last_mask(monkeypatch):
    """Chunk k starts on chunk k-1's last frame, prompted with the box of its predicted mask."""
    truth = np.zeros((11, 16, 16), bool)
    for t in range(11):
        truth[t, 2 + t // 3:8 + t // 3, 1 + t // 2:6 + t // 2] = True
    frames = np.broadcast_to(np.arange(11, dtype=np.uint8)[:, None, None, None], (11, 16, 16, 3))
    calls = []

    def fake_chunk(predictor, video_module, chunk_frames, box):
        first = int(chunk_frames[0, 0, 0, 0])
        calls.append((first, len(chunk_frames), box))
        return truth[first:first + len(chunk_frames)]

    monkeypatch.setattr(sam_masks, "_track_chunk", fake_chunk)
    monkeypatch.setattr(sam_masks, "_import_sam2", lambda: (None, None))
    predictor = type("P", (), {"image_size": 1024})()
    out = track_episode(predictor, frames, box=(0, 0, 16, 16), chunk=4)
    assert np.array_equal(out, truth)
    assert [(c[0], c[1]) for c in calls] == [(0, 4), (3, 4), (6, 4), (9, 2)]
    assert calls[0][2] == (0, 0, 16, 16)
    assert all(c[2] == mask_box(truth[c[0]]) for c in calls[1:])
    with pytest.raises(SamMaskError, match="chunk must be at least 2"):
        track_episode(predictor, frames, box=(0, 0, 16, 16), chunk=1)


def test_mask_box_and_hole_filling():
    mask = np.zeros((8, 8), bool)
    assert mask_box(mask) is None
    mask[2:5, 3:7] = True
    assert mask_box(mask) == (3.0, 2.0, 7.0, 5.0)
    mask[3, 4] = False  # a one-pixel hole
    filled = fill_small_holes(mask, max_area=1)
    assert filled[3, 4] and filled.sum() == 12  # the hole, not the background, is filled
    assert np.array_equal(fill_small_holes(mask, max_area=0.5), mask)


def test_torchvision_imports_on_this_torch():
    if importlib.util.find_spec("torchvision") is None:  # importorskip would import it unprepared
        pytest.skip("torchvision is not installed")
    sam_masks.ensure_torchvision_importable()
    import torchvision.transforms  # noqa: F401


def test_mask_iou_formula():
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    assert mask_iou(a, b) == 1.0  # two empty masks agree
    a[0, :2] = True
    assert mask_iou(a, b) == 0.0
    b[0, 1:4] = True  # intersection 1 pixel, union 4
    assert mask_iou(a, b) == 0.25
    assert mask_iou(a, a) == 1.0
    batch = mask_iou(np.stack([a, a, b]), np.stack([b, a, b]))
    assert batch.shape == (3,) and np.allclose(batch, [0.25, 1.0, 1.0])
    with pytest.raises(ValueError, match="same shape"):
        mask_iou(a, np.zeros((3, 4), bool))


def test_quality_report_table_and_plot(reference, tmp_path):
    path, tracked = reference
    quality = dataset_quality(path)
    exact = load_frames(path, "all").unpack_masks(np.arange(FRAMES))
    assert np.allclose(quality.iou, mask_iou(np.concatenate(tracked), exact))
    assert (quality.step[:STEPS + 1] == np.arange(STEPS + 1)).all()
    table, files = write_report([path.parent], tmp_path / "report", bins=3)
    assert "| DistractingCheetah-v0 | random (random weights: plumbing only) | 64 | 18 |" in table
    assert f"{quality.mean_iou:.3f}" in table and "| 0-1 |" in table
    assert all(f.stat().st_size > 0 for f in files)
    assert list(step_bins(1000, 10)[:3]) == [0, 100, 200]
    with pytest.raises(SamMaskError, match="No SAM 2 masks"):
        find_datasets([tmp_path / "report"])
    # A dataset named by its data/ folder or HDF5 file, as the other commands accept.
    data_dir = path / "data"
    assert find_datasets([data_dir]) == find_datasets([data_dir / "main_data.hdf5"]) == [path]


def test_cli_masks_and_mask_quality(reference, tmp_path, capsys):
    path, _ = reference
    code = cli.main(["masks", "--dataset", str(path), "--source", "sam2", "--checkpoint", "random",
                     "--image-size", str(IMAGE_SIZE), "--chunk", str(CHUNK)])
    out = capsys.readouterr()
    assert code == 0 and f"wrote {path / SIDECAR_FILE}" in out.out and "plumbing" in out.err
    code = cli.main(["mask-quality", "--dataset", str(path), "--out", str(tmp_path / "q")])
    assert code == 0 and "| DistractingCheetah-v0 |" in capsys.readouterr().out
    assert (tmp_path / "q" / "mask_quality.png").exists()


def test_a_second_process_on_the_same_dataset_is_refused(dataset, tmp_path):
    """Two ``masks`` commands on one dataset would merge and delete each other's episodes: the
    second is refused with one sentence while the first holds the dataset."""
    import fcntl

    from masklam_bench.errors import UserError

    path = _copy(dataset, tmp_path)
    with open(path / sam_masks.LOCK_FILE, "a") as other:  # another process's hold
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(UserError, match="being made by another process"):
            _add(path)
    assert not (path / SIDECAR_FILE).exists() and not (path / PARTIAL_DIR).exists()


def test_a_setting_recorded_only_later_is_not_held_against_an_older_file(tmp_path):
    new = {"chunk": 8, "hole_filling": "fill_small_holes", "cpu_threads": 2}
    assert sam_masks._same_settings({"chunk": 8}, new, tmp_path, "finished", False)
    with pytest.raises(sam_masks.SamMaskError, match=r"other settings \(cpu_threads\)"):
        sam_masks._same_settings({"chunk": 8, "cpu_threads": 1}, new, tmp_path, "finished",
                                 False)
    with pytest.raises(sam_masks.SamMaskError, match=r"other settings \(hole_filling\)"):
        sam_masks._same_settings({"chunk": 8, "hole_filling": "sam2-kernel"}, new, tmp_path,
                                 "finished", False)
