"""Class activation maps: one base that owns the layer hook, the target, the ReLU and the
upsampling; each method says only how the layer's activations A (B, C, h, w) and, for the
gradient CAMs, G = ∂S_c/∂A become a map at the layer's resolution:

  Grad-CAM    Σ_k w_k A_k,  w_k = mean_ij G_kij                     Selvaraju et al., ICCV 2017
  Grad-CAM++  Σ_k w_k A_k,  w_k = Σ_ij α_kij ReLU(G_kij),
              α = G² / (2G² + (Σ_ij A_kij) G³ + 1e-6)              Chattopadhay et al., WACV 2018
  XGrad-CAM   Σ_k w_k A_k,  w_k = Σ_ij G_kij A_kij / (Σ_ij A_kij + 1e-7)    Fu et al., BMVC 2020
  Score-CAM   Σ_k w_k A_k,  w = softmax_k S_c(x ⊙ n(up(A_k))), n = min-max to [0, 1]
                                                                    Wang et al., CVPR-W 2020
  HiResCAM    Σ_k G_k ⊙ A_k                                         Draelos & Carin, 2020
  LayerCAM    Σ_k ReLU(G_k) ⊙ A_k                                   Jiang et al., IEEE TIP 2021
  EigenCAM    (A − mean) projected on its first principal direction  Muhammad & Yeasin, IJCNN 2020

then ReLU (an option) and upsampling to the input. The definitions, constants included, are
pytorch-grad-cam's, which the tests compare with. The network continues on a copy of the hooked
output, so an in-place operation after the layer cannot overwrite what is explained.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from engine.attribution.base import ScoreType, class_scores
from engine.attribution.methods import guided_backprop
from engine.method import (
    LAYER_NAME,
    Attribution,
    MethodContext,
    MethodError,
    MethodOptions,
    MethodSpec,
    Reduction,
    index,
)
from engine.models.inspection import find_layer
from engine.runtime import checkpoint, max_rows_per_pass

Interpolation = Literal["bilinear", "nearest", "bicubic"]
GridSide = Annotated[int, Field(ge=1, le=1024)]


def token_grid(
    tokens: int, size: tuple[int, int], grid: tuple[int, int] | None, drop: int | None
) -> tuple[int, tuple[int, int]]:
    """(leading tokens to drop, (h, w)) for a transformer layer's N tokens on an H × W input.

    Given ``grid``, the tokens to drop are N − h·w (or ``drop``, checked); otherwise the grid is
    the h × w with the input's aspect ratio and h·w = N − k, for the given ``drop`` k or the
    smallest k ≥ 0 that has one (ViT: 197 = 1 + 14², DeiT-distilled: 2 + 14², registers: more).
    """
    height, width = size
    if grid is not None:
        drop = tokens - grid[0] * grid[1] if drop is None else drop
        if drop < 0 or tokens - drop != grid[0] * grid[1]:
            raise MethodError(f"the layer has {tokens} tokens, which are not {drop or 0} "
                              f"dropped + a {grid[0]}×{grid[1]} grid")  # fmt: skip
        return drop, grid
    for k in range(min(tokens, 17)) if drop is None else (drop,):
        patches = tokens - k
        h = max(1, round(math.sqrt(patches * height / width)))
        if patches > 0 and patches % h == 0 and _aspect_matches(h, patches // h, size):
            return k, (h, patches // h)
    raise MethodError(f"cannot arrange the layer's {tokens} tokens as a grid of the input's "
                      "aspect ratio; pass the options 'grid' and 'tokens_to_drop'")  # fmt: skip


def _aspect_matches(h: int, w: int, size: tuple[int, int]) -> bool:
    return round(h * size[1] / size[0]) == w


def spatial_map(
    output: Tensor,
    size: tuple[int, int],
    grid: tuple[int, int] | None = None,
    tokens_to_drop: int | None = None,
) -> Tensor:
    """A layer's output as a (B, C, h, w) map: convolutional maps as they are, channels-last
    maps (B, h, w, C) (Swin, ConvNeXt blocks) permuted, token sequences (B, N, C) (ViT, DeiT)
    without their leading class/register tokens and reshaped to the patch grid."""
    if output.ndim == 4:
        first, last = output.shape[2:], output.shape[1:3]
        if _aspect_matches(*last, size) and not _aspect_matches(*first, size):
            return output.permute(0, 3, 1, 2)
        return output
    if output.ndim == 3:
        drop, (h, w) = token_grid(output.shape[1], size, grid, tokens_to_drop)
        return output[:, drop:].reshape(output.shape[0], h, w, -1).permute(0, 3, 1, 2)
    raise MethodError(f"the layer outputs shape {tuple(output.shape)}, neither a map (B, C, h, w) "
                      "/ (B, h, w, C) nor tokens (B, N, C)")  # fmt: skip


class CAM(Attribution):
    """The shared part of every CAM at ``layer`` (a module, or its path in ``model``); returns
    (B, 1, H, W).

    ``call_index`` picks which call of the layer to use when the module runs several times in
    one forward pass (-1: the last, e.g. EfficientNet's shared activation at the head). The
    layer's output becomes a map by :func:`spatial_map` (``grid`` and ``tokens_to_drop`` for
    transformer tokens), and so does its gradient. Subclasses define :meth:`weights` (one
    weight per channel) or :meth:`combine`.
    """

    uses_gradient = True

    def __init__(
        self,
        model: nn.Module,
        layer: nn.Module | str,
        score: ScoreType = "logit",
        relu: bool = True,
        interpolation: Interpolation = "bilinear",
        align_corners: bool = False,
        call_index: int = -1,
        grid: tuple[int, int] | None = None,
        tokens_to_drop: int | None = None,
    ):
        self.model = model
        self.module = find_layer(model, layer) if isinstance(layer, str) else layer
        self.score = score
        self.relu = relu
        self.interpolation = interpolation
        self.align_corners = align_corners
        self.call_index = call_index
        self.grid = grid
        self.tokens_to_drop = tokens_to_drop

    def weights(self, activation: Tensor, gradient: Tensor, x: Tensor, targets: Tensor) -> Tensor:
        """One weight per channel (B, C)."""
        raise NotImplementedError

    def combine(self, activation: Tensor, gradient: Tensor, x: Tensor, targets: Tensor) -> Tensor:
        """The map at the layer's resolution (B, h, w); by default Σ_k w_k A_k."""
        weights = self.weights(activation, gradient, x, targets)
        return (weights[:, :, None, None] * activation).sum(1)

    def starts_graph(self, call: int) -> bool:
        """Whether the autograd graph starts at the output of the layer's call number ``call``
        (a leaf that requires a gradient; the input does not): the explained call where its
        number is known (``call_index`` ≥ 0), every call for the last one (-1: the last leaf is
        the explained call, with all of its way to the score), else the first call. Everything
        before it runs without recording a graph, and the backward stops there."""
        if self.call_index >= 0:
            return call == self.call_index
        return self.call_index == -1 or call == 0

    def activation_and_gradient(self, x: Tensor, targets: Tensor) -> tuple[Tensor, Tensor | None]:
        """The layer's output on x as a map (B, C, h, w) and, for gradient CAMs, ∂S_c/∂output
        as the same map."""
        outputs: list[Tensor] = []

        def keep(module: nn.Module, inputs: tuple, output: Tensor) -> Tensor | None:
            if not isinstance(output, Tensor):
                outputs.append(output)
                return None
            if self.uses_gradient and self.starts_graph(len(outputs)):
                output = output.detach().requires_grad_()
            outputs.append(output)
            return output.clone()

        handle = self.module.register_forward_hook(keep)
        try:
            with torch.set_grad_enabled(self.uses_gradient):
                logits = self.model(x.detach())
                if not outputs:
                    raise MethodError("the CAM layer did not run in the forward pass")
                activation = outputs[self.call_index]
                if not isinstance(activation, Tensor):
                    raise MethodError("the CAM layer does not output a tensor")
                gradient = None
                if self.uses_gradient:
                    scores = class_scores(logits, targets, self.score)
                    (gradient,) = torch.autograd.grad(scores.sum(), activation)
        finally:
            handle.remove()
        size = (x.shape[-2], x.shape[-1])
        as_map = lambda t: spatial_map(t, size, self.grid, self.tokens_to_drop)  # noqa: E731
        return as_map(activation.detach()), None if gradient is None else as_map(gradient)

    def layer_map(self, x: Tensor, targets: Tensor) -> Tensor:
        """The class activation map at the layer's resolution, (B, 1, h, w)."""
        activation, gradient = self.activation_and_gradient(x, targets)
        cam = self.combine(activation, gradient, x, targets).unsqueeze(1)
        return F.relu(cam) if self.relu else cam

    def upsample(self, cam: Tensor, size: tuple[int, int]) -> Tensor:
        if self.interpolation == "nearest":
            return F.interpolate(cam, size=size, mode="nearest")
        return F.interpolate(
            cam, size=size, mode=self.interpolation, align_corners=self.align_corners
        )

    def attribute(self, x: Tensor, targets: Tensor) -> Tensor:
        return self.upsample(self.layer_map(x, targets), tuple(x.shape[2:]))


