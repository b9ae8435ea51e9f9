"""Command line: ``python -m engine explain|methods|models``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from engine.addons.gad.support import DEFAULT_ALPHAS
from engine.catalogue import all_methods
from engine.data import InputError
from engine.method import MethodError, OptionsError
from engine.metrics.base import MetricError
from engine.models import MODELS, ModelError
from engine.models.spec import class_number
from engine.runtime import keep_freed_memory


def parse_option(text: str) -> tuple[list[str], Any]:
    """``key=value`` (value parsed as JSON when it parses, else kept as text); ``a.b=v`` nests."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise OptionsError(f"option {text!r} is not key=value")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.split("."), value


def metric_from_arg(text: str) -> str | dict[str, Any]:
    """``name`` or ``name:key=value,key=value`` → a metric request."""
    name, _, parameters = text.partition(":")
    if not parameters:
        return name
    return {"name": name, **options_from_args(parameters.split(","))}


def options_from_args(pairs: list[str]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for pair in pairs:
        path, value = parse_option(pair)
        node = options
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return options


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m engine", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("explain", help="explain one image and write its artifacts")
    run.add_argument(
        "image", help="a sample name (e.g. chelsea) or an image file; for a series model "
        "(--model FILE.pt) a time × features .npy or .csv file",
    )  # fmt: skip
    run.add_argument("--model", default="efficientnet_lite0", help="model name or config file")
    run.add_argument("--weights", help="weights file (torchvision models), or random[:SEED]")
    run.add_argument("--method", required=True, help="see `python -m engine methods`")
    run.add_argument(
        "--option", "-o", action="append", default=[], metavar="KEY=VALUE",
        help="method option, repeatable; VALUE is JSON or text; nested: smoothing.samples=10",
    )  # fmt: skip
    run.add_argument(
        "--metric", "-m", action="append", default=[], metavar="NAME[:KEY=VALUE,...]",
        help="quality metric, repeatable, e.g. hallucination or faithfulness:steps=11 "
        "(see `python -m engine metrics`)",
    )  # fmt: skip
    run.add_argument("--init", help="mask initialisation (mask methods; = -o init=...)")
    run.add_argument("--iterations", type=int, help="mask iterations (= -o iterations=N)")
    run.add_argument("--target", help="class index or label (default: the predicted class)")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    run.add_argument("--resize", default="center_crop", choices=["center_crop", "resize", "none"])
    run.add_argument("--out", required=True, help="output folder")
    run.add_argument("--quiet", action="store_true", help="no progress bar")

    train = sub.add_parser(
        "train-series", help="train a GRU/LSTM on a synthetic time-series dataset and save it"
    )
    train.add_argument("--dataset", default="state", choices=["state", "switch_feature"])
    train.add_argument("--cell", default="gru", choices=["gru", "lstm"])
    train.add_argument("--series", type=int, default=1000, help="dataset size (5 folds)")
    train.add_argument("--length", type=int, default=200, help="time steps per series")
    train.add_argument("--hidden", type=int, default=200)
    train.add_argument("--epochs", type=int, default=50)
    train.add_argument("--learning-rate", type=float, default=1e-4)
    train.add_argument("--seed", type=int, default=0, help="data, fold and training seed")
    train.add_argument("--fold", type=int, default=0, help="which of the 5 folds is the test set")
    train.add_argument(
        "--export", type=int, default=0, metavar="N",
        help="also write N test series (series_i.npy, truth_i.npy) next to --out",
    )  # fmt: skip
    train.add_argument("--out", required=True, help="model file (.pt); a .json record beside it")

    patterns = sub.add_parser(
        "estimate-patterns",
        help="estimate PatternNet/PatternAttribution patterns of a model from a folder of images",
    )
    patterns.add_argument("images", help="folder of PNG/JPEG/WebP images (training-like data)")
    _model_arguments(patterns)
    patterns.add_argument("--estimator", default="two_component",
                          choices=["two_component", "linear"])  # fmt: skip
    patterns.add_argument("--out", help="pattern file (default: the cache, found automatically)")

    gad = sub.add_parser(
        "train-gad", help="train GAD support networks for a class pair from two image folders"
    )
    _model_arguments(gad)
    for side in ("a", "b"):
        gad.add_argument(f"--class-{side}", required=True, help="class label or index")
        gad.add_argument(f"--images-{side}", required=True, help="folder of that class's images")
    gad.add_argument(
        "--alphas",
        default=",".join(f"{a:g}" for a in DEFAULT_ALPHAS),
        help="logit offsets, one network each",
    )
    gad.add_argument("--epochs", type=int, default=10)
    gad.add_argument("--learning-rate", type=float, default=4e-5)
    gad.add_argument("--seed", type=int, default=0)
    gad.add_argument("--out", help="support set file (default: the cache, found automatically)")

    for name in ("methods", "models", "metrics"):
        listing = sub.add_parser(name, help=f"list {name}")
        listing.add_argument("--json", action="store_true", help="machine-readable output")
    return parser


def _model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="efficientnet_lite0", help="model name or config file")
    parser.add_argument("--weights", help="weights file (torchvision models)")
    parser.add_argument("--image-size", type=int, help="square input size (default: the model's)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="cpu")


def _load_for_training(args: argparse.Namespace):
    """The loaded model and the square image size (h, w) the command works at."""
    from engine.models import load_model

    loaded = load_model(args.model, args.weights, args.device)
    if loaded.spec.input_kind != "image":
        raise OptionsError(f"{args.model} is not an image model")
    size = (args.image_size,) * 2 if args.image_size else loaded.spec.input_size
    return loaded, size


def command_estimate_patterns(args: argparse.Namespace) -> int:
    from engine.addons.pattern import default_pattern_path, estimate_patterns
    from engine.data import image_batches, image_files

    loaded, size = _load_for_training(args)
    files = image_files(args.images)
    batches = (b.to(loaded.device) for b in image_batches(files, size, args.batch_size))
    progress, close = _progress_bar(sys.stderr.isatty())
    try:
        patterns = estimate_patterns(loaded.module, batches, model_name=loaded.spec.name,
                                     estimator=args.estimator, progress=progress,
                                     total=len(files))  # fmt: skip
    finally:
        close()
    patterns.source = f"{args.images} ({len(files)} images at {size[0]}×{size[1]})"
    path = patterns.save(args.out or default_pattern_path(patterns.fingerprint))
    print(f"patterns of {len(patterns.patterns)} layers of {loaded.spec.name} from "
          f"{patterns.samples} images; saved {path}")  # fmt: skip
    return 0


def command_train_gad(args: argparse.Namespace) -> int:
    import torch

    from engine.addons.gad import train_support_set
    from engine.data import image_batches, image_files

    loaded, size = _load_for_training(args)
    classes = (loaded.spec.class_index(args.class_a), loaded.spec.class_index(args.class_b))
    images, labels = [], []
    for cls, folder in zip(classes, (args.images_a, args.images_b), strict=True):
        files = image_files(folder)
        images.append(torch.cat(list(image_batches(files, size, args.batch_size))))
        labels.append(torch.full((len(files),), cls, dtype=torch.long))
    try:
        alphas = tuple(float(a) for a in args.alphas.split(","))
    except ValueError:
        raise OptionsError(
            f"--alphas must be numbers separated by commas: {args.alphas!r}"
        ) from None
    progress, close = _progress_bar(sys.stderr.isatty())
    try:
        support = train_support_set(
            loaded.module, torch.cat(images).to(loaded.device), torch.cat(labels).to(loaded.device),
            classes, alphas=alphas, epochs=args.epochs, lr=args.learning_rate,
            batch_size=args.batch_size, seed=args.seed, model_name=loaded.spec.name,
            progress=progress,
        )  # fmt: skip
    finally:
        close()
    path = support.save(args.out)
    for alpha, losses in zip(support.alphas, support.losses, strict=True):
        print(f"  α={alpha:g}: MSE {losses[0]:.4g} → {losses[-1]:.4g} over {len(losses)} epochs")
    print(f"GAD support set for classes {classes} of {loaded.spec.name}; saved {path}")
    return 0


def _progress_bar(enabled: bool):
    if not enabled:
        return None, lambda: None
    from tqdm import tqdm

    bar = tqdm(total=0, unit="pass", file=sys.stderr, leave=False)

    def update(done: int, total: int, **values: float) -> None:
        bar.total = total
        bar.n = done
        if values:
            bar.set_postfix({k: f"{v:.3g}" for k, v in values.items()}, refresh=False)
        bar.refresh()

    return update, bar.close


def command_explain(args: argparse.Namespace) -> int:
    from engine.artifacts import write_artifacts
    from engine.explain import explain

    target: int | str | None = args.target
    if target is not None and (number := class_number(target)) is not None:
        target = number
    options = options_from_args(args.option)
    for name in ("init", "iterations"):
        if getattr(args, name) is not None:
            options[name] = getattr(args, name)
    metrics = [metric_from_arg(text) for text in args.metric]
    progress, close = _progress_bar(not args.quiet and sys.stderr.isatty())
    try:
        result = explain(
            args.model,
            args.image,
            args.method,
            options,
            target=target,
            seed=args.seed,
            device=args.device,
            weights=args.weights,
            resize=args.resize,
            progress=progress,
            metrics=metrics,
        )
    finally:
        close()
    paths = write_artifacts(result, args.out)
    p = result.predictions[0]
    print(
        f"{result.method} on {result.model}: predicted {p.label} ({p.class_index}) "
        f"p={p.probability:.3f}; explained {p.target_label} ({p.target})"
    )
    summary = result.summary()
    for name, value in summary["scores"].items():
        why = summary["undefined_scores"].get(name)
        print(f"  {name}: {value:.6g}" if why is None else f"  {name}: undefined ({why})")
    print(f"  took {result.metadata['timings']['attribute_s']:.2f} s; wrote {len(paths)} files "
          f"to {args.out}")  # fmt: skip
    return 0


def command_train_series(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from engine.data.timeseries import DATASETS
    from engine.models.series import (
        SeriesClassifier,
        TrainingSettings,
        save_classifier,
        step_accuracy,
        train_classifier,
        training_record,
    )

    if not args.out.endswith(".pt"):
        raise OptionsError("--out must name a .pt file")
    data = DATASETS[args.dataset](args.series, args.length, args.seed)
    train_index, test_index = data.folds()[args.fold]
    train, test = data.subset(train_index), data.subset(test_index)
    settings = TrainingSettings(args.epochs, args.learning_rate, seed=args.seed)
    torch.manual_seed(args.seed)  # the initial weights
    model = SeriesClassifier(args.cell, data.x.shape[-1], args.hidden)
    progress, close = _progress_bar(sys.stderr.isatty())
    try:
        train_classifier(model, train.x, train.y, settings, progress)
    finally:
        close()
    accuracy = step_accuracy(model, test.x, test.y)
    record = training_record(data, settings, accuracy, cell=args.cell, hidden=args.hidden,
                             fold=args.fold, command=" ".join(sys.argv))  # fmt: skip
    save_classifier(model, args.out, record)
    folder = Path(args.out).parent
    for i in range(min(args.export, len(test.x))):
        np.save(folder / f"series_{i}.npy", test.x[i].numpy())
        np.save(folder / f"truth_{i}.npy", test.truth[i].numpy())
    print(f"{args.cell.upper()} on {args.dataset} ({len(train.x)} train / {len(test.x)} test "
          f"series of {args.length} steps): test step accuracy {accuracy:.4f}")  # fmt: skip
    print(f"saved {args.out}")
    return 0


def command_methods(args: argparse.Namespace) -> int:
    methods = [m.describe() for m in all_methods()]
    if args.json:
        print(json.dumps(methods, indent=2))
        return 0
    for method in methods:
        print(f"{method['name']:<22} {method['family']:<9} {method['summary']}")
        _print_options(method["options_schema"])
    return 0


def _print_options(schema: dict[str, Any]) -> None:
    for field, entry in schema.get("properties", {}).items():
        default = json.dumps(entry["default"]) if "default" in entry else "(required)"
        print(f"    {field:<20} default={default}  {entry.get('description', '')}")


def command_models(args: argparse.Namespace) -> int:
    models = [spec.describe() for spec in MODELS.values()]
    if args.json:
        print(json.dumps(models, indent=2))
        return 0
    for model in models:
        print(f"{model['name']:<20} {model['input_kind']:<6} {model['description']}")
    return 0


def command_metrics(args: argparse.Namespace) -> int:
    from engine.catalogue import all_metrics

    metrics = [m.describe() for m in all_metrics()]
    if args.json:
        print(json.dumps(metrics, indent=2))
        return 0
    for metric in metrics:
        print(f"{metric['name']:<22} {metric['summary']}")
        print(f"    keys: {', '.join(metric['keys'])}; definition: {metric['definition']}")
        _print_options(metric["options_schema"])
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    keep_freed_memory()
    handlers = {
        "explain": command_explain,
        "methods": command_methods,
        "models": command_models,
        "metrics": command_metrics,
        "train-series": command_train_series,
        "estimate-patterns": command_estimate_patterns,
        "train-gad": command_train_gad,
    }
    try:
        return handlers[args.command](args)
    except (OptionsError, MethodError, ModelError, InputError, MetricError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
