"""Speed of every gradient method against Captum, and of the CAMs against pytorch-grad-cam, on the
same model weights, input and device, in one run.

Captum and pytorch-grad-cam get the model as a user loads it (contiguous weights); ours runs
through the engine as it loads the model (in the memory layout its load-time probe chose,
``engine.models.layout``). Prints, per method and batch size, the median time of ours, of the
reference, their ratio (≤ 1.0: we are as fast or faster), and ``err``: max |ours − reference| /
max |reference| with the reference run on the engine's model and, for the stochastic methods,
our method given the reference's draws (noise, reference images and α); ``err/user`` is the
same against the reference on the user's contiguous model (float rounding of the layout: a
ReLU6 at its bound can flip, see engine/models/layout.py); ``err f64`` (CAMs) is ``err`` with
both sides on a float64 copy of the model, the formulas' agreement without float32's rounding.
Both sides get identical settings (steps, samples, chunk sizes), the same photographs, one
thread each by default, and alternate in order to share any drift; the header has the load
average of the (shared) machine.

    python -m benchmarks.gradient_methods [--device cuda] [--batches 1 8] [--repeats 5]
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time
import warnings

import numpy as np
import pytorch_grad_cam as pgc
import torch
from captum.attr import (
    Deconvolution,
    GradientShap,
    GuidedBackprop,
    GuidedGradCam,
    InputXGradient,
    IntegratedGradients,
    LayerAttribution,
    LayerGradCam,
    NoiseTunnel,
    Saliency,
)
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from engine.attribution.cam import CAM
from engine.attribution.expected_gradients import ExpectedGradients
from engine.attribution.smoothing import NoiseTunnel as OurNoiseTunnel
from engine.catalogue import get_method
from engine.data import SAMPLES, load_image, reference_set
from engine.method import MethodContext
from engine.models import load_model
from engine.provenance import memory_format
from engine.runtime import keep_freed_memory
from testkit.captum import relu6_as_relu

CAM_LAYERS = {"efficientnet_lite0": "_bn1"}  # its cam layer _swish runs twice (stem and head)
CAMS = {
    "gradcam": pgc.GradCAM,
    "gradcam_plusplus": pgc.GradCAMPlusPlus,
    "xgradcam": pgc.XGradCAM,
    "hirescam": pgc.HiResCAM,
    "layercam": pgc.LayerCAM,
    "eigencam": pgc.EigenCAM,
}


def photos(batch: int, size: tuple[int, int]) -> torch.Tensor:
    names = list(SAMPLES)
    return torch.stack([load_image(names[i % len(names)], size)[0] for i in range(batch)])


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def cases(net, spec, x, targets, steps, samples, chunk, references):
    """(name, our options, Captum callable on ``net``) for every gradient method."""
    rewritten = relu6_as_relu(net)  # Captum's rectifier rules hook nn.ReLU only
    layer = net.get_submodule("classifier." + spec.cam_layer)
    t = targets.tolist()
    batch = x.shape[0]
    sigma = float((x.max() - x.min()) * 0.15)

    def captum_cam():
        cam = LayerGradCam(net, layer).attribute(x, target=t, relu_attributions=True)
        return LayerAttribution.interpolate(cam, tuple(x.shape[2:]), "bilinear")

    def noise_tunnel(kind):
        return lambda: NoiseTunnel(Saliency(net)).attribute(
            x, nt_type=kind, nt_samples=samples, nt_samples_batch_size=max(1, chunk // batch),
            stdevs=sigma, target=t, abs=False,
        )  # fmt: skip

    sampled = {"samples": samples, "batch_size": max(1, chunk // batch) * batch}
    return [
        ("saliency", {}, lambda: Saliency(net).attribute(x, target=t, abs=False)),
        ("gradient_x_input", {}, lambda: InputXGradient(net).attribute(x, target=t)),
        (
            "integrated_gradients",
            {"steps": steps, "internal_batch_size": chunk},
            lambda: IntegratedGradients(net).attribute(
                x, target=t, n_steps=steps, internal_batch_size=chunk
            ),
        ),
        ("smoothgrad", sampled, noise_tunnel("smoothgrad")),
        ("smoothgrad_sq", sampled, noise_tunnel("smoothgrad_sq")),
        ("vargrad", sampled, noise_tunnel("vargrad")),
        (
            # No Captum equivalent; the reference is Captum IG with the same number of passes.
            "smoothgrad_ig",
            {"steps": steps, "samples": max(2, samples // 4), "internal_batch_size": chunk},
            lambda: IntegratedGradients(net).attribute(
                x,
                target=t,
                n_steps=steps * max(2, samples // 4),
                method="riemann_right",
                internal_batch_size=chunk,
            ),
        ),
        (
            "expected_gradients",
            {"samples": samples, "internal_batch_size": chunk},
            lambda: GradientShap(net).attribute(
                x, baselines=references, target=t, n_samples=samples, stdevs=0.0
            ),
        ),
        ("guided_backprop", {}, lambda: GuidedBackprop(rewritten).attribute(x, target=t)),
        ("deconvolution", {}, lambda: Deconvolution(rewritten).attribute(x, target=t)),
        ("gradcam", {}, captum_cam),
        (
            "guided_gradcam",
            {},
            lambda: GuidedGradCam(
                rewritten, rewritten.get_submodule("classifier." + spec.cam_layer)
            ).attribute(x, target=t, interpolate_mode="bilinear"),
        ),
    ]


def same_draws(method, reference, x: torch.Tensor, samples: int):
    """(ours, reference) results with ours given the reference's random draws: Captum's
    NoiseTunnel draws torch.normal(0, σ) for all B·n rows at once; GradientShap draws the
    reference indices (np.random.choice), then α (np.random.uniform). None where the method
    draws nothing of Captum's (SmoothGrad-IG has no Captum equivalent)."""
    torch.manual_seed(0), np.random.seed(0)
    expected = reference()
    torch.manual_seed(0), np.random.seed(0)
    if isinstance(method, OurNoiseTunnel):
        sigma = float((x.max() - x.min()) * 0.15)
        method.noise = torch.normal(0, torch.full((x.shape[0] * samples, *x.shape[1:]), sigma))
    elif isinstance(method, ExpectedGradients):
        rows = x.shape[0] * samples
        index = np.random.choice(method.references.shape[0], rows)
        alpha = np.random.uniform(0.0, 1.0, rows)
        method.draws = (torch.tensor(index), torch.tensor(alpha, dtype=x.dtype))
    return expected


def relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    return float((ours - reference).detach().abs().max() / reference.detach().abs().max())


def their_cam(cam_class, net, layer, x, targets):
    """pytorch-grad-cam's whole call (forward, backward to the input, per-image scaling and
    OpenCV resize), given a leaf that requires a gradient (the weights are frozen)."""
    cam = cam_class(model=net, target_layers=[layer])
    leaf = x.clone().requires_grad_(True)
    return cam(input_tensor=leaf, targets=[ClassifierOutputTarget(t) for t in targets.tolist()])


def their_layer_map(cam_class, net, layer, x, targets) -> torch.Tensor:
    """pytorch-grad-cam's map at the layer's resolution before its ReLU and scaling
    (tests/test_cam.py's reference), for the error column."""
    cam = cam_class(model=net, target_layers=[layer])
    wanted = [ClassifierOutputTarget(t) for t in targets.tolist()]
    leaf = x.clone().requires_grad_(True)
    outputs = cam.activations_and_grads(leaf)
    if cam.uses_gradients:
        sum(t(o) for t, o in zip(wanted, outputs, strict=True)).backward()
    activations = cam.activations_and_grads.activations[0].numpy()
    gradients = cam.activations_and_grads.gradients[0].numpy() if cam.uses_gradients else None
    result = cam.get_cam_image(leaf.detach(), layer, wanted, activations, gradients, False)
    cam.activations_and_grads.release()
    return torch.from_numpy(result)


def float64_error(our_class, cam_class, user, path, x, targets) -> float:
    """``err`` with both sides on a float64 copy of the user's model: what remains once
    float32's rounding is gone (XGrad-CAM divides by channel sums near zero at some layers,
    where float32 is ~1e-4 off the formula on either side)."""
    net = copy.deepcopy(user).double()
    mine = our_class(net, "classifier." + path, relu=False).layer_map(x.double(), targets)[:, 0]
    theirs = their_layer_map(cam_class, net, net.get_submodule("classifier." + path), x.double(),
                             targets)  # fmt: skip
    if our_class.__name__ == "EigenCAM":
        theirs = oriented_like(mine, theirs)
    return relative_error(mine, theirs)


def oriented_like(mine: torch.Tensor, theirs: torch.Tensor) -> torch.Tensor:
    """pytorch-grad-cam's EigenCAM with its sign turned to ours: an SVD's sign is open, and ours
    sums its weights to >= 0."""
    return theirs * torch.sign((theirs * mine).sum((1, 2), keepdim=True))