def _spatial_sum(values: Tensor) -> Tensor:
    return values.sum((2, 3))


class GradCAM(CAM):
    def weights(self, activation, gradient, x, targets):
        return gradient.mean((2, 3))


class GradCAMPlusPlus(CAM):
    def weights(self, activation, gradient, x, targets):
        squared, cubed = gradient**2, gradient**3
        totals = _spatial_sum(activation)[:, :, None, None]
        alpha = squared / (2 * squared + totals * cubed + 1e-6)
        alpha = torch.where(gradient != 0, alpha, torch.zeros_like(alpha))
        return _spatial_sum(alpha * F.relu(gradient))


class XGradCAM(CAM):
    """The weights are summed in float64: a channel's activations can sum to nearly zero
    (a BatchNorm layer's signed output), where float32 sums lose ~1e-4 of the map's maximum."""

    def weights(self, activation, gradient, x, targets):
        dtype, activation, gradient = activation.dtype, activation.double(), gradient.double()
        totals = _spatial_sum(activation)[:, :, None, None]
        return _spatial_sum(gradient * activation / (totals + 1e-7)).to(dtype)


class HiResCAM(CAM):
    def combine(self, activation, gradient, x, targets):
        return (gradient * activation).sum(1)


class LayerCAM(CAM):
    def combine(self, activation, gradient, x, targets):
        return (F.relu(gradient) * activation).sum(1)


