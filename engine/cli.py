"""Command line: ``python -m engine explain|study|methods|metrics|models|train-series|...``.

Argument parsing imports nothing heavy (``--help`` answers at once); each command imports the
engine when it runs. Every user mistake ends as one line on stderr and exit status 2: the
engine's typed errors (unknown names with the closest ones, bad options, inputs, models) and the
checks this module makes before any model is loaded (device, input file, output folder).
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import sys
from pathlib import Path
from typing import Any, NoReturn

DEFAULT_OUT_ROOT = Path("explanations")  # explain's --out default: explanations/<input>-<method>
DEFAULT_STUDY_ROOT = Path("studies")  # study's --out default: studies/<inputs>-study
SUMMARY_WIDTH = 64  # characters of a method's summary in the one-line listing


class UsageError(Exception):
    """A user's mistake the command line words itself: printed as one line, exit status 2."""


class Parser(argparse.ArgumentParser):
    """argparse, with its own mistakes (a missing or malformed argument) on one line too."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def parse_option(text: str) -> tuple[list[str], Any]:
    """``key=value`` (value parsed as JSON when it parses, else kept as text); ``a.b=v`` nests."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise UsageError(f"option {text!r} is not KEY=VALUE")
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
    """Repeated ``-o key=value`` → the nested options dict."""
    options: dict[str, Any] = {}
    for pair in pairs:
        path, value = parse_option(pair)
        node = options
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UsageError(f"option {'.'.join(path)}: {part} is given a value and nested")
        node[path[-1]] = value
    return options


def build_parser() -> argparse.ArgumentParser:
    """The argument parser: plain argparse, importing nothing of the engine (fast ``--help``)."""
    parser = Parser(prog="python -m engine", description=__doc__.split("\n\n")[0])
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
        help="method option, repeatable; VALUE is JSON or text; nested: smoothing.samples=10 "
        "(`python -m engine methods METHOD` lists a method's options)",
    )  # fmt: skip
    run.add_argument(
        "--metric", "-m", action="append", default=[], metavar="NAME[:KEY=VALUE,...]",
        help="quality metric, repeatable, e.g. hallucination or faithfulness:steps=11 "
        "(see `python -m engine metrics`)",
    )  # fmt: skip
    run.add_argument("--init", help="mask initialisation (mask methods; = -o init=...)")
    run.add_argument("--iterations", type=int, help="mask iterations (= -o iterations=N)")
    run.add_argument("--target", help="class index or label (default: the predicted class)")
    _explain_arguments(run)
    run.add_argument(
        "--out", help=f"output folder (default: {DEFAULT_OUT_ROOT}/<input>-<method> in the "
        "current folder, numbered -2, -3, ... when it exists); an existing folder that holds "
        "files is refused unless --overwrite",
    )  # fmt: skip
    run.add_argument("--overwrite", action="store_true", help="write into a non-empty --out")
    run.add_argument("--quiet", action="store_true", help="no progress bar")

    study = sub.add_parser(
        "study", help="explain a set of inputs with several method variants and compare them: "
        "a ranked table with confidence intervals, figures, every input's files",
    )  # fmt: skip
    study.add_argument(
        "inputs", help="a folder or .zip of images (PNG/JPEG/WebP) or series files (.npy/.csv), "
        "or bundled samples separated by commas (chelsea,coffee,rocket)",
    )  # fmt: skip
    study.add_argument("--model", default="efficientnet_lite0", help="model name or config file")
    study.add_argument("--weights", help="weights file (torchvision models), or random[:SEED]")
    study.add_argument(
        "--variant", action="append", required=True, metavar="METHOD[:KEY=VALUE,...]",
        help="a method with its options, repeatable, e.g. gradcam or shearletx:init=startgrad,"
        "iterations=50 (see `python -m engine methods`); labelled as METHOD[KEY=VALUE,...]",
    )  # fmt: skip
    study.add_argument(
        "--metric", "-m", action="append", default=[], metavar="NAME[:KEY=VALUE,...]",
        help="quality metric, repeatable (see `python -m engine metrics`)",
    )  # fmt: skip
    study.add_argument("--target", help="class index or label for every input (default: each "
                       "input's predicted class)")  # fmt: skip
    study.add_argument("--batch-size", type=int, default=8, help="inputs per engine batch")
    _explain_arguments(study)
    study.add_argument(
        "--out", help=f"output folder (default: {DEFAULT_STUDY_ROOT}/<inputs>-study, numbered "
        "-2, -3, ... when it exists); an existing folder that holds files is refused unless "
        "--overwrite",
    )  # fmt: skip
    study.add_argument("--overwrite", action="store_true", help="write into a non-empty --out")
    study.add_argument("--quiet", action="store_true", help="no progress lines")

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
    gad.add_argument("--alphas", help="logit offsets, one network each, e.g. 2,4,6,8 "
                     "(default: GAD's standard set, printed with the result)")  # fmt: skip
    gad.add_argument("--epochs", type=int, default=10)
    gad.add_argument("--learning-rate", type=float, default=4e-5)
    gad.add_argument("--seed", type=int, default=0)
    gad.add_argument("--out", help="support set file (default: the cache, found automatically)")

    methods = sub.add_parser(
        "methods", help="list the methods, or show one with its options (defaults, bounds, "
        "choices)",
    )  # fmt: skip
    methods.add_argument("name", nargs="?", help="a method: its options in full")
    methods.add_argument("--family", help="only this family (gradient, cam, mask, pattern, addon)")
    methods.add_argument("--json", action="store_true", help="machine-readable output")
    metrics = sub.add_parser("metrics", help="list the quality metrics, or show one")
    metrics.add_argument("name", nargs="?", help="a metric: its parameters in full")
    metrics.add_argument("--json", action="store_true", help="machine-readable output")
    models = sub.add_parser("models", help="list the models")
    models.add_argument("--json", action="store_true", help="machine-readable output")
    return parser


