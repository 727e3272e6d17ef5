"""Latent action methods: the masked loss, the registry, training, checkpoints and determinism."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from masklam_bench.baselines import (
    LamConfig,
    LatentActionMethod,
    available_methods,
    get_method,
)
from masklam_bench.baselines.bench import random_batch, train_throughput
from masklam_bench.baselines.lapo import LAPO, cosine_lr_multiplier
from masklam_bench.baselines.masklam import MaskLAM, masked_mse
from masklam_bench.baselines.masklam_full import MaskLAMFull
from masklam_bench.baselines.networks import make_image_encoder, to_unit_range
from masklam_bench.baselines.policy import ActionDecoder, LatentPolicy

IMAGE = 32
ACTION_DIM = 3
BATCH = 4
TINY = LamConfig(latent_dim=8, light_channels=8, total_steps=20)
"""A config small enough for a CPU test to train in milliseconds."""


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny networks run fastest on one thread; restore the count afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _config(cls: type[LatentActionMethod], **changes: Any) -> LamConfig:
    """TINY with the method's overrides and ``changes`` applied."""
    return dataclasses.replace(TINY, **{**cls.config_overrides(), **changes})


def _build(name: str, seed: int = 0, **changes: Any) -> LatentActionMethod:
    """A seeded method built on TINY."""
    cls = get_method(name)
    torch.manual_seed(seed)
    return cls(_config(cls, **changes), IMAGE, ACTION_DIM)