def interleaved(ours_fn, reference, repeats: int, device: torch.device) -> tuple[float, float]:
    """Median seconds of ours and of the reference, alternating which goes first."""
    ours_fn(), reference()  # warm-up
    ours_times, reference_times = [], []
    for r in range(repeats):
        pair = [(ours_times, ours_fn), (reference_times, reference)]
        for store, fn in pair if r % 2 == 0 else reversed(pair):
            store.append(timed(fn, device))
    return statistics.median(ours_times), statistics.median(reference_times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--weights", default=None)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--steps", type=int, default=None, help="IG steps (default 50 GPU, 8 CPU)")
    parser.add_argument("--samples", type=int, default=None, help="noise samples (25 GPU, 4 CPU)")
    parser.add_argument("--chunk", type=int, default=64, help="rows per pass for both libraries")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (both sides)")
    parser.add_argument("--methods", nargs="*", default=None)
    args = parser.parse_args()
    keep_freed_memory()
    torch.set_num_threads(args.threads)

    device = torch.device(args.device)
    gpu = device.type == "cuda"
    steps = args.steps or (50 if gpu else 8)
    samples = args.samples or (25 if gpu else 4)
    model = load_model(args.model, args.weights, device)  # the engine's, in its chosen layout
    user = copy.deepcopy(model.module).to(memory_format=torch.contiguous_format)
    size = model.spec.input_size
    references = reference_set("samples", size).to(device)
    cam_path = CAM_LAYERS.get(args.model, model.spec.cam_layer)
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    print(f"# {args.model} on {device} ({torch.cuda.get_device_name(device) if gpu else 'CPU'}), "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, input {size}, "
          f"IG steps {steps}, noise samples {samples}, chunk {args.chunk} rows, "
          f"median of {args.repeats}; ours in {memory_format(model.module)}, the references "
          f"on the contiguous model; CAM layer {cam_path}; load average {load}")  # fmt: skip
    header = f"{'method':<22}{'batch':>6}{'ours s':>10}{'ref s':>10}{'ratio':>8}"
    print(f"{header}{'err':>10}{'err/user':>10}{'err f64':>10}  reference")
    for batch in args.batches:
        x = photos(batch, size).to(device)
        targets = model.module(x).argmax(1)
        ctx = MethodContext(
            model.module, model.spec, size, model.spec.cam_layer, device, seed=0,
            extras={"references": references}, named_model=model.classifier,
        )  # fmt: skip
        timed_cases = cases(user, model.spec, x, targets, steps, samples, args.chunk, references)
        same_model = cases(model.module, model.spec, x, targets, steps, samples, args.chunk,
                           references)  # fmt: skip
        for (name, options, reference), (_, _, on_ours) in zip(timed_cases, same_model,
                                                               strict=True):  # fmt: skip
            if args.methods and name not in args.methods:
                continue
            method = get_method(name).build(ctx, get_method(name).parse_options(options))
            errors = "         –         –         –"
            if name != "smoothgrad_ig":
                expected = same_draws(method, on_ours, x, samples)
                result = method.attribute(x, targets)
                on_user = same_draws(method, reference, x, samples)
                errors = (f"{relative_error(result, expected):>10.1e}"
                          f"{relative_error(result, on_user):>10.1e}         –")  # fmt: skip
            if isinstance(method, OurNoiseTunnel):  # timed with its own draws again
                method.noise = None
            if isinstance(method, ExpectedGradients):
                method.draws = None
            ours_s, ref_s = interleaved(lambda m=method, x=x, t=targets: m.attribute(x, t),
                                        reference, args.repeats, device)  # fmt: skip
            print(f"{name:<22}{batch:>6}{ours_s:>10.4f}{ref_s:>10.4f}{ours_s / ref_s:>8.2f}"
                  f"{errors}  Captum", flush=True)  # fmt: skip
        for name, cam_class in CAMS.items():
            if args.methods and name not in args.methods:
                continue
            options = get_method(name).parse_options({"layer": cam_path})
            method = get_method(name).build(ctx, options)
            assert isinstance(method, CAM)
            ours_map = type(method)(model.module, "classifier." + cam_path, relu=False)
            mine = ours_map.layer_map(x, targets)[:, 0]
            theirs = their_layer_map(cam_class, model.module,
                                     model.module.get_submodule("classifier." + cam_path), x,
                                     targets)  # fmt: skip
            theirs_user = their_layer_map(cam_class, user,
                                          user.get_submodule("classifier." + cam_path), x,
                                          targets)  # fmt: skip
            if name == "eigencam":
                theirs, theirs_user = oriented_like(mine, theirs), oriented_like(mine, theirs_user)
            exact = float64_error(type(method), cam_class, user, cam_path, x, targets)
            errors = (f"{relative_error(mine, theirs):>10.1e}"
                      f"{relative_error(mine, theirs_user):>10.1e}{exact:>10.1e}")  # fmt: skip
            layer = user.get_submodule("classifier." + cam_path)
            ours_s, ref_s = interleaved(
                lambda m=method, x=x, t=targets: m.attribute(x, t),
                lambda c=cam_class, layer=layer, x=x, t=targets: their_cam(c, user, layer, x, t),
                args.repeats, device,
            )  # fmt: skip
            print(f"{name:<22}{batch:>6}{ours_s:>10.4f}{ref_s:>10.4f}{ours_s / ref_s:>8.2f}"
                  f"{errors}  pytorch-grad-cam", flush=True)  # fmt: skip
        print()


if __name__ == "__main__":
    warnings.filterwarnings("ignore", category=UserWarning, module="captum")
    main()
