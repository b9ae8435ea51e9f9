"""The gradient seeds on the digits test bed: every gradient method with and without each add-on
(patterns, CriGrad, GAD), judged by degradation, pixel perturbation, Sensitivity-n, ROAR/KAR and
GAD's RC/RS.

    python -m benchmarks.seed_gradients [--size 24] [--seed 0] [--pair 3 8] [--skip-roar]

Test bed: scikit-learn digits upsampled to size×size, a DigitsCNN trained with a fixed seed,
patterns estimated on the training split, a GAD support set (α = 2, 4, 6, 8, 10 epochs, Adam lr
4e-5) for one class pair. The metric tables use every test image, except the GAD rows and their
"(pair)" reference rows, which use the test images of the pair. Heat maps: signed channel sum for
degradation (pgig) and Sensitivity-n (sums of attributions), Σ|·| for pixel perturbation, ROAR
and GAD. Time ratios compare an add-on with its base method in the same run (same batch).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from engine.addons.gad import train_support_set
from engine.addons.pattern import estimate_patterns
from engine.explain import attribute
from engine.kinds import reduce_channels
from engine.metrics.gad import gad_scores, important_pixels
from engine.metrics.perturbation import (
    degradation_curve,
    normalised_auc,
    pixel_perturbation,
    sensitivity_grid,
    sensitivity_n,
)
from engine.metrics.roar import roar
from engine.models.digits import DigitsCNN, accuracy, load_digits_data, train_classifier
from engine.runtime import keep_freed_memory

BASES = ("saliency", "gradient_x_input", "integrated_gradients", "smoothgrad",
         "guided_backprop", "deconvolution")  # fmt: skip
GAD_BASES = ("saliency", "deconvolution", "gradient_x_input", "guided_backprop",
             "integrated_gradients")  # fmt: skip
SHORT = {"saliency": "S", "gradient_x_input": "GxI", "integrated_gradients": "IG",
         "smoothgrad": "SG", "guided_backprop": "GB", "deconvolution": "D"}  # fmt: skip


def rows(pair_only: bool) -> list[tuple[str, str, dict]]:
    """(label, method, options) of every table row."""
    if pair_only:
        found = []
        for base in GAD_BASES:
            found.append((f"{SHORT[base]} (pair)", base, {}))
            found.append((f"GAD({SHORT[base]})", "gad", {"base": base}))
        return found
    found = [("random", "random", {})]
    for base in BASES:
        found.append((SHORT[base], base, {}))
        found.append((f"CriGrad({SHORT[base]})", "crigrad", {"base": base}))
    found += [("PatternNet", "pattern_net", {}), ("PatternAttribution", "pattern_attribution", {}),
              ("PGIG", "pattern_guided_ig", {})]  # fmt: skip
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pair", type=int, nargs=2, default=(3, 8))
    parser.add_argument("--patch", type=int, default=6, help="degradation/Sensitivity-n patch")
    parser.add_argument("--sn-images", type=int, default=100, help="images for Sensitivity-n")
    parser.add_argument("--subsets", type=int, default=50, help="Sensitivity-n subsets per n")
    parser.add_argument("--roar-epochs", type=int, default=10)
    parser.add_argument("--skip-roar", action="store_true")
    args = parser.parse_args()
    keep_freed_memory()
    torch.set_num_threads(max(1, torch.get_num_threads()))

    started = time.perf_counter()
    data = load_digits_data(seed=args.seed, size=args.size)
    torch.manual_seed(args.seed)
    model = train_classifier(DigitsCNN(), data.train_x, data.train_y, seed=args.seed)
    model.requires_grad_(False)
    test_accuracy = accuracy(model, data.test_x, data.test_y)
    print(f"# digits at {args.size}×{args.size}: {len(data.train_y)} train / {len(data.test_y)} "
          f"test; DigitsCNN test accuracy {test_accuracy:.4f}")  # fmt: skip
    tick = time.perf_counter()
    patterns = estimate_patterns(model, data.train_x.split(256), model_name="digits")
    print(f"# patterns of {len(patterns.patterns)} layers in {time.perf_counter() - tick:.2f} s "
          f"({', '.join(f'{k}: {v}' for k, v in patterns.layer_estimators.items())})")  # fmt: skip
    tick = time.perf_counter()
    support = train_support_set(model, data.train_x, data.train_y, tuple(args.pair),
                                seed=args.seed)  # fmt: skip
    print(
        f"# GAD support set {tuple(args.pair)} in {time.perf_counter() - tick:.1f} s; final MSE "
        + ", ".join(
            f"α={a:g}: {h[-1]:.3f}" for a, h in zip(support.alphas, support.losses, strict=True)
        )
    )
    extras = {"patterns": patterns, "support_set": support}

    x_all, y_all = data.test_x, data.test_y
    attribute(model, x_all, "saliency")  # warm-up, so the first timed method pays no start cost
    in_pair = (y_all == args.pair[0]) | (y_all == args.pair[1])
    generator = torch.Generator().manual_seed(args.seed)

    def attributions(method, options, x, targets):
        if method == "random":
            return torch.rand(x.shape, generator=generator), 0.0
        tick = time.perf_counter()
        result = attribute(model, x, method, options, targets=targets, seed=args.seed,
                           extras=extras)  # fmt: skip
        return result, time.perf_counter() - tick

    height = args.size
    features = (height // args.patch) ** 2
    grid = sensitivity_grid(features, points=6)
    times: dict[str, float] = {}
    pair_maps: dict[str, torch.Tensor] = {}  # the pair rows' attributions, reused for RC/RS
    header = (f"{'method':<22} {'MoRF AUC':>9} {'LeRF AUC':>9} "
              + " ".join(f"PP{k:>4g}%" for k in (1, 5, 10, 25, 50))
              + " " + " ".join(f"SN n={n:<4d}" for n in grid))  # fmt: skip
    print("\n## Degradation (patch means, all patches; MoRF lower / LeRF higher is better), pixel "
          "perturbation (fractional logit change, k% least salient → image mean; lower is "
          f"better), Sensitivity-n ({args.patch}×{args.patch} features, {args.subsets} subsets, "
          f"first {args.sn_images} images, Pearson r; higher is better)")  # fmt: skip
    print(header)
    for pair_only in (False, True):
        x, y = (x_all[in_pair], y_all[in_pair]) if pair_only else (x_all, y_all)
        targets = y if pair_only else model(x).argmax(1)  # GAD explains a class of its pair
        for label, method, options in rows(pair_only):
            attribution, seconds = attributions(method, options, x, targets)
            times[label] = seconds
            if pair_only:
                pair_maps[label] = attribution
            signed = reduce_channels(attribution, "signed_sum")
            absolute = reduce_channels(attribution, "abs_sum")
            morf, lerf = (
                normalised_auc(degradation_curve(model, x, targets, signed, patch=args.patch,
                                                 order=order)).mean()
                for order in ("morf", "lerf")
            )  # fmt: skip
            pp = [pixel_perturbation(model, x, targets, absolute, fraction=k / 100).mean()
                  for k in (1, 5, 10, 25, 50)]  # fmt: skip
            few = slice(0, args.sn_images)
            sn = sensitivity_n(model, x[few], targets[few], signed[few], grid,
                               subsets=args.subsets, patch=args.patch,
                               seed=args.seed).mean(0)  # fmt: skip
            print(f"{label:<22} {morf:9.4f} {lerf:9.4f} "
                  + " ".join(f"{v:7.4f}" for v in pp) + " "
                  + " ".join(f"{v:9.4f}" for v in sn.tolist()))  # fmt: skip

    print("\n## Cost of the add-ons: time of the add-on / time of its base method (same images)")
    for label in times:
        for base in SHORT.values():
            if label in (f"CriGrad({base})", f"GAD({base})") and times.get(base):
                reference = times[base if label.startswith("CriGrad") else f"{base} (pair)"]
                print(f"  {label:<20} {times[label] / reference:6.2f}×")
    print(f"  {'PatternAttribution':<20} {times['PatternAttribution'] / times['S']:6.2f}× (vs S)")
    print(f"  {'PGIG':<20} {times['PGIG'] / times['IG']:6.2f}× (vs IG)")

    print(
        f"\n## GAD: RC = hull area GAD / original (top 50% pixels), class pair {tuple(args.pair)}"
    )
    print("   paper (VGG Cat×Dog, GAD wins per class of 256): D 512/512, GxI 490/494, GB 427/428,"
          " IG 480/486; S mixed")  # fmt: skip
    print(f"{'base':<6} {'class':>5} {'RC<1':>6} {'RC=1':>6} {'RC>1':>6} {'degen':>6} "
          f"{'RS(sup)':>9} {'RS(GAD)':>9} {'RS ratio':>9}")  # fmt: skip
    x, y = x_all[in_pair], y_all[in_pair]
    targets = y
    for base in GAD_BASES:
        kept_original = important_pixels(pair_maps[f"{SHORT[base]} (pair)"].abs().sum(1))
        kept_gad = pair_maps[f"GAD({SHORT[base]})"].abs().sum(1) > 0  # ⊆ kept_original
        scores = gad_scores(model, x, targets, kept_gad, kept_original)
        for cls in args.pair:
            chosen = (y == cls) & (scores["gad_hull_degenerate"] == 0)
            rc = scores["gad_rc"][chosen]
            rs_sup = scores["gad_rs_supplementary"][chosen].mean()
            rs_gad = scores["gad_rs"][chosen].mean()
            degenerate = int(((y == cls) & (scores["gad_hull_degenerate"] == 1)).sum())
            print(f"{SHORT[base]:<6} {cls:>5} {int((rc < 1).sum()):6d} {int((rc == 1).sum()):6d} "
                  f"{int((rc > 1).sum()):6d} {degenerate:6d} {rs_sup:9.4f} {rs_gad:9.4f} "
                  f"{rs_gad / max(float(rs_sup), 1e-12):9.2f}")  # fmt: skip

    if not args.skip_roar:
        fractions = (0.1, 0.3, 0.5, 0.7, 0.9)
        print(f"\n## ROAR / KAR on digits: test accuracy after retraining ({args.roar_epochs} "
              "epochs) with the top-t pixels removed (ROAR, lower is better) or kept (KAR, "
              "higher is better); one run per t")  # fmt: skip
        print(f"{'method':<22} " + " ".join(f"ROAR{t:>4.0%}" for t in fractions) + "  "
              + " ".join(f"KAR{t:>5.0%}" for t in fractions))  # fmt: skip

        def train(images, labels):
            torch.manual_seed(args.seed)
            return train_classifier(DigitsCNN(), images, labels, epochs=args.roar_epochs,
                                    seed=args.seed)  # fmt: skip

        chosen_rows = [("random", "random", {}), ("S", "saliency", {}),
                       ("GxI", "gradient_x_input", {}), ("IG", "integrated_gradients", {}),
                       ("CriGrad(S)", "crigrad", {"base": "saliency"}),
                       ("CriGrad(GxI)", "crigrad", {"base": "gradient_x_input"}),
                       ("PatternAttribution", "pattern_attribution", {}),
                       ("PGIG", "pattern_guided_ig", {})]  # fmt: skip
        for label, method, options in chosen_rows:

            def heat(images, labels, method=method, options=options):
                return reduce_channels(attributions(method, options, images, labels)[0], "abs_sum")

            train_set, test_set = (data.train_x, data.train_y), (data.test_x, data.test_y)
            removed = roar(train_set, test_set, heat, train, fractions)
            kept = roar(train_set, test_set, heat, train, fractions, keep=True)
            print(f"{label:<22} " + " ".join(f"{removed[t]:8.4f}" for t in fractions) + "  "
                  + " ".join(f"{kept[t]:8.4f}" for t in fractions), flush=True)  # fmt: skip
    print(f"\n# total {time.perf_counter() - started:.0f} s on {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, {np.__name__} {np.__version__}")  # fmt: skip


if __name__ == "__main__":
    main()