def _explain_arguments(parser: argparse.ArgumentParser) -> None:
    """What ``explain`` and ``study`` both take: the seed, the device and the resize policy."""
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, mps")
    parser.add_argument(
        "--resize", default="center_crop", choices=("center_crop", "resize", "none")
    )


def _model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="efficientnet_lite0", help="model name or config file")
    parser.add_argument("--weights", help="weights file (torchvision models)")
    parser.add_argument("--image-size", type=int, help="square input size (default: the model's)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, mps")


def check_device(text: str) -> str:
    """``--device`` as given, once it names a device this machine has (torch would otherwise
    fail deep inside with a driver message)."""
    import torch

    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise UsageError(
            f"--device {text!r} is not a device; use cpu, cuda, cuda:N or mps"
        ) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {text}: no CUDA GPU is available on this machine (or "
                             "torch was built without CUDA); use --device cpu")  # fmt: skip
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise UsageError(f"--device {text}: this machine has {count} CUDA GPU(s), "
                             f"cuda:0 to cuda:{count - 1}")  # fmt: skip
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"--device {text}: MPS (Apple GPU) is not available here; use cpu")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise UsageError(f"--device {text}: the command line runs on cpu, cuda or mps")
    return text


def looks_like_path(text: str) -> bool:
    """Whether a name given for a model or an input is meant as a file (a folder or a suffix)."""
    return "/" in text or "\\" in text or bool(re.search(r"\.[A-Za-z0-9]{1,5}$", text))


def check_model_name(name: str) -> None:
    """``--model``: a registered model, or a file that exists; else the closest names."""
    from engine.catalogue import unknown_name
    from engine.models import MODELS

    if name in MODELS or Path(name).is_file():
        return
    if looks_like_path(name):
        raise UsageError(f"--model {name}: no such file (nor a model of that name; see "
                         "`python -m engine models`)")  # fmt: skip
    raise UsageError(unknown_name("model", name, MODELS) + " (see `python -m engine models`)")


def check_input(source: str) -> None:
    """The input is a bundled sample or a file that exists; a near miss gets the closest."""
    from engine.catalogue import close_names
    from engine.data import SAMPLES
    from engine.data.timeseries import SERIES_SAMPLES

    samples = [*SAMPLES, *SERIES_SAMPLES]
    path = Path(source)
    if source in samples or path.is_file():
        return
    if path.is_dir():
        raise UsageError(f"{source} is a folder; give one image file (or a sample name)")
    if looks_like_path(source):
        raise UsageError(f"no such file: {source}")
    close = close_names(source, samples)
    hint = f"did you mean {' or '.join(map(repr, close))}?" if close else (
        f"samples: {', '.join(SAMPLES)}, state:0 … state:9"
    )  # fmt: skip
    raise UsageError(f"no file or bundled sample named {source!r}; {hint}")