class ScoreCAM(CAM):
    """Each channel, upsampled (bilinear, corners aligned) and min-max normalised, masks the
    input; the target's scores of the C masked inputs, softmaxed over channels, weight the
    channels. C forward passes per image, ``batch_size`` masked inputs at a time."""

    uses_gradient = False

    def __init__(self, *args, batch_size: int = 32, **kwargs):
        super().__init__(*args, **kwargs)
        self.batch_size = batch_size

    @torch.no_grad()
    def weights(self, activation, gradient, x, targets):
        channels = activation.shape[1]
        rows = min(self.batch_size, max_rows_per_pass(x[0].numel()))
        scores = torch.empty(activation.shape[:2], device=x.device, dtype=x.dtype)
        for b in range(x.shape[0]):
            for start in range(0, channels, rows):
                stop = min(start + rows, channels)
                checkpoint()
                # Upsampled a few channels at a time: all 1280 of Lite0's at 880² held 4 GB.
                masks = F.interpolate(activation[b : b + 1, start:stop], size=x.shape[-2:],
                                      mode="bilinear", align_corners=True)[0]  # fmt: skip
                low = masks.amin((1, 2), keepdim=True)
                high = masks.amax((1, 2), keepdim=True)
                masks = (masks - low) / (high - low + 1e-8)
                masked = x[b : b + 1] * masks[:, None]  # (n, 3, H, W)
                logits = self.model(masked)
                scores[b, start:stop] = class_scores(logits, targets[b].expand(stop - start),
                                                     self.score)  # fmt: skip
                self._report(b * channels + stop, x.shape[0] * channels)
        return scores.softmax(1)


class EigenCAM(CAM):
    """Class-agnostic: needs no gradient and ignores the target. The principal direction's
    sign, which an SVD leaves open, is chosen so that its channel weights sum to ≥ 0 (the map
    rises where the layer is more active overall)."""

    uses_gradient = False

    def combine(self, activation, gradient, x, targets):
        flat = activation.flatten(2).transpose(1, 2).double()  # (B, hw, C)
        centred = flat - flat.mean(1, keepdim=True)
        _, _, vh = torch.linalg.svd(centred, full_matrices=False)
        direction = vh[:, 0]  # (B, C)
        sign = torch.where(direction.sum(1, keepdim=True) < 0, -1.0, 1.0).to(direction)
        projection = centred @ (sign * direction).unsqueeze(2)  # (B, hw, 1)
        return projection.squeeze(2).view(activation.shape[0], *activation.shape[2:]).to(x.dtype)


class GuidedGradCAM(Attribution):
    """Guided Backprop ⊙ upsampled Grad-CAM, shaped like the input (Selvaraju et al. 2017)."""

    def __init__(self, gradcam: GradCAM, guided_backprop: Attribution):
        self.gradcam = gradcam
        self.guided_backprop = guided_backprop

    def attribute(self, x: Tensor, targets: Tensor) -> Tensor:
        return self.guided_backprop.attribute(x, targets) * self.gradcam.attribute(x, targets)


# --- registry entries ----------------------------------------------------------------------


