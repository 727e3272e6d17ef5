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
from masklam_bench.baselines.laom import (
    AUGMENTATIONS,
    LAOM,
    MAX_FUTURE,
    TARGET_TAU,
    FrameAugmenter,
    linear_lr_multiplier,
    stack_input,
)
from masklam_bench.baselines.laom_labels import LABEL_LOSS_WEIGHT, LABELLED_BATCH
from masklam_bench.baselines.laom_masked import BACKGROUND_FILL, mask_background
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


def _batch(method: LatentActionMethod, seed: int = 0) -> dict[str, Any]:
    """A random batch matching the method's config (with a labelled one if the method asks)."""
    config = method.config if hasattr(method, "config") else TINY
    batch = random_batch(config, IMAGE, ACTION_DIM, BATCH, torch.Generator().manual_seed(seed))
    if method.labelled_batch_size:
        batch["labelled"] = random_batch(config, IMAGE, ACTION_DIM, BATCH,
                                         torch.Generator().manual_seed(1000 + seed))
    return batch


def _parameters(method: LAPO | LAOM) -> torch.Tensor:
    """All network parameters as one flat vector."""
    return torch.cat([p.detach().flatten() for p in method.nets.parameters()])


def _target(method: LAOM) -> torch.Tensor:
    """LAOM's EMA target encoder's parameters as one flat vector."""
    return torch.cat([p.detach().flatten() for p in method.target_encoder.parameters()])


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


@pytest.mark.parametrize("name", ["lapo", "masklam", "masklam-full", "laom", "laom-labels",
                                  "laom-masked"])
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
    if isinstance(resumed, LAOM):  # the EMA target and the augmentations resume too
        assert torch.equal(_target(uninterrupted), _target(resumed))


@pytest.mark.parametrize("name", ["lapo", "masklam", "masklam-full", "oracle", "laom",
                                  "laom-labels", "laom-masked"])
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


def test_registry_has_the_builtin_methods():
    assert available_methods() == ["bc-labelled", "bc-labels", "laom", "laom-labels",
                                   "laom-masked", "lapo", "masklam", "masklam-full", "oracle",
                                   "untrained-idm"]
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


# LAOM and its variants.

def test_laom_ema_target_is_updated_and_gets_no_gradient():
    method = _build("laom")
    assert all(not p.requires_grad for p in method.target_encoder.parameters())
    online = [p for p in method.encoder.parameters()]
    assert torch.equal(_target(method), torch.cat([p.detach().flatten() for p in online]))
    before = _target(method).clone()
    method.train_step(_batch(method))
    assert all(p.grad is None for p in method.target_encoder.parameters())
    after_online = torch.cat([p.detach().flatten() for p in method.encoder.parameters()])
    # One EMA step: (1 - tau) * old target + tau * the online encoder after the optimiser step.
    expected = torch.lerp(before, after_online, TARGET_TAU)
    assert not torch.equal(_target(method), before)
    assert torch.allclose(_target(method), expected, atol=1e-7)
    # The target never enters the optimiser.
    optimised = {id(p) for group in method.optimizer.param_groups for p in group["params"]}
    assert not optimised & {id(p) for p in method.target_encoder.parameters()}


def test_laom_augmentations_are_seeded_and_keep_uint8_shapes():
    g = torch.Generator().manual_seed(0)
    stacks = torch.randint(0, 256, (16, 3, 3, IMAGE, IMAGE), generator=g, dtype=torch.uint8)
    frames = stacks[:, 0].clone()
    outputs = {}
    for seed in (0, 0, 1):
        augment = FrameAugmenter(IMAGE, seed)
        out_stacks, out_frames = augment(stacks), augment(frames)
        assert out_stacks.dtype == out_frames.dtype == torch.uint8
        assert out_stacks.shape == stacks.shape and out_frames.shape == frames.shape
        outputs.setdefault(seed, []).append(out_stacks)
    assert torch.equal(outputs[0][0], outputs[0][1])
    assert not torch.equal(outputs[0][0], outputs[1][0])
    assert not torch.equal(outputs[0][0], stacks)
    # One random choice per image, over all eight of LAOM's, and "none" leaves an image as it is.
    augment = FrameAugmenter(IMAGE, 0)
    state = augment.generator.get_state()
    choice, _ = augment.maps(256)
    assert set(choice.tolist()) == set(range(len(AUGMENTATIONS)))
    augment.generator.set_state(state)
    choice, _ = augment.maps(len(stacks))
    augment.generator.set_state(state)
    out = augment(stacks)
    untouched = choice == AUGMENTATIONS.index("none")
    assert untouched.any() and torch.equal(out[untouched], stacks[untouched])


def test_laom_augmentations_move_a_stack_as_one_image():
    frame = torch.randint(0, 256, (8, 1, 3, IMAGE, IMAGE), dtype=torch.uint8,
                          generator=torch.Generator().manual_seed(3))
    out = FrameAugmenter(IMAGE, 0)(frame.expand(-1, 3, -1, -1, -1))
    assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 0], out[:, 2])
    with pytest.raises(ValueError, match="uint8 frames of 32x32"):
        FrameAugmenter(IMAGE, 0)(frame.float())