def option_problem(error: Exception, options_model: type | None, owner: str) -> str | None:
    """For an options error caused by an unknown option name (pydantic's ``extra_forbidden``),
    a message with the closest names at that level; None for other problems."""
    from pydantic import ValidationError

    from engine.catalogue import METHODS, close_names

    cause = error.__cause__
    if options_model is None or not isinstance(cause, ValidationError):
        return None
    listing = "methods" if owner in METHODS else "metrics"
    for problem in cause.errors():
        *parents, name = [str(part) for part in problem["loc"]]
        known = _fields_at(options_model, parents)
        if problem["type"] != "extra_forbidden" or known is None:
            continue
        shown = ".".join([*parents, name])
        if close := close_names(name, known):
            hint = "did you mean " + " or ".join(repr(".".join([*parents, c])) for c in close)
            hint += "?"
        else:
            hint = f"its options: {', '.join(known)}"
        return (f"unknown option {shown!r} of {owner}; {hint} (all of them: "
                f"`python -m engine {listing} {owner}`)")  # fmt: skip
    return None


def _fields_at(model: type, path: list[str]) -> list[str] | None:
    """The option names of the (nested) options model at ``path``; None where it is not one."""
    import typing

    from pydantic import BaseModel

    for part in path:
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return None
        nested = [t for t in (field.annotation, *typing.get_args(field.annotation))
                  if isinstance(t, type) and issubclass(t, BaseModel)]  # fmt: skip
        if not nested:
            return None
        model = nested[0]
    return list(getattr(model, "model_fields", {})) or None


def output_folder(args: argparse.Namespace, default: Path | None = None) -> Path:
    """Where a command writes: ``--out`` (refused when it holds files, unless --overwrite), or
    ``default`` (explain: ``explanations/<input>-<method>``), numbered ``-2``, ``-3``, ... when
    that exists. Never overwrites silently."""
    from engine.storage import holds_files

    if args.out is not None:
        out = Path(args.out)
        if out.exists() and not out.is_dir():
            raise UsageError(f"--out {out} is a file, not a folder")
        if holds_files(out) and not args.overwrite:
            raise UsageError(f"--out {out} already holds files; choose another folder, or pass "
                             "--overwrite to write into it")  # fmt: skip
        return out
    if default is None:
        stem = Path(args.image).stem if Path(args.image).is_file() else args.image
        default = DEFAULT_OUT_ROOT / f"{stem}-{args.method}"
    base = default.with_name(re.sub(r"[^A-Za-z0-9._-]+", "-", default.name))
    out, number = base, 1
    while out.exists():
        number += 1
        out = base.with_name(f"{base.name}-{number}")
    return out


def write_outputs(result, out: Path) -> dict[str, Path]:
    """``result``'s files in ``out``, all or none (:func:`write_staged`)."""
    from engine.artifacts import write_artifacts
    from engine.storage import write_staged

    return write_staged(out, lambda staging: write_artifacts(result, staging))


def _load_for_training(args: argparse.Namespace):
    """The loaded model and the square image size (h, w) the command works at."""
    from engine.models import load_model

    check_model_name(args.model)
    loaded = load_model(args.model, args.weights, check_device(args.device))
    if loaded.spec.input_kind != "image":
        raise UsageError(f"{args.model} is not an image model")
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

    from engine.addons.gad import DEFAULT_ALPHAS, train_support_set
    from engine.data import image_batches, image_files

    loaded, size = _load_for_training(args)
    classes = (loaded.spec.class_index(args.class_a), loaded.spec.class_index(args.class_b))
    images, labels = [], []
    for cls, folder in zip(classes, (args.images_a, args.images_b), strict=True):
        files = image_files(folder)
        images.append(torch.cat(list(image_batches(files, size, args.batch_size))))
        labels.append(torch.full((len(files),), cls, dtype=torch.long))
    try:
        alphas = (
            DEFAULT_ALPHAS
            if args.alphas is None
            else tuple(float(a) for a in args.alphas.split(","))
        )
    except ValueError:
        raise UsageError(f"--alphas must be numbers separated by commas: {args.alphas!r}") from None
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


