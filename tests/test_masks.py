"""Mask methods: transforms, initialisations, the shared loop, batching, outputs."""

from __future__ import annotations

import copy
import dataclasses
import itertools

import numpy as np
import pytest
import torch

from engine import explain
from engine.data import load_image
from engine.masks.inits import rank_transform
from engine.masks.loop import total_variation
from engine.masks.representation import PixelRepresentation, obfuscate
from engine.masks.shearlet import ShearletRepresentation, build_system, standard_layout
from engine.masks.wavelet import WaveletRepresentation

FAST = {"iterations": 3, "noise_samples": 4}


def photo(size: int, name: str = "chelsea") -> torch.Tensor:
    return load_image(name, (size, size))[0][None]


def test_shearlet_transform_matches_pyshearlab_and_reconstructs():
    from pyshearlab_mind import SLgetShearletSystem2D, SLsheardec2D

    x = photo(256)
    representation = ShearletRepresentation(scales=4)
    (coefficients,) = representation.decompose(x)
    assert coefficients.shape == (1, 3, 49, 256, 256) and representation.scales_used == 4
    reconstructed = representation.reconstruct([coefficients])
    assert (reconstructed - x).abs().max() < 1e-5
    # Our torch decomposition equals pyShearLab's own (float64) on one channel.
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        system = SLgetShearletSystem2D(0, 256, 256, 4)
    reference = SLsheardec2D(x[0, 0].double().numpy(), system)
    ours = standard_layout(coefficients)[0, 0].permute(1, 2, 0).numpy()
    assert np.abs(ours - reference).max() < 1e-5 * np.abs(reference).max()


@pytest.mark.parametrize(
    ("size", "scales", "padded"), [(224, 3, None), (100, 2, None), (40, 2, (64, 64))]
)
def test_shearlet_sizes_fall_back_deliberately(size, scales, padded):
    x = photo(size)
    representation = ShearletRepresentation(scales=4)
    coefficients = representation.decompose(x)
    described = representation.describe()
    assert described["scales_used"] == scales and described["padded_to"] == padded
    assert (representation.reconstruct(coefficients) - x).abs().max() < 1e-4


def test_shearlet_systems_are_cached_on_disk(tmp_path, monkeypatch):
    monkeypatch.setenv("EXPLAINER_CACHE_DIR", str(tmp_path))
    from engine.masks.shearlet import load_system

    first = load_system(96, 96, 2)
    assert (tmp_path / "shearlets" / "96x96_scales2_f64.npz").is_file()
    again = load_system(96, 96, 2)
    assert np.allclose(first[0], again[0]) and np.allclose(build_system(96, 96, 2)[0], again[0])


@pytest.mark.parametrize("shape", [(97, 131), (64, 64), (33, 50)])
def test_wavelet_round_trip_keeps_odd_shapes(shape):
    x = torch.rand(2, 3, *shape, generator=torch.Generator().manual_seed(0))
    representation = WaveletRepresentation()
    coefficients = representation.decompose(x)
    assert (
        len(coefficients) == 6 and coefficients[1].shape[2] == 3
    )  # yl + 5 levels × 3 orientations
    back = representation.reconstruct(coefficients)
    assert back.shape == x.shape and (back - x).abs().max() < 1e-5