class LayerOptions(MethodOptions):
    heatmap_reduction: Reduction = "signed_sum"
    layer: str | None = Field(
        None, max_length=500, description="The model's module name (e.g. layer4, "
        "blocks.11.norm1); default: the model's CAM layer.", json_schema_extra={LAYER_NAME: "map"},
    )  # fmt: skip
    relu: bool = Field(True, description="ReLU on the layer map (as the papers do).")
    interpolation: Interpolation = "bilinear"
    align_corners: bool = False
    call_index: int = Field(-1, description="Which call of a layer run several times (-1: last).")
    grid: tuple[GridSide, GridSide] | None = Field(
        None, description="[h, w] of a transformer layer's patch tokens; default: the grid "
        "with the input's aspect ratio that the token count allows.",
    )  # fmt: skip
    tokens_to_drop: int | None = Field(
        None, ge=0, le=64, description="Leading tokens of a transformer layer that are not "
        "patches (class, distillation, register tokens); default: the token count minus the grid.",
    )  # fmt: skip

    def requirements(self) -> frozenset[str]:
        return frozenset({"hooks"} if self.layer is not None else {"hooks", "cam_layer"})

    def cam_arguments(self) -> dict[str, Any]:
        """Keyword arguments of the CAM's constructor that these options set beyond the
        layer's: the explained score (the gradient-free EigenCAM has none: 'logit')."""
        return {"score": "logit"}


class CAMOptions(LayerOptions):
    score: ScoreType = Field(
        "logit", description="Explained scalar: logit, softmax or log_softmax."
    )

    def cam_arguments(self) -> dict[str, Any]:
        return {"score": self.score}


class ScoreCAMOptions(CAMOptions):
    batch_size: int = Field(
        32, ge=1, le=1024, description="Masked inputs per forward pass (at most "
        "EXPLAINER_MAX_ROWS_PER_PASS of the process).",
    )  # fmt: skip

    def model_passes(self, height: int, width: int) -> int:
        """One forward pass per channel of the layer: 1280 on the built-in models' CAM layers."""
        return 1280

    def cam_arguments(self) -> dict[str, Any]:
        return super().cam_arguments() | {"batch_size": self.batch_size}


def cam_layer(ctx: MethodContext, options: LayerOptions) -> nn.Module:
    name = options.layer or ctx.cam_layer
    if name is None:
        raise MethodError("this model declares no CAM layer; pass the 'layer' option")
    return ctx.layer(name)


def _builder(cls: type[CAM]):
    def build(ctx: MethodContext, o: LayerOptions) -> CAM:
        return cls(ctx.model, cam_layer(ctx, o), relu=o.relu, interpolation=o.interpolation,
                   align_corners=o.align_corners, call_index=o.call_index, grid=o.grid,
                   tokens_to_drop=o.tokens_to_drop, **o.cam_arguments())  # fmt: skip

    return build


def _guided_gradcam(ctx: MethodContext, options: CAMOptions) -> Attribution:
    return GuidedGradCAM(_builder(GradCAM)(ctx, options), guided_backprop(ctx, options))


# (name, class, options, summary, citation)
_FAMILY = [
    ("gradcam", GradCAM, CAMOptions,
     "Grad-CAM: ReLU(Σ_k mean(∂S/∂A^k)·A^k) at a conv layer, upsampled to the input.",
     "Selvaraju et al., ICCV 2017"),
    ("gradcam_plusplus", GradCAMPlusPlus, CAMOptions,
     "Grad-CAM++: channel weights from positive gradients with higher-order α coefficients.",
     "Chattopadhay et al., WACV 2018"),
    ("xgradcam", XGradCAM, CAMOptions,
     "XGrad-CAM: channel weights Σ G·A / Σ A (axiom-based).", "Fu et al., BMVC 2020"),
    ("hirescam", HiResCAM, CAMOptions,
     "HiResCAM: Σ_k G_k ⊙ A_k, element-wise (no spatial averaging of the gradient).",
     "Draelos & Carin, arXiv:2011.08891, 2020"),
    ("layercam", LayerCAM, CAMOptions,
     "LayerCAM: Σ_k ReLU(G_k) ⊙ A_k, element-wise positive gradients.",
     "Jiang et al., IEEE TIP 2021"),
    ("scorecam", ScoreCAM, ScoreCAMOptions,
     "Score-CAM: channel weights = softmax of the target's score on the input masked by each "
     "upsampled channel; gradient-free, one forward pass per channel.",
     "Wang et al., CVPR Workshops 2020"),
    ("eigencam", EigenCAM, LayerOptions,
     "EigenCAM: the layer's activations projected on their first principal component; "
     "class-agnostic and gradient-free.", "Muhammad & Yeasin, IJCNN 2020"),
]  # fmt: skip
CAM_METHODS: dict[str, MethodSpec] = index(
    [
        *(
            MethodSpec(
                name=name,
                family="cam",
                summary=summary,
                citation=citation,
                options=options,
                build=_builder(cls),
            )
            for name, cls, options, summary, citation in _FAMILY
        ),
        MethodSpec(
            name="guided_gradcam",
            family="cam",
            summary="Guided Grad-CAM: Guided Backprop ⊙ upsampled Grad-CAM.",
            citation="Selvaraju et al., ICCV 2017",
            options=CAMOptions,
            build=_guided_gradcam,
            requires=frozenset({"rectifiers"}),
        ),
    ]
)