def check_options(spec, options: dict[str, Any]) -> None:
    """A method's options, checked as its options model does; an unknown name gets the
    closest ones."""
    from engine.method import OptionsError

    try:
        spec.parse_options(options)
    except OptionsError as error:
        listing = f"see `python -m engine methods {spec.name}`"
        raise UsageError(option_problem(error, spec.options, spec.name)
                         or f"{error} ({listing})") from None  # fmt: skip


def checked_metrics(texts: list[str]) -> list[str | dict[str, Any]]:
    """Repeated ``-m NAME[:KEY=VALUE,...]`` → metric requests, each checked."""
    from engine.catalogue import get_metric, parse_metrics
    from engine.metrics.base import MetricError

    metrics = [metric_from_arg(text) for text in texts]
    for metric in metrics:
        if isinstance(metric, dict):
            metric_spec = get_metric(metric["name"])
            try:
                metric_spec.parse_options({k: v for k, v in metric.items() if k != "name"})
            except MetricError as error:
                problem = option_problem(error, metric_spec.options, metric_spec.name)
                raise UsageError(problem or str(error)) from None
    parse_metrics(metrics)
    return metrics


def command_explain(args: argparse.Namespace) -> int:
    from engine.catalogue import get_method
    from engine.data import InputError
    from engine.explain import explain
    from engine.models.spec import class_number

    # Everything a user can get wrong is checked before the model is loaded.
    check_device(args.device)
    check_model_name(args.model)
    spec = get_method(args.method)
    options = options_from_args(args.option)
    for name in ("init", "iterations"):
        if getattr(args, name) is not None:
            if name not in spec.options.model_fields:
                raise UsageError(f"--{name} is an option of the mask methods; {spec.name} has "
                                 f"no {name}")  # fmt: skip
            options[name] = getattr(args, name)
    check_options(spec, options)
    metrics = checked_metrics(args.metric)
    check_input(args.image)
    out = output_folder(args)
    target: int | str | None = args.target
    if target is not None and (number := class_number(target)) is not None:
        target = number

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
    except InputError as error:  # name the file: "not a readable image" alone leaves a guess
        raise UsageError(f"{args.image}: {error}") from None
    finally:
        close()
    paths = write_outputs(result, out)
    p = result.predictions[0]
    print(
        f"{result.method} on {result.model}: predicted {p.label} ({p.class_index}) "
        f"p={p.probability:.3f}; explained {p.target_label} ({p.target})"
    )
    for line in score_lines(result.summary()):
        print(line)
    print(f"  took {result.metadata['timings']['attribute_s']:.2f} s; wrote {len(paths)} files "
          f"to {out}")  # fmt: skip
    return 0


def study_inputs_arg(text: str) -> tuple[str | list[str], str]:
    """``inputs`` of ``study``: a folder, a .zip, or samples/files separated by commas; and the
    name its default output folder is made from."""
    path = Path(text)
    if path.is_dir() or (path.suffix.lower() == ".zip" and path.is_file()):
        return text, path.stem or "inputs"
    if path.suffix.lower() == ".zip":
        raise UsageError(f"no such zip file: {text}")
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise UsageError("give a folder, a .zip, or sample names separated by commas")
    for name in names:
        check_input(name)
    return names, "samples" if len(names) > 1 else Path(names[0]).stem


def command_study(args: argparse.Namespace) -> int:
    from engine.catalogue import get_method
    from engine.models.spec import class_number
    from engine.study import parse_variants, study

    # Everything a user can get wrong is checked before the model is loaded.
    check_device(args.device)
    check_model_name(args.model)
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {args.batch_size}")
    variants = parse_variants(args.variant)
    for variant in variants:
        check_options(get_method(variant.method), variant.options)
    metrics = checked_metrics(args.metric)
    inputs, stem = study_inputs_arg(args.inputs)
    out = output_folder(args, DEFAULT_STUDY_ROOT / f"{stem}-study")
    target: int | str | None = args.target
    if target is not None and (number := class_number(target)) is not None:
        target = number

    def progress(done: int, total: int) -> None:
        if not args.quiet:
            print(f"study: {done}/{total} input × variant results", file=sys.stderr, flush=True)

    result = study(
        args.model, inputs, variants, metrics, targets=target, seed=args.seed,
        device=args.device, weights=args.weights, resize=args.resize,
        batch_size=args.batch_size, progress=progress, out_dir=out, overwrite=args.overwrite,
    )  # fmt: skip
    paths = result.files
    print(f"study of {len(result.inputs)} inputs × {len(variants)} variants on {result.model}:")
    print((out / "table.md").read_text().rstrip())
    print(f"wrote {len(paths)} entries to {out} (scores.csv, summary.json, table.md, figures, "
          "and <variant>/<input>/ folders)")  # fmt: skip
    return 0


