"""engine.plan: the pre-flight checks the API and explain() share, on real models and methods,
against hand computations of cost, size and memory; the options' hooks; StartGrad's rank
transform against scikit-learn's QuantileTransformer (the spec's reference)."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from sklearn.preprocessing import QuantileTransformer

from engine.attribution.cam import CAMOptions, LayerOptions, ScoreCAMOptions
from engine.catalogue import METHODS
from engine.masks.inits import rank_transform
from engine.masks.methods import (
    PixelMaskOptions,
    ShearletXOptions,
    SmoothMaskOptions,
    WaveletXOptions,
)
from engine.method import MethodError
from engine.metrics.base import MetricError
from engine.models import MODELS, row_bytes
from engine.plan import Plan, PlanError, plan

LITE0 = "efficientnet_lite0"


def refusal(**kwargs) -> PlanError:
    with pytest.raises(PlanError) as caught:
        plan(kwargs.pop("model", LITE0), kwargs.pop("method"), **kwargs)
    return caught.value


def test_cost_of_integrated_gradients_is_its_steps_and_metrics_scaled_by_pixels():
    options = {"steps": 32, "smoothing": {"samples": 3}}
    metrics = [{"name": "faithfulness", "steps": 11}]
    # IG: one pass per step per noise sample; faithfulness: keep and remove curves of 11
    # fractions with one noise draw each, plus the clean input.
    by_hand = 32 * 3 + (2 * 11 * 1 + 1)
    planned = plan(LITE0, "integrated_gradients", options, metrics=metrics)
    assert isinstance(planned, Plan) and planned.size == (224, 224)
    assert planned.passes == by_hand
    # Kept at 448×448 (resize='none'): four times the model's pixels, four times the passes.
    large = plan(LITE0, "integrated_gradients", options, metrics=metrics,
                 image_size=(448, 448), resize="none")  # fmt: skip
    assert large.size == (448, 448) and large.passes == 4 * by_hand
    assert refusal(method="integrated_gradients", options=options, metrics=metrics,
                   max_passes=by_hand - 1).code == "limit_exceeded"  # fmt: skip
    assert plan(LITE0, "integrated_gradients", options, metrics=metrics, max_passes=by_hand)


def test_explained_size_follows_resize_and_the_options_image_size():
    photo = (640, 480)  # width, height
    assert plan(LITE0, "saliency", image_size=photo).size == (224, 224)
    assert plan(LITE0, "saliency", image_size=photo, resize="none").size == (480, 640)
    mask = {"image_size": 96, "iterations": 2}
    assert plan(LITE0, "pixelmask", mask, image_size=photo).size == (96, 96)
    assert plan(LITE0, "pixelmask", mask, image_size=photo, resize="none").size == (480, 640)
    # pixelmask: iterations × noise samples + 1 at 96² (below the model's pixels: not scaled)
    assert plan(LITE0, "pixelmask", mask).passes == 2 * 16 + 1
    # A model that takes its input size only refuses another explained size.
    fixed = replace(MODELS[LITE0], capabilities=frozenset())
    error = refusal(model=fixed, method="saliency", image_size=photo, resize="none")
    assert error.code == "invalid_option" and "224×224 images only" in error.message


def test_an_image_whose_scaled_copy_is_too_large_or_too_small_is_refused():
    strip = refusal(method="saliency", image_size=(20_000, 10), max_pixels=10_000_000)
    assert (strip.code, strip.status) == ("invalid_image", 413)
    tiny = refusal(method="saliency", image_size=(20, 20), resize="none", max_pixels=10**7)
    assert (tiny.code, tiny.status) == ("invalid_image", 422)


def test_a_history_metric_on_a_gradient_method_is_refused():
    metric = [{"name": "iterations_to_target", "target": 0.9}]
    error = refusal(method="saliency", metrics=metric)
    assert error.code == "invalid_metric" and "needs a mask method, not saliency" in error.message
    assert isinstance(error, MetricError)  # what explain()'s callers catch
    planned = plan(LITE0, "pixelmask", {"iterations": 2}, metrics=metric)
    assert [m.spec.name for m in planned.metrics] == ["iterations_to_target"]
    unknown = refusal(method="saliency", metrics=["faithfullness"])
    assert unknown.code == "invalid_metric" and unknown.details[0]["suggestions"] == [
        "faithfulness"
    ]


def test_the_history_flag_marks_the_methods_that_record_one():
    flagged = {name for name, spec in METHODS.items() if spec.has_history}
    assert flagged == {"pixelmask", "smoothmask", "cartoonx", "waveletx", "shearletx",
                       "extremal_mask"}  # fmt: skip
    assert METHODS["shearletx"].describe()["has_history"] is True
    assert METHODS["gradcam"].describe()["has_history"] is False


def test_a_memory_limit_names_the_estimate_and_the_limit():
    options = {"image_size": 512, "iterations": 1}
    # PixelMask at 512²: float32 tensors of 3 colours × 1 coefficient per pixel, 6 for the
    # image and 1.5 per noise sample, plus the model's pass of its 16 noise samples at once.
    own = 3 * 512 * 512 * 4 * (6 + 1.5 * 16)
    estimate = int(own) + 16 * row_bytes(MODELS[LITE0], 512, 512)
    assert plan(LITE0, "pixelmask", options).working_set_bytes == estimate
    limit = 4 * 2**30
    assert estimate > limit
    error = refusal(method="pixelmask", options=options, max_memory_bytes=limit)
    assert error.code == "limit_exceeded" and error.status == 422
    assert f"needs about {estimate / 2**30:.1f} GB" in error.message
    assert "limit is 4.0 GB" in error.message and "512×512" in error.message
    assert plan(LITE0, "pixelmask", options, max_memory_bytes=estimate).working_set_bytes


def test_layer_options_name_layers_of_the_model():
    unknown = refusal(method="gradcam", options={"layer": "_conv_hed"})
    assert unknown.code == "invalid_option" and "no layer '_conv_hed'" in unknown.message
    assert "closest: _conv_head" in unknown.message
    assert isinstance(unknown, MethodError)
    flat = refusal(method="gradcam", options={"layer": "_fc"})
    assert "_fc outputs no spatial map" in flat.message
    assert plan(LITE0, "gradcam", {"layer": "_conv_head"}).options.layer == "_conv_head"


def test_models_targets_and_input_kinds():
    unknown = refusal(model="efficientnet_lite9", method="saliency")
    assert unknown.code == "unknown_model" and LITE0 in unknown.details[0]["suggestions"]
    target = refusal(method="saliency", target=1000)
    assert target.code == "invalid_target" and "classes 0–999" in target.message
    assert refusal(method="saliency", target="no such class").code == "invalid_target"
    assert plan(LITE0, "saliency", target="Egyptian cat")
    kind = refusal(method="saliency", input_kind="timeseries")
    assert kind.code == "wrong_input_kind" and "takes images" in kind.message
    assert refusal(method="extremal_mask").code == "method_not_applicable"


def test_trained_set_needs_come_from_the_options():
    gad = plan(LITE0, "gad", {"classes": [281, 285]})
    assert (gad.trained_set, gad.trained_set_classes) == ("support_set", (281, 285))
    assert plan(LITE0, "saliency").trained_set is None


def test_options_hooks():
    assert PixelMaskOptions(image_size=64).input_size((224, 224)) == (64, 64)
    assert PixelMaskOptions().input_size((224, 224)) == (224, 224)
    assert SmoothMaskOptions().objective().tv == 300.0
    assert WaveletXOptions().objective().energy == 10.0 and WaveletXOptions().objective().tv == 0
    published = ShearletXOptions().loop_settings()
    assert published.coefficient_clamp and not published.pixel_clamp
    plain = ShearletXOptions(coefficient_clamp=False).loop_settings()
    assert plain.pixel_clamp and not plain.coefficient_clamp
    assert LayerOptions().cam_arguments() == {"score": "logit"}
    assert CAMOptions(score="softmax").cam_arguments() == {"score": "softmax"}
    assert ScoreCAMOptions(batch_size=8).cam_arguments() == {"score": "logit", "batch_size": 8}


def test_startgrad_rank_transform_treats_ties_as_sklearns_quantile_transformer():
    """Gradient magnitudes with many exact zeros and repeated values: each 5 × 13 map equals
    QuantileTransformer(n_quantiles=N).fit_transform of its values (N = 65: the reference's
    quantile grid k/64 is exact in floating point, so its ties are not blurred by rounding)."""
    generator = np.random.default_rng(0)
    maps = np.abs(generator.normal(size=(12, 5, 13)))
    maps[maps < 0.6] = 0.0  # about half exact zeros, the minimum of every map
    maps = np.round(maps, 1)  # inner ties
    maps[3] = np.round(maps[3] * 2) / 2  # a few large tie groups, the maximum tied too
    maps[4] = 2.0  # one value everywhere
    ours = rank_transform(torch.tensor(maps), 2).numpy().reshape(12, -1)
    for values, ranked in zip(maps.reshape(12, -1), ours, strict=True):
        reference = QuantileTransformer(n_quantiles=values.size, subsample=None)
        expected = reference.fit_transform(values[:, None])[:, 0]
        np.testing.assert_allclose(ranked, expected, atol=1e-12)
    zeros = maps[0].ravel() == 0
    assert zeros.sum() > 20 and (ours[0][zeros] == 0).all()  # not their mean rank
    assert (ours[4] == 0).all()
    assert math.isclose(ours[1].max(), 1.0)
