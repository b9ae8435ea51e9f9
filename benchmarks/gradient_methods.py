"""Speed of every gradient method against Captum on the same model, input and device, in one run.

Prints, per method and batch size, the median time of ours, of Captum's equivalent, and the
ratio ours/Captum (≤ 1.0 means we are as fast or faster). Both sides get identical settings
(steps, samples, chunk sizes), the same photographs, and alternate in order to share any drift.

    python -m benchmarks.gradient_methods [--device cuda] [--batches 1 16] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

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

from engine.catalogue import get_method
from engine.data import SAMPLES, load_image, reference_set
from engine.method import MethodContext
from engine.models import load_model
from engine.runtime import keep_freed_memory
from testkit.captum import relu6_as_relu


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


def cases(model, x, targets, steps, samples, chunk, references):
    """(name, our options, Captum callable) for every method."""
    net = model.module
    rewritten = relu6_as_relu(net)  # Captum's rectifier rules hook nn.ReLU only
    layer = model.classifier.get_submodule(model.spec.cam_layer)
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
                rewritten, rewritten.get_submodule("classifier." + model.spec.cam_layer)
            ).attribute(x, target=t, interpolate_mode="bilinear"),
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--weights", default=None)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--steps", type=int, default=None, help="IG steps (default 50 GPU, 8 CPU)")
    parser.add_argument("--samples", type=int, default=None, help="noise samples (25 GPU, 4 CPU)")
    parser.add_argument("--chunk", type=int, default=64, help="rows per pass for both libraries")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--methods", nargs="*", default=None)
    args = parser.parse_args()
    keep_freed_memory()

    device = torch.device(args.device)
    gpu = device.type == "cuda"
    steps = args.steps or (50 if gpu else 8)
    samples = args.samples or (25 if gpu else 4)
    model = load_model(args.model, args.weights, device)
    size = model.spec.input_size
    references = reference_set("samples", size).to(device)
    print(f"# {args.model} on {device} ({torch.cuda.get_device_name(device) if gpu else 'CPU'}), "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, input {size}, "
          f"IG steps {steps}, noise samples {samples}, chunk {args.chunk} rows, "
          f"median of {args.repeats}")  # fmt: skip
    print(f"{'method':<22}{'batch':>6}{'ours s':>10}{'captum s':>10}{'ratio':>8}")
    for batch in args.batches:
        x = photos(batch, size).to(device)
        targets = model.module(x).argmax(1)
        for name, options, reference in cases(
            model, x, targets, steps, samples, args.chunk, references
        ):
            if args.methods and name not in args.methods:
                continue
            spec = get_method(name)
            parsed = spec.parse_options(options)
            ctx = MethodContext(
                model.module, model.spec, size, model.spec.cam_layer, device, seed=0,
                extras={"references": references}, named_model=model.classifier,
            )  # fmt: skip
            method = spec.build(ctx, parsed)
            ours_fn = lambda method=method, x=x, targets=targets: method.attribute(x, targets)  # noqa: E731
            ours_fn(), reference()  # warm-up
            ours_times, captum_times = [], []
            for r in range(args.repeats):
                pair = [(ours_times, ours_fn), (captum_times, reference)]
                for store, fn in pair if r % 2 == 0 else reversed(pair):
                    store.append(timed(fn, device))
            ours_s, captum_s = statistics.median(ours_times), statistics.median(captum_times)
            print(f"{name:<22}{batch:>6}{ours_s:>10.4f}{captum_s:>10.4f}{ours_s / captum_s:>8.2f}",
                  flush=True)  # fmt: skip


if __name__ == "__main__":
    warnings.filterwarnings("ignore", category=UserWarning, module="captum")
    main()