def score_lines(summary: dict[str, Any]) -> list[str]:
    """One line per score of a summary: its value (or why it has none), which direction is
    better, and its random baseline where it has one, flagged when the score is worse."""
    from engine.metrics.glossary import SCORES

    lines = []
    for name, value in summary["scores"].items():
        why = summary["undefined_scores"].get(name)
        if why is not None:
            lines.append(f"  {name}: undefined ({why})")
            continue
        notes = []
        if better := SCORES.get(name, ("", None))[1]:
            notes.append(f"{better} is better")
        baseline = summary.get("baselines", {}).get(name)
        if baseline and baseline["value"] is not None:
            notes.append(f"random baseline {baseline['baseline']} = {baseline['value']:.6g}")
            if baseline.get("worse"):
                notes.append("WORSE than the random baseline")
        lines.append(f"  {name}: {value:.6g}" + (f"  ({'; '.join(notes)})" if notes else ""))
    return lines


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
        raise UsageError("--out must name a .pt file")
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
    from engine.catalogue import all_methods, get_method, unknown_name

    if args.name:
        method = get_method(args.name).describe()
        if args.json:
            print(json.dumps(method, indent=2))
            return 0
        kinds = ", ".join(method["input_kinds"])
        print(f"{method['name']} ({method['family']}; {kinds}): {method['summary']}")
        if method.get("citation"):
            print(f"  citation: {method['citation']}")
        print("options (-o KEY=VALUE; nested ones as a.b=VALUE):")
        for line in option_lines(method["options_schema"]):
            print(line)
        return 0
    methods = [m.describe() for m in all_methods()]
    if args.family:
        families = sorted({m["family"] for m in methods})
        if args.family not in families:
            raise UsageError(unknown_name("family", args.family, families))
        methods = [m for m in methods if m["family"] == args.family]
    if args.json:
        print(json.dumps(methods, indent=2))
        return 0
    for method in methods:
        kinds = ",".join(method["input_kinds"])
        print(f"{method['name']:<22} {method['family']:<9} {kinds:<17} "
              f"{first_sentence(method['summary'])}")  # fmt: skip
    print(f"{len(methods)} methods; `python -m engine methods NAME` shows one with its options")
    return 0


def first_sentence(text: str, width: int = SUMMARY_WIDTH) -> str:
    """The first sentence of ``text``, cut to ``width`` characters."""
    sentence = re.split(r"(?<=[.;:])\s", text, maxsplit=1)[0].rstrip(".;:")
    return sentence if len(sentence) <= width else sentence[: width - 1].rstrip() + "…"


def option_lines(schema: dict[str, Any], prefix: str = "", defs: dict | None = None) -> list[str]:
    """A JSON schema's options as text: name, type, default, bounds, the choices of an enum
    (e.g. IG's ``rule``) and the description; a nested options model under its dotted names."""
    defs = schema.get("$defs", {}) if defs is None else defs
    lines = []
    for field, entry in schema.get("properties", {}).items():
        kinds, choices, bounds, nested = [], [], [], None
        for variant in entry.get("anyOf", [entry]):
            if "$ref" in variant:
                variant = defs.get(variant["$ref"].rsplit("/", 1)[-1], {})
            if "enum" in variant or "const" in variant:
                choices += variant.get("enum", [variant.get("const")])
                kinds.append("choice")
            elif "properties" in variant:
                nested = variant
                kinds.append("options")
            else:
                kinds.append(variant.get("type", "any"))
                bounds += _bounds(variant)
        default = json.dumps(entry["default"]) if "default" in entry else "(required)"
        text = f"  {prefix + field:<24} {' | '.join(dict.fromkeys(kinds))}, default {default}"
        if bounds:
            text += ", " + " and ".join(bounds)
        if choices:
            text += "; one of: " + ", ".join(str(c) for c in choices)
        lines.append(text)
        if entry.get("description"):
            lines.append(f"      {entry['description']}")
        if nested is not None:
            lines += option_lines(nested, f"{prefix}{field}.", defs)
    return lines