def _batch(method: LatentActionMethod, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random batch matching the method's config."""
    config = method.config if hasattr(method, "config") else TINY
    return random_batch(config, IMAGE, ACTION_DIM, BATCH, torch.Generator().manual_seed(seed))


def _parameters(method: LAPO) -> torch.Tensor:
    """All network parameters as one flat vector."""
    return torch.cat([p.detach().flatten() for p in method.nets.parameters()])


# The masked loss.

def _pred_target_mask(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random prediction, target in [-0.5, 0.5] and a box mask."""
    g = torch.Generator().manual_seed(seed)
    pred = torch.rand((2, 3, 8, 8), generator=g) - 0.5
    target = torch.rand((2, 3, 8, 8), generator=g) - 0.5
    mask = torch.zeros((2, 8, 8), dtype=torch.bool)
    mask[:, 2:5, 3:7] = True
    return pred, target, mask


def test_masked_mse_with_full_mask_is_mse():
    pred, target, _ = _pred_target_mask()
    full = torch.ones((2, 8, 8), dtype=torch.bool)
    assert torch.allclose(masked_mse(pred, target, full), F.mse_loss(pred, target))


def test_masked_mse_is_mean_over_agent_pixels_and_channels():
    pred, target, mask = _pred_target_mask()
    selected = (pred - target).square().permute(0, 2, 3, 1)[mask]  # (agent pixels, 3)
    assert torch.allclose(masked_mse(pred, target, mask), selected.mean())


def test_masked_mse_ignores_background_of_target():
    pred, target, mask = _pred_target_mask()
    changed = target.clone()
    changed[0, :, 0, 0] = 0.5  # a background pixel
    assert not mask[0, 0, 0]
    assert masked_mse(pred, changed, mask) == masked_mse(pred, target, mask)
    changed[0, :, 3, 4] = 0.5  # an agent pixel does count
    assert masked_mse(pred, changed, mask) != masked_mse(pred, target, mask)


def test_masked_mse_empty_mask_gives_zero_not_nan():
    pred, target, mask = _pred_target_mask()
    assert masked_mse(pred, target, torch.zeros_like(mask)).item() == 0.0


def test_masked_mse_rejects_mismatched_mask():
    pred, target, mask = _pred_target_mask()
    with pytest.raises(ValueError, match=r"\(B, H, W\)"):
        masked_mse(pred, target, mask[:, :4])


@pytest.mark.parametrize("name, background_grad", [("lapo", True), ("masklam", False)])
def test_background_gradient_is_zero_only_under_masklam(name, background_grad):
    method = _build(name)
    pred, target, mask = _pred_target_mask()
    pred.requires_grad_(True)
    method.reconstruction_loss(pred, target, {"target_mask": mask}).backward()
    background = pred.grad.permute(0, 2, 3, 1)[~mask]
    agent = pred.grad.permute(0, 2, 3, 1)[mask]
    assert bool((background != 0).all()) is background_grad
    assert bool((background == 0).all()) is not background_grad
    assert (agent != 0).all()


# Training, encoding, checkpoints, determinism for every registered method.

@pytest.mark.parametrize("name", available_methods())
def test_method_trains_and_encodes(name):
    method = _build(name)
    batch = _batch(method)
    for _ in range(2):
        logs = method.train_step(batch)
        assert math.isfinite(logs["loss"])
    z = method.encode(batch)
    assert z.shape == (BATCH, method.latent_dim) and z.dtype == torch.float32
    assert torch.isfinite(z).all()


@pytest.mark.parametrize("name", available_methods())
def test_state_dict_round_trip_reproduces_encode(name):
    trained = _build(name, seed=0)
    batch = _batch(trained)
    trained.train_step(batch)
    restored = _build(name, seed=1)
    restored.load_state_dict(trained.state_dict())
    assert torch.equal(trained.encode(batch), restored.encode(batch))


@pytest.mark.parametrize("name", ["lapo", "masklam", "masklam-full"])
def test_resumed_training_matches_uninterrupted(name):
    uninterrupted, resumed = _build(name, seed=0), _build(name, seed=1)
    batches = [_batch(uninterrupted, seed) for seed in range(3)]
    for batch in batches[:2]:
        uninterrupted.train_step(batch)
    resumed.load_state_dict(uninterrupted.state_dict())
    uninterrupted.train_step(batches[2])
    resumed.train_step(batches[2])
    assert resumed.step == uninterrupted.step == 3
    assert torch.equal(_parameters(uninterrupted), _parameters(resumed))


@pytest.mark.parametrize("name", ["lapo", "masklam", "masklam-full", "oracle"])
def test_same_seed_gives_identical_parameters(name):
    runs = []
    for _ in range(2):
        method = _build(name, seed=7)
        for seed in range(3):
            method.train_step(_batch(method, seed))
        runs.append(_parameters(method))
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(_parameters(_build(name, seed=7)), _parameters(_build(name, seed=8)))


def test_lapo_learns_to_predict_a_static_scene():
    method = _build("lapo", lr=1e-2, total_steps=30)
    batch = _batch(method)
    # Smooth frames (4x4 colour blocks) that stay the same: the FDM must learn to copy o_t.
    blocks = torch.randint(0, 256, (BATCH, 1, 3, 4, 4), generator=torch.Generator().manual_seed(0),
                           dtype=torch.uint8)
    frames = blocks.repeat_interleave(IMAGE // 4, -1).repeat_interleave(IMAGE // 4, -2)
    batch["context"] = frames.expand(-1, TINY.context_frames, -1, -1, -1)
    batch["target"] = frames[:, 0]
    first = method.train_step(batch)["recon_loss"]
    for _ in range(29):
        last = method.train_step(batch)["recon_loss"]
    assert last < 0.7 * first


def test_probe_never_changes_the_lam():
    with_probe, without = _build("lapo", probe_weight=0.5), _build("lapo", probe_weight=0.0)
    for seed in range(2):
        logs = with_probe.train_step(_batch(with_probe, seed))
        without.train_step(_batch(without, seed))
    assert logs["probe_mse"] > 0
    lam = [*with_probe.idm.parameters(), *with_probe.fdm.parameters()]
    lam_without = [*without.idm.parameters(), *without.fdm.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(lam, lam_without))
    assert not torch.equal(with_probe.probe.weight, without.probe.weight)


def test_checkpoint_of_another_shape_or_method_is_refused_clearly():
    state = _build("lapo").state_dict()
    with pytest.raises(ValueError, match="latent_dim=8.*build the method with the checkpoint"):
        _build("lapo", latent_dim=16).load_state_dict(state)
    with pytest.raises(ValueError, match="saved by method 'lapo'"):
        _build("masklam").load_state_dict(state)


def test_missing_batch_key_is_named():
    method = _build("masklam")
    batch = _batch(method)
    del batch["target_mask"]
    with pytest.raises(KeyError, match="target_mask"):
        method.train_step(batch)


def test_encode_names_missing_masks_of_masklam_full():
    method = _build("masklam-full")
    batch = _batch(method)
    del batch["context_mask"]
    with pytest.raises(KeyError, match="context_mask"):
        method.encode(batch)


def test_wrong_context_length_is_explained():
    method = _build("lapo")
    batch = _batch(method)
    batch["context"] = batch["context"][:, :2]
    with pytest.raises(ValueError, match="context_frames=3"):
        method.train_step(batch)


def test_cosine_schedule():
    assert cosine_lr_multiplier(0, 100) == 1.0
    assert cosine_lr_multiplier(50, 100) == pytest.approx(0.5)
    assert cosine_lr_multiplier(100, 100) == pytest.approx(0.0)
    assert cosine_lr_multiplier(500, 100) == pytest.approx(0.0)
    assert cosine_lr_multiplier(0, 100, warmup_steps=10) == pytest.approx(0.1)
    assert cosine_lr_multiplier(10, 100, warmup_steps=10) == 1.0
    method = _build("lapo", total_steps=4)
    lrs = [method.train_step(_batch(method))["lr"] for _ in range(5)]
    assert lrs[0] == TINY.lr and lrs[-1] == 0.0 and lrs == sorted(lrs, reverse=True)


# The variants and reference rows.

def test_masklam_differs_from_lapo_only_in_the_loss():
    lapo, masklam = _build("lapo"), _build("masklam")
    assert torch.equal(_parameters(lapo), _parameters(masklam))
    batch = _batch(lapo)
    assert torch.equal(lapo.encode(batch), masklam.encode(batch))
    lapo_logs, masklam_logs = lapo.train_step(batch), masklam.train_step(batch)
    assert lapo_logs["recon_loss"] != masklam_logs["recon_loss"]
    assert isinstance(masklam, LAPO) and type(masklam).reconstruction_loss is not \
        LAPO.reconstruction_loss


def test_masklam_full_needs_its_overrides():
    assert MaskLAMFull.config_overrides() == {"mask_input": True, "max_future": 9}
    assert MaskLAM.config_overrides() == {}
    with pytest.raises(ValueError, match="mask_input=True"):
        MaskLAMFull(TINY, IMAGE, ACTION_DIM)


def test_masklam_full_sees_masks_and_k():
    method = _build("masklam-full")
    batch = _batch(method)
    assert method.idm.encoder[0][0].in_channels == 4 * (TINY.context_frames + 1)
    z = method.encode(batch)
    masks_off = {**batch, "target_mask": torch.zeros_like(batch["target_mask"])}
    assert not torch.equal(z, method.encode(masks_off))
    obs = to_unit_range(batch["context"][:, -1])
    obs = torch.cat([obs, torch.zeros_like(obs[:, :1])], dim=1)
    with torch.no_grad():
        near = method.fdm(obs, z, torch.ones(BATCH, dtype=torch.long))
        far = method.fdm(obs, z, torch.full((BATCH,), 9))
    assert not torch.equal(near, far)
    with pytest.raises(ValueError, match="1..9"):
        method.train_step({**batch, "k": torch.full((BATCH,), 10)})


def test_oracle_and_bc_labels_flags():
    assert get_method("oracle").uses_clean_data and not get_method("lapo").uses_clean_data
    bc = _build("bc-labels")
    batch = _batch(bc)
    assert bc.latent_is_action and bc.latent_dim == ACTION_DIM
    assert torch.equal(bc.encode(batch), batch["action"])
    assert bc.train_step(batch) == {"loss": 0.0}


# Networks.

def test_impala_encoder_at_64_px_gives_8192_features():
    encoder, features = make_image_encoder(LamConfig(encoder="impala"), 12, 64)
    assert features == 8192
    assert encoder(torch.zeros((1, 12, 64, 64))).shape == (1, 8192)


def test_light_encoder_shape_and_bad_inputs():
    encoder, features = make_image_encoder(LamConfig(light_channels=8), 9, 64)
    assert encoder(torch.zeros((2, 9, 64, 64))).shape == (2, features)
    with pytest.raises(ValueError, match="multiple of 8"):
        make_image_encoder(LamConfig(), 9, 60)
    with pytest.raises(ValueError, match="Unknown encoder 'resnet'"):
        make_image_encoder(LamConfig(encoder="resnet"), 9, 64)


def test_fdm_predicts_frames_in_pixel_range():
    method = _build("lapo")
    predicted = method.predict(_batch(method))
    assert predicted.shape == (BATCH, 3, IMAGE, IMAGE) and predicted.dtype == torch.uint8


def test_latent_policy_and_action_decoder():
    policy = LatentPolicy(TINY, IMAGE, out_dim=8)
    frames = torch.randint(0, 256, (BATCH, 3, 3, IMAGE, IMAGE), dtype=torch.uint8)
    z = policy(frames)
    assert z.shape == (BATCH, 8)
    assert torch.equal(z, policy(frames.flatten(1, 2)))
    with pytest.raises(ValueError, match="frame stacks"):
        policy(frames[:, :2])
    with pytest.raises(TypeError, match="uint8"):
        policy(frames.float())
    assert ActionDecoder(8, ACTION_DIM)(z).shape == (BATCH, ACTION_DIM)


# The registry.

class MyLAM(LatentActionMethod):
    """An outside submission: a constant latent."""

    name = "my-lam"

    def train_step(self, batch):
        """No training."""
        return {"loss": 0.0}

    def encode(self, batch):
        """Zeros."""
        return torch.zeros((len(batch["target"]), self.latent_dim))

    def state_dict(self):
        """Nothing."""
        return {}

    def load_state_dict(self, state):
        """Nothing."""


class NotAMethod:
    """A class that does not implement the interface."""


class HalfAMethod(LatentActionMethod):
    """A subclass missing most of the interface."""

    def train_step(self, batch):
        """No training."""
        return {"loss": 0.0}


def test_registry_has_the_built_in_methods():
    assert available_methods() == ["bc-labelled", "bc-labels", "lapo", "masklam", "masklam-full",
                                   "oracle", "untrained-idm"]
    for name in available_methods():
        assert get_method(name).name == name


def test_get_method_imports_module_class():
    cls = get_method(f"{__name__}:MyLAM")
    assert cls is MyLAM
    assert cls(TINY, IMAGE, ACTION_DIM).encode(_batch(_build("lapo"))).shape == (BATCH, 8)


def test_get_method_errors_are_for_people():
    with pytest.raises(ValueError, match="Unknown method 'lapp'; did you mean 'lapo'.*masklam"):
        get_method("lapp")
    with pytest.raises(ValueError, match="Unknown method 'zzz'.*module.path:ClassName"):
        get_method("zzz")
    with pytest.raises(ValueError, match="not a LatentActionMethod subclass"):
        get_method(f"{__name__}:NotAMethod")
    with pytest.raises(ValueError, match="does not implement encode"):
        get_method(f"{__name__}:HalfAMethod")
    with pytest.raises(ValueError, match="has no attribute 'Missing'"):
        get_method(f"{__name__}:Missing")
    with pytest.raises(ValueError, match="Could not import module 'no_such_module_xyz'"):
        get_method("no_such_module_xyz:LAM")
    with pytest.raises(ValueError, match="Malformed"):
        get_method(":LAM")


def test_register_refuses_a_taken_name():
    from masklam_bench.baselines import register

    class Impostor(MyLAM):
        """Claims a registered name."""

        name = "lapo"

    with pytest.raises(ValueError, match="already taken"):
        register(Impostor)


# The throughput helper.

def test_train_throughput_reports_both_loops():
    result = train_throughput("masklam", TINY, image_size=IMAGE, batch=2, steps=1, threads=1)
    assert result["method_samples_per_s"] > 0 and result["bare_samples_per_s"] > 0
    assert result["params"] > 0 and result["threads"] == 1