def test_laom_method_training_is_seeded_by_the_torch_seed():
    a, b, c = _build("laom", seed=3), _build("laom", seed=3), _build("laom", seed=4)
    assert torch.equal(a.augment.generator.get_state(), b.augment.generator.get_state())
    assert not torch.equal(a.augment.generator.get_state(), c.augment.generator.get_state())


def test_laom_idm_reads_the_target_stack_and_the_fdm_target_is_o_t_plus_1():
    method = _build("laom")
    batch = _batch(method)
    assert method.config.max_future == MAX_FUTURE == 10
    z = method.encode(batch)
    assert torch.equal(z, method.encode({**batch, "target": torch.zeros_like(batch["target"])}))
    other = {**batch, "target_context": batch["target_context"].flip(0)}
    assert not torch.equal(z, method.encode(other))
    target = method.target_frames(batch)
    assert torch.equal(target[:, -1], batch["next"])
    assert torch.equal(target[:, :-1], batch["context"][:, 1:])


def test_linear_schedule():
    assert linear_lr_multiplier(0, 100) == 1.0
    assert linear_lr_multiplier(50, 100) == pytest.approx(0.5)
    assert linear_lr_multiplier(100, 100) == 0.0 and linear_lr_multiplier(500, 100) == 0.0
    assert linear_lr_multiplier(0, 100, warmup_steps=10) == pytest.approx(0.1)
    assert linear_lr_multiplier(10, 100, warmup_steps=10) == 1.0
    assert linear_lr_multiplier(55, 100, warmup_steps=10) == pytest.approx(0.5)


def test_laom_labels_supervision_reads_only_the_labelled_batch():
    assert get_method("laom-labels").labelled_batch_size == LABELLED_BATCH == 128
    assert get_method("laom").labelled_batch_size == 0 and LAPO.labelled_batch_size == 0
    batch = _batch(_build("laom-labels"))
    # NaN actions in the main batch: nothing reads them.
    poisoned = {**batch, "action": torch.full_like(batch["action"], float("nan"))}
    method = _build("laom-labels")
    for _ in range(2):
        logs = method.train_step(poisoned)
        assert math.isfinite(logs["loss"]) and math.isfinite(logs["label_mse"])
    assert torch.isfinite(_parameters(method)).all()
    # The same poison in the labelled batch reaches the loss: the check above can fail.
    labelled = {**batch["labelled"],
                "action": torch.full_like(batch["labelled"]["action"], float("nan"))}
    logs = _build("laom-labels").train_step({**batch, "labelled": labelled})
    assert math.isnan(logs["label_mse"]) and math.isnan(logs["loss"])
    with pytest.raises(KeyError, match="labelled"):
        _build("laom-labels").train_step({k: v for k, v in batch.items() if k != "labelled"})


def test_laom_labels_weights_its_action_loss():
    method = _build("laom-labels")
    logs = method.train_step(_batch(method))
    assert logs["loss"] == pytest.approx(logs["fdm_loss"] + LABEL_LOSS_WEIGHT * logs["label_mse"],
                                         rel=1e-5)
    # Same seed: laom-labels starts from laom's shared networks (its head is built after them).
    laom, labels = _build("laom"), _build("laom-labels")
    assert torch.equal(_parameters(laom), _parameters(labels)[:len(_parameters(laom))])


def test_laom_masked_target_is_constant_outside_the_mask():
    method = _build("laom-masked")
    assert method.uses_masks and not get_method("laom").uses_masks
    batch = _batch(method)
    target = method.target_frames(batch)  # (B, c, 3, H, W)
    masks = torch.cat([batch["context_mask"][:, 1:], batch["next_mask"].unsqueeze(1)], dim=1)
    background = target.permute(0, 1, 3, 4, 2)[~masks]
    assert (background == BACKGROUND_FILL).all()
    assert torch.equal(target.permute(0, 1, 3, 4, 2)[masks],
                       _build("laom").target_frames(batch).permute(0, 1, 3, 4, 2)[masks])
    with pytest.raises(ValueError, match="agent masks"):
        mask_background(batch["next"], masks)


def _target_embedding(method: LAOM, batch: dict[str, Any]) -> torch.Tensor:
    """The EMA target's embedding of the batch's (augmented) target stack, generator rewound."""
    state = method.augment.generator.get_state()
    with torch.no_grad():
        emb = method.target_encoder(stack_input(method.augment(method.target_frames(batch))))
    method.augment.generator.set_state(state)
    return emb


def test_laom_masked_target_ignores_background_pixels():
    method = _build("laom-masked")
    batch = _batch(method)
    noise = torch.randint(0, 256, batch["next"].shape, dtype=torch.uint8,
                          generator=torch.Generator().manual_seed(9))
    outside = ~batch["next_mask"].unsqueeze(1).expand_as(noise)
    changed = {**batch, "next": torch.where(outside, noise, batch["next"]),
               "context": torch.where(~batch["context_mask"].unsqueeze(2),
                                      torch.zeros_like(batch["context"]), batch["context"])}
    emb = _target_embedding(method, batch)
    assert torch.equal(emb, _target_embedding(method, changed))
    # Unmasked LAOM's target does see the background.
    laom = _build("laom")
    assert not torch.equal(_target_embedding(laom, batch), _target_embedding(laom, changed))
    # And an agent pixel counts.
    inside = {**batch, "next": torch.where(outside, batch["next"], noise)}
    assert not torch.equal(emb, _target_embedding(method, inside))