def _bounds(entry: dict[str, Any]) -> list[str]:
    signs = {"minimum": "≥", "exclusiveMinimum": ">", "maximum": "≤", "exclusiveMaximum": "<",
             "minItems": "items ≥", "maxItems": "items ≤", "maxLength": "length ≤"}  # fmt: skip
    return [f"{sign} {entry[key]:g}" if isinstance(entry[key], float) else f"{sign} {entry[key]}"
            for key, sign in signs.items() if key in entry]  # fmt: skip


def command_models(args: argparse.Namespace) -> int:
    from engine.models import MODELS

    models = [spec.describe() for spec in MODELS.values()]
    if args.json:
        print(json.dumps(models, indent=2))
        return 0
    for model in models:
        print(f"{model['name']:<20} {model['input_kind']:<6} {model['description']}")
    return 0


def command_metrics(args: argparse.Namespace) -> int:
    from engine.catalogue import all_metrics, get_metric
    from engine.metrics.glossary import describe_scores

    metrics = [get_metric(args.name).describe()] if args.name else [
        m.describe() for m in all_metrics()
    ]  # fmt: skip
    if args.json:
        print(json.dumps(metrics[0] if args.name else metrics, indent=2))
        return 0
    glossary = describe_scores()
    for metric in metrics:
        passes = metric["model_passes_224"]
        print(f"{metric['name']:<22} {passes:>4} passes  {metric['summary']}")
        if not args.name:
            continue
        print(f"  definition: {metric['definition']}")
        print(f"  cost: {passes} model passes (input rows) per 224² image at the defaults")
        print("scores:")
        for key in metric["keys"]:
            meaning = glossary.get(key, {})
            notes = [f"{meaning['better']} is better"] if meaning.get("better") else []
            if meaning.get("baseline"):
                notes.append(f"random baseline: {meaning['baseline']}")
            print(f"  {key:<24} {'; '.join(notes)}")
            if meaning.get("meaning"):
                print(f"      {meaning['meaning']}")
        print("parameters (-m NAME:KEY=VALUE,...):")
        for line in option_lines(metric["options_schema"]):
            print(line)
    if not args.name:
        print(f"{len(metrics)} metrics; `python -m engine metrics NAME` shows one in full")
    return 0


def one_line(text: str) -> str:
    """A message on one line (an engine message may hold a newline)."""
    return " ".join(text.split())


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (2 for a user's mistake)."""
    args = build_parser().parse_args(argv)
    from engine.data import InputError
    from engine.method import MethodError, OptionsError
    from engine.metrics.base import MetricError
    from engine.models.spec import ModelError, WeightsNotFound
    from engine.runtime import keep_freed_memory
    from engine.study import StudyError

    keep_freed_memory()
    # A stop signal unwinds like Ctrl-C, so half-written output folders are removed on the way.
    signal.signal(signal.SIGTERM, lambda number, _frame: sys.exit(128 + number))
    handlers = {
        "explain": command_explain,
        "study": command_study,
        "methods": command_methods,
        "models": command_models,
        "metrics": command_metrics,
        "train-series": command_train_series,
        "estimate-patterns": command_estimate_patterns,
        "train-gad": command_train_gad,
    }
    try:
        return handlers[args.command](args)
    except WeightsNotFound as error:  # the library's message names weights=...: name the flag
        message = (f"weights for {error.model} not found at {error.path}; pass --weights FILE "
                   "(a state-dict file), or --weights random:0 for an untrained model")  # fmt: skip
    except (UsageError, OptionsError, MethodError, ModelError, InputError, MetricError,
            StudyError) as error:  # fmt: skip
        message = str(error)
    except OSError as error:  # a folder that cannot be written, a file that cannot be read
        message = f"{error.strerror or error}: {error.filename}" if error.filename else str(error)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    print(f"error: {one_line(message)}", file=sys.stderr)
    return 2
