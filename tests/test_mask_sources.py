"""Mask sources: parsing, the exact-mask corruptions (direction, rate, determinism), bad labels."""

from __future__ import annotations

import numpy as np
import pytest

from masklam_bench.dataset import FrameData
from masklam_bench.mask_sources import (
    MaskSource,
    disk,
    parse_mask_source,
    resolve_masks,
)

SIZE = 32


def _frame_data(episodes: int = 3, length: int = 20, first_id: int = 0) -> FrameData:
    """Synthetic split: each frame's exact mask is a rectangle that moves with the step."""
    n = episodes * length
    masks = np.zeros((n, SIZE, SIZE), bool)
    for i in range(n):
        y, x = 4 + i % 7, 3 + i % 11
        masks[i, y:y + 12, x:x + 9] = True
    starts = np.repeat(np.arange(episodes) * length, length)
    return FrameData(
        frames=np.zeros((n, SIZE, SIZE, 3), np.uint8), clean_frames=None,
        masks=np.packbits(masks, axis=-1), actions=np.zeros((n, 2), np.float32),
        states=np.zeros((n, 3), np.float32), rewards=np.zeros(n, np.float32),
        episode_start=starts, episode_end=starts + length - 1,
        transitions=np.flatnonzero(np.arange(n) != starts + length - 1),
        episode_ids=np.arange(first_id, first_id + episodes))


def _resolve(source: str, data: FrameData | None = None, seed: int = 0) -> np.ndarray:
    return resolve_masks(source, data or _frame_data(), "unused-for-exact", seed)


def test_parse_accepts_every_form_and_gives_canonical_labels():
    assert parse_mask_source("exact") == MaskSource("exact")
    assert parse_mask_source("sam2") == MaskSource("sam2")
    assert parse_mask_source("erode-2") == MaskSource("erode", 2.0)
    assert parse_mask_source(" Dilate-3 ").label == "dilate-3"
    assert parse_mask_source("flip-0.05").label == "flip-0.05"
    assert parse_mask_source("drop-1").label == "drop-1"
    assert parse_mask_source("flip-0") == parse_mask_source("drop-0.0") == MaskSource("exact")


@pytest.mark.parametrize("text,why", [
    ("segment", "not a known form"),
    ("erode", "needs a value"),
    ("erode-1.5", "whole radius"),
    ("dilate-0", "whole radius"),
    ("flip-1.5", "probability"),
    ("drop-x", "not a known form"),
    ("exact-1", "takes no value"),
    ("dilate-1e400", "finite value"),
])
def test_parse_rejects_bad_labels_with_the_list_of_forms(text, why):
    with pytest.raises(ValueError, match=why) as err:
        parse_mask_source(text)
    assert "exact, sam2, dilate-R, erode-R, flip-P, drop-P" in str(err.value)


def test_exact_is_the_stored_mask():
    data = _frame_data()
    assert np.array_equal(_resolve("exact", data), data.unpack_masks(np.arange(data.num_frames)))


def test_disk_is_round():
    d = disk(2)
    assert d.shape == (5, 5) and d[2, 0] and d[0, 2] and not d[0, 0] and d.sum() == 13


@pytest.mark.parametrize("radius", [1, 3])
def test_dilate_grows_and_erode_shrinks_the_mask(radius):
    data = _frame_data()
    exact = _resolve("exact", data)
    grown, shrunk = _resolve(f"dilate-{radius}", data), _resolve(f"erode-{radius}", data)
    assert (grown >= exact).all() and (shrunk <= exact).all()
    area = exact.sum(axis=(1, 2))
    assert (grown.sum(axis=(1, 2)) > area).all() and (shrunk.sum(axis=(1, 2)) < area).all()
    # A 12x9 rectangle eroded by a disk of radius r keeps (12 - 2r) x (9 - 2r) pixels.
    assert (shrunk.sum(axis=(1, 2)) == (12 - 2 * radius) * (9 - 2 * radius)).all()
    # Corruptions act on each frame alone: nothing leaks between frames.
    one = data.unpack_masks(np.array([5]))
    from masklam_bench.mask_sources import dilate

    assert np.array_equal(dilate(one, radius)[0], grown[5])


def test_erode_keeps_agent_pixels_on_the_frame_edge():
    masks = np.zeros((1, SIZE, SIZE), bool)
    masks[0, :, :10] = True  # the agent is cut off by the left edge of the frame
    from masklam_bench.mask_sources import erode

    assert erode(masks, 2)[0, :, 0].all()


def test_flip_rate_is_p_and_deterministic():
    data = _frame_data(episodes=4, length=50)
    exact = _resolve("exact", data)
    flipped = _resolve("flip-0.05", data, seed=3)
    rate = (flipped != exact).mean()
    assert abs(rate - 0.05) < 0.004  # 204,800 pixels: 4 standard deviations is about 0.002
    assert np.array_equal(flipped, _resolve("flip-0.05", data, seed=3))
    assert not np.array_equal(flipped, _resolve("flip-0.05", data, seed=4))
    assert np.array_equal(_resolve("flip-0", data), exact)


def test_drop_replaces_whole_frames_by_all_ones():
    data = _frame_data(episodes=5, length=100)
    exact = _resolve("exact", data)
    dropped = _resolve("drop-0.3", data, seed=1)
    changed = (dropped != exact).any(axis=(1, 2))
    assert dropped[changed].all()  # a dropped frame masks nothing out
    assert np.array_equal(dropped[~changed], exact[~changed])
    assert abs(changed.mean() - 0.3) < 0.08  # 500 frames: 4 standard deviations is about 0.08
    assert np.array_equal(dropped, _resolve("drop-0.3", data, seed=1))
    assert _resolve("drop-1", data).all()


def test_noise_of_an_episode_does_not_depend_on_the_split():
    """Episode 7 gets the same corruption whether it is loaded alone or after others."""
    both = _frame_data(episodes=2, length=20, first_id=6)
    alone = _frame_data(episodes=1, length=20, first_id=7)
    # The synthetic masks depend on the frame index, so give episode 7 the same masks in both.
    alone.masks = both.masks[20:].copy()
    assert np.array_equal(_resolve("flip-0.1", both, seed=2)[20:],
                          _resolve("flip-0.1", alone, seed=2))


def test_sam2_without_stored_masks_says_how_to_make_them(tmp_path):
    from masklam_bench.dataset import DatasetError

    with pytest.raises(DatasetError, match="collect"):
        resolve_masks("sam2", _frame_data(), tmp_path / "nothing-here", 0)