@pytest.mark.parametrize("mode", ["zero", "symmetric", "reflect"])
@pytest.mark.parametrize("wave", ["haar", "db3", "sym4", "bior2.2"])
def test_our_inverse_dwt_equals_pytorch_wavelets_and_its_gradient_is_the_adjoint(wave, mode):
    from pytorch_wavelets import DWTInverse

    representation = WaveletRepresentation(wave, 4, mode)
    x = torch.rand(2, 3, 45, 62, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    coefficients = [c.requires_grad_(True) for c in representation.decompose(x)]
    ours = representation.reconstruct(coefficients)
    theirs = DWTInverse(wave=wave, mode=mode).double()((coefficients[0], coefficients[1:]))
    assert ours.shape == x.shape and (ours - theirs[..., :45, :62]).abs().max() < 1e-12
    # ⟨T⁻¹c, y⟩ = ⟨c, T⁻ᵀy⟩: the gradient against the transform's own matrix, column by column
    # on a few coefficients (pytorch-wavelets' gradient is not the adjoint in these two modes).
    y = torch.randn_like(ours)
    gradient = torch.autograd.grad(ours, coefficients, y)
    for group, (c, g) in enumerate(zip(coefficients, gradient, strict=True)):
        for index in (0, c.numel() // 2, c.numel() - 1):
            unit = [torch.zeros_like(d) for d in coefficients]
            unit[group].view(-1)[index] = 1
            column = representation.reconstruct(unit)
            assert abs((column * y).sum() - g.reshape(-1)[index]) < 1e-10
    if mode == "zero":
        reference = torch.autograd.grad(theirs[..., :45, :62], coefficients, y)
        assert all((a - b).abs().max() < 1e-10 for a, b in zip(gradient, reference, strict=True))


def test_wavelet_names_are_checked_at_submit_and_every_accepted_one_gives_the_image_back():
    import pywt

    from engine.catalogue import get_method
    from engine.masks.methods import WAVELETS
    from engine.plan import PlanError, plan

    for wrong in ("db99", "db0", "sym1", "bior9.9", "dmey", "morl"):
        with pytest.raises(PlanError, match=r"wave: Input should be 'haar', 'db1', 'db2'"):
            plan("efficientnet_lite0", "waveletx", {"wave": wrong})
    # The options offer every discrete wavelet of PyWavelets but dmey, which does not reconstruct.
    assert sorted(WAVELETS) == sorted(w for w in pywt.wavelist(kind="discrete") if w != "dmey")
    x = torch.rand(1, 3, 37, 50, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    for wave in WAVELETS:
        assert get_method("cartoonx").parse_options({"wave": wave}).wave == wave
        representation = WaveletRepresentation(wave, 5)
        back = representation.reconstruct(representation.decompose(x))
        assert (back - x).abs().max() < 1e-5, wave


def test_wavelet_transforms_are_refused_at_submit_where_they_fail_or_cost_too_much():
    from engine.masks.wavelet import transform_refusal
    from engine.plan import PlanError, plan

    options = {"mode": "periodization", "image_size": 64, "iterations": 2}
    with pytest.raises(PlanError, match=r"periodization.*db3 \(6 taps\).*64×64 image at 5"):
        plan("efficientnet_lite0", "waveletx", options)
    assert plan("efficientnet_lite0", "waveletx", {**options, "levels": 3}).size == (64, 64)
    assert plan("efficientnet_lite0", "waveletx", {**options, "wave": "haar"}).size == (64, 64)
    costly = {"wave": "coif17", "levels": 8, "mode": "symmetric", "image_size": 97}
    with pytest.raises(PlanError, match=r"coif17 \(102 taps\) at 8 levels .* 5,000"):
        plan("efficientnet_lite0", "waveletx", costly)
    assert plan("efficientnet_lite0", "waveletx", {"wave": "db20"}).size == (224, 224)
    # The rules are the transforms' own behaviour, on both sides of their bounds: periodization
    # gives the image back exactly where accepted; reflect decomposes exactly where accepted.
    for size in range(40, 80, 3):
        representation = WaveletRepresentation("db3", 5, "periodization")
        x = torch.rand(1, 1, size, size + 1, generator=torch.Generator().manual_seed(size))
        error = (representation.reconstruct(representation.decompose(x)) - x).abs().max()
        refusal = transform_refusal("db3", 5, "periodization", size, size + 1)
        assert (error < 1e-5) == (refusal is None), size
    for wave, levels, size in itertools.product(("haar", "db3", "db17"), (1, 3, 8), (9, 20, 33)):
        representation = WaveletRepresentation(wave, levels, "reflect")
        try:
            representation.decompose(torch.rand(1, 1, size, size))
            decomposed = True
        except RuntimeError:
            decomposed = False
        accepted = transform_refusal(wave, levels, "reflect", size, size) is None
        cheap = transform_refusal(wave, levels, "zero", size, size) is None
        assert decomposed == accepted or not cheap, (wave, levels, size)


def test_rank_transform_is_the_empirical_cdf_with_ties_averaged():
    values = torch.tensor([[3.0, 1.0, 3.0, 2.0]])  # the ties at the maximum are 1, as sklearn's
    assert torch.allclose(rank_transform(values, 1), torch.tensor([[3.0, 0.0, 3.0, 1.0]]) / 3)
    values = torch.tensor([[0.0, 2.0, 0.0, 2.0, 5.0, 0.0]])  # inner ties: their mean rank
    assert torch.allclose(rank_transform(values, 1), torch.tensor([[0, 3.5, 0, 3.5, 5, 0]]) / 5)
    maps = torch.randn(2, 5, 7, 9)  # 10 maps of 7×9
    ranked = rank_transform(maps, 2).view(10, -1)
    expected = torch.linspace(0, 1, 63)
    assert all(torch.allclose(row.sort().values, expected) for row in ranked)


@pytest.mark.parametrize(
    ("method", "size"), [("pixelmask", 64), ("waveletx", 64), ("shearletx", 128)]
)
def test_startgrad_initial_mask_is_uniform_in_rank_within_each_map(lite0, method, size):
    result = explain(lite0, "chelsea", method, {**FAST, "iterations": 0, "init": "startgrad",
                                                "image_size": size})  # fmt: skip
    from scipy.stats import rankdata

    for mask in result.outputs.initial_masks:
        maps = mask[0, 0].reshape(-1, mask.shape[-2] * mask.shape[-1]).double().numpy()
        for row in maps:  # each map is its own empirical CDF: (average rank − 1)/(N − 1),
            # its ties at the bounds 0 and 1 (tests/test_plan.py compares with scikit-learn)
            expected = (rankdata(row) - 1) / (row.size - 1)
            expected[row == row.min()], expected[row == row.max()] = 0.0, 1.0
            assert np.allclose(row, expected, atol=1e-6)
            assert row.min() == 0 and row.max() == 1


@pytest.mark.parametrize(
    ("method", "options"),
    [("pixelmask", {}), ("cartoonx", {}), ("waveletx", {}),
     ("shearletx", {"coefficient_clamp": False})],
)  # fmt: skip
def test_all_ones_mask_keeps_the_image(lite0, method, options):
    """With every coefficient kept, obfuscations equal the image: retained probability 1."""
    options = {**FAST, "iterations": 0, "image_size": 128, **options}
    result = explain(lite0, "coffee", method, options)
    assert result.outputs.history[0]["retained_probability"][0] == pytest.approx(1, abs=1e-4)


def test_published_shearletx_obfuscation_changes_the_image_under_an_all_ones_mask(lite0):
    """The default (published) coefficient clamp zeroes the ≈half of shearlet coefficients that
    are negative, so even the all-ones mask loses class evidence (StartGrad's step-0 CP < 1)."""
    result = explain(lite0, "coffee", "shearletx", {**FAST, "iterations": 0, "image_size": 128})
    retained = result.outputs.history[0]["retained_probability"][0]
    assert retained != pytest.approx(1, abs=1e-3)


@pytest.fixture(scope="module")
def lite0_float64(lite0):
    return dataclasses.replace(lite0, module=copy.deepcopy(lite0.module).double())


@pytest.mark.parametrize(
    ("method", "size", "options"),
    [("pixelmask", 48, {}), ("waveletx", 48, {}), ("shearletx", 64, {}),
     ("smoothmask", 48, {"init": "uniform"}), ("cartoonx", 48, {"init": "startgrad"})],
)  # fmt: skip
def test_batch_equals_one_at_a_time(lite0_float64, method, size, options):
    """Same draws and the same math per image. In float64, so that rounding differences of
    batched convolutions stay below what Adam's normalised step could amplify where a gradient
    is ~0 (in float32 a few such coefficients differ by up to lr = 0.1 after some steps)."""
    images = torch.cat([photo(size, "chelsea"), photo(size, "astronaut")])
    opts = {"iterations": 2, "noise_samples": 3, "image_size": size, **options}
    batch = explain(lite0_float64, images, method, opts, target=[285, 409], seed=3)
    for i, target in enumerate([285, 409]):
        single = explain(lite0_float64, images[i], method, opts, target=target, seed=3)
        for batched, alone in zip(batch.outputs.masks, single.outputs.masks, strict=True):
            assert batched.dtype == torch.float64
            torch.testing.assert_close(batched[i : i + 1], alone, rtol=0, atol=1e-9)


def test_initialisations(lite0):
    def first_mask(init, **extra):
        options = {**FAST, "iterations": 0, "init": init, "image_size": 64, **extra}
        result = explain(lite0, "chelsea", "pixelmask", options)
        return result.outputs.initial_masks[0]

    assert first_mask("ones").eq(1).all() and first_mask("zeros").eq(0).all()
    assert first_mask("constant", init_constant=0.3).eq(0.3).all()
    uniform = first_mask("uniform")
    assert 0.4 < uniform.mean() < 0.6 and torch.equal(uniform, first_mask("uniform"))
    for variant in ("startgrad_smoothgrad", "startgrad_grad_x_input"):
        mask = first_mask(variant, startgrad_samples=2)
        # uniform in rank; tied values (e.g. where g ⊙ x = 0) share their mean rank
        ranks = torch.linspace(0, 1, 64 * 64)
        assert torch.allclose(mask.flatten().sort().values, ranks, atol=1e-3)
        assert not torch.allclose(mask, first_mask("startgrad"))


def test_loss_terms_by_hand():
    mask = torch.tensor([[[[0.0, 1.0], [1.0, 1.0]]]])
    # Squared differences: rows (1−0)² + (1−1)², columns (1−0)² + (1−1)²; N = 4.
    assert total_variation(mask).item() == pytest.approx(2 / 4)


def test_history_early_stop_and_scores(lite0):
    result = explain(lite0, "chelsea", "pixelmask", {**FAST, "iterations": 4, "image_size": 64})
    history = result.outputs.history[0]
    assert len(history["loss"]) == 5  # steps 0..4, step 0 = the initial mask
    loss = np.array(history["loss"])
    total = np.array(history["distortion"]) + np.array(history["l1"])
    assert np.allclose(loss, total, atol=1e-6)
    assert result.scores[0]["mask_mean"] == pytest.approx(history["mask_mean"][-1])
    stopped = explain(lite0, "chelsea", "pixelmask", {**FAST, "iterations": 50, "image_size": 64,
                      "stop_metric": "retained_probability", "stop_value": 0.0})  # fmt: skip
    assert stopped.outputs.stopped_early and stopped.outputs.iterations_run == 0


@pytest.mark.parametrize("metric", ["cp_pixel_sg", "loss"])
def test_early_stop_at_the_first_step_that_reaches_the_value(lite0, metric):
    """Seeded runs share their history, so stopping at the value a full run reaches first at
    some step k ends exactly at k (CP rises to the value, the loss falls to it)."""
    options = {**FAST, "iterations": 8, "image_size": 64}
    full = explain(lite0, "chelsea", "waveletx", options).outputs.history[0][metric]
    rising = metric == "cp_pixel_sg"
    best = np.maximum.accumulate(full) if rising else np.minimum.accumulate(full)
    step = next(k for k in range(3, 9) if best[k] != best[k - 1])  # a new record at k ≥ 3
    stopped = explain(lite0, "chelsea", "waveletx",
                      {**options, "stop_metric": metric, "stop_value": full[step]})  # fmt: skip
    assert stopped.outputs.iterations_run == step and stopped.outputs.stopped_early
    assert stopped.outputs.history[0][metric] == full[: step + 1]


def test_progress_reports_loss_and_cancellation_stops(lite0):
    seen = []

    def progress(done, total, **values):
        seen.append((done, total, set(values)))
        if done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        explain(lite0, "chelsea", "waveletx", {**FAST, "iterations": 10, "image_size": 64},
                progress=progress)  # fmt: skip
    assert seen[0] == (1, 10, {"loss", "retained_probability"}) and len(seen) == 2


def test_pixel_representation_noise_statistics():
    x = torch.rand(2, 3, 8, 8)
    model = PixelRepresentation().noise_model(x, [x], "uniform")
    assert torch.allclose(model.means[0].flatten(), x.flatten(1).mean(1))
    assert torch.allclose(model.stds[0].flatten(), x.flatten(1).std(1))
    # With an all-zero mask, an obfuscation is the noise itself.
    unit = model.unit([x], 1000, [torch.Generator().manual_seed(0)] * 2)
    empty = [torch.zeros(2, 1, 8, 8)]
    noise, _ = obfuscate(PixelRepresentation(), [x], empty, model, unit, pixel_clamp=False)
    low, high = model.means[0] - model.stds[0], model.means[0] + model.stds[0]
    assert noise.shape == (2000, 3, 8, 8)
    assert (noise[:1000] >= low[0]).all() and (noise[:1000] <= high[0]).all()
