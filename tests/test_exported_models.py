"""A ``torch.export`` program (ResNet18, random weights) loaded from a model config: the gradient
methods equal Captum run on the same exported program (1e-5), Grad-CAM equals Captum's
LayerGradCam hooked on the exported ``layer4``, and the rectifier rules, which Captum can only
apply to eager nn.ReLU modules, equal Captum's on the eager model the program was exported from.
A TorchScript archive loads without PyTorch's deprecation notice.

Uploaded archives run only allowed operators: TorchScript and exported programs that read or
write files, or whose loading would run code, are refused and touch nothing (PyTorch's own
loaders, shown alongside, do); the bundled, torchvision and timm models pass, both ways.
"""

from __future__ import annotations

import contextlib
import io
import json
import pathlib
import warnings
import zipfile
from collections.abc import Callable

import pytest
import torch
import torchvision
from captum.attr import (
    Deconvolution,
    GuidedBackprop,
    InputXGradient,
    IntegratedGradients,
    LayerAttribution,
    LayerGradCam,
    Saliency,
)

from engine import explain
from engine.models import ModelError, load_model
from engine.models.config import check_exported_archive
from engine.models.operators import (
    OperatorsRefused,
    check_torchscript_archive,
    is_allowed,
    program_operators,
    torchscript_operators,
)
from engine.models.spec import Normalized
from tests.conftest import assert_relative_close
from tests.tiny_models import Prints, ReadsAFile, WritesAFile, WritesWhenLoaded, tiny_cnn

TARGETS = [1, 4]
SIZE = 64
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def eager_resnet18() -> torch.nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=5).eval()


def write_config(folder, name: str, source: str, file: str) -> str:
    config = {"name": name, source: file, "input_size": [SIZE, SIZE], "mean": MEAN, "std": STD}
    path = folder / f"{name}.json"
    path.write_text(json.dumps(config))
    return str(path)


def exported_program() -> torch.export.ExportedProgram:
    """ResNet18 exported with a batch size of its own choosing."""
    example = (torch.rand(2, 3, SIZE, SIZE),)
    return torch.export.export(eager_resnet18(), example,
                               dynamic_shapes=({0: torch.export.Dim.AUTO},))  # fmt: skip


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("exported")
    torch.export.save(exported_program(), folder / "resnet18.pt2")
    return load_model(write_config(folder, "exported_resnet18", "export", "resnet18.pt2"))


@pytest.fixture(scope="module")
def x():
    return torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3))


def ours(model, x, method, options=None):
    return explain(model, x, method, options or {}, target=TARGETS, resize="none").attribution


def test_the_exported_program_keeps_names_and_hooks(exported):
    assert exported.capabilities == {"hooks", "rectifiers"}  # no Python modules, no CAM layer
    assert "layer4.1.relu" in dict(exported.classifier.named_modules())


def test_saliency_and_gradient_x_input(exported, x):
    net = exported.module
    reference = Saliency(net).attribute(x, target=TARGETS, abs=False)
    assert_relative_close(ours(exported, x, "saliency"), reference, 1e-5)
    reference = InputXGradient(net).attribute(x, target=TARGETS)
    assert_relative_close(ours(exported, x, "gradient_x_input"), reference, 1e-5)


def test_integrated_gradients(exported, x):
    reference = IntegratedGradients(exported.module).attribute(
        x, target=TARGETS, n_steps=8, method="gausslegendre"
    )
    assert_relative_close(ours(exported, x, "integrated_gradients", {"steps": 8}), reference, 1e-5)


def test_smoothgrad(exported, x):
    """Captum's saliency on the noisy copies our seeded tunnel draws (Captum's own NoiseTunnel
    draws from the global generator), averaged per image: image b's n noise images are N(0, 1)
    draws of its own generator seeded 0, times σ_b = s·(max x_b − min x_b)."""
    samples, level = 3, 0.15
    result = ours(exported, x, "smoothgrad", {"samples": samples, "noise_level": level})
    noise = torch.cat([
        torch.randn((samples, *x.shape[1:]), generator=torch.Generator().manual_seed(0))
        * level * (image.max() - image.min())
        for image in x
    ])  # fmt: skip
    noisy = x.repeat_interleave(samples, 0) + noise
    targets = torch.tensor(TARGETS).repeat_interleave(samples)
    grads = Saliency(exported.module).attribute(noisy, target=targets, abs=False)
    assert_relative_close(result, grads.view(2, samples, *x.shape[1:]).mean(1), 1e-5)


RULES = [("guided_backprop", GuidedBackprop), ("deconvolution", Deconvolution)]


@pytest.mark.parametrize(("method", "captum_class"), RULES)
def test_rectifier_rules_on_exported_relus(exported, x, method, captum_class):
    eager = Normalized(eager_resnet18(), MEAN, STD).eval()
    reference = captum_class(eager).attribute(x, target=TARGETS)
    assert_relative_close(ours(exported, x, method), reference, 1e-5)


def test_gradcam_hooks_the_exported_layer(exported, x):
    layer = exported.classifier.get_submodule("layer4")
    cam = LayerGradCam(exported.module, layer).attribute(x, target=TARGETS, relu_attributions=True)
    reference = LayerAttribution.interpolate(cam, (SIZE, SIZE), "bilinear")
    assert_relative_close(ours(exported, x, "gradcam", {"layer": "layer4"}), reference, 1e-5)


def test_torchscript_loads_quietly(tmp_path):
    torch.jit.save(torch.jit.script(eager_resnet18()), tmp_path / "resnet18.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a deprecation notice would fail the load
        model = load_model(write_config(tmp_path, "scripted", "torchscript", "resnet18.pt"))
    assert model.capabilities == frozenset()


class Payload:
    """Unpickling it creates a file: what a hostile archive would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def tampered(source: pathlib.Path, target: pathlib.Path, marker: pathlib.Path, how: str) -> None:
    """A copy of a real .pt2 with a pickled payload where PyTorch's loader would unpickle it."""
    payload = io.BytesIO()
    torch.save(Payload(marker), payload)
    with zipfile.ZipFile(source) as original, zipfile.ZipFile(target, "w") as copy:
        for item in original.infolist():
            data = original.read(item.filename)
            if how == "weights" and item.filename.endswith("model_weights_config.json"):
                config = json.loads(data)
                config["config"]["conv1.weight"].update(use_pickle=True, path_name="weight_x")
                data = json.dumps(config).encode()
                copy.writestr(item.filename.rsplit("/", 1)[0] + "/weight_x", payload.getvalue())
            if how == "sample_inputs" and "/sample_inputs/" in item.filename:
                data = payload.getvalue()
            copy.writestr(item, data)
        if how == "aotinductor":
            copy.writestr("archive/data/aotinductor/model/model.so", b"\x7fELF")
        if how in ("legacy_weights", "legacy_constants"):  # found by a probe of a fresh clone
            root = original.namelist()[0].split("/", 1)[0]
            copy.writestr(f"{root}/data/{how.removeprefix('legacy_')}/model.pt", payload.getvalue())


@pytest.mark.parametrize(
    "how", ["weights", "sample_inputs", "aotinductor", "legacy_weights", "legacy_constants"]
)
def test_archives_that_would_unpickle_or_load_code_are_refused_unopened(tmp_path, how):
    source = tmp_path / "resnet18.pt2"
    torch.export.save(exported_program(), source)
    marker = tmp_path / "created"
    tampered(source, tmp_path / "evil.pt2", marker, how)
    with pytest.raises(ModelError, match="refused"):
        load_model(write_config(tmp_path, "evil", "export", "evil.pt2"))
    assert not marker.exists()
    if how != "aotinductor":  # the check is what stops it: PyTorch's loader runs the payload
        with contextlib.suppress(Exception):
            torch.export.load(tmp_path / "evil.pt2")
        assert marker.exists()


# --- operators: what an uploaded model's graphs may call ----------------------------------------


def scripted(module: torch.nn.Module, path: pathlib.Path) -> pathlib.Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(module.eval()), path)
    return path


def tiny_config(folder: pathlib.Path, source: str, file: str) -> str:
    path = folder / "tiny.json"
    path.write_text(json.dumps({"name": "tiny", source: file, "input_size": [32, 32],
                                "mean": [0.5] * 3, "std": [0.25] * 3}))  # fmt: skip
    return str(path)


FILE_OPERATORS = [(ReadsAFile, "aten::from_file"), (WritesAFile, "aten::save")]


@pytest.mark.parametrize(("hostile", "operator"), FILE_OPERATORS)
def test_torchscript_that_reads_or_writes_files_is_refused(tmp_path, hostile, operator):
    marker = tmp_path / "touched"
    scripted(hostile(str(marker)), tmp_path / "hostile.pt")
    with pytest.raises(OperatorsRefused, match=f"{operator}.*EXPLAINER_ALLOWED_OPERATORS") as e:
        load_model(tiny_config(tmp_path, "torchscript", "hostile.pt"))
    assert e.value.operators == (operator,)
    assert not marker.exists()
    with warnings.catch_warnings():  # what the check stops: PyTorch's loader runs it
        warnings.simplefilter("ignore")
        torch.jit.load(tmp_path / "hostile.pt")(torch.rand(1, 3, 32, 32))
    assert marker.exists()


def test_torchscript_with_setstate_is_refused_before_loading(tmp_path):
    marker = tmp_path / "touched"
    scripted(WritesWhenLoaded(str(marker)), tmp_path / "hostile.pt")
    with pytest.raises(ModelError, match="__setstate__"):
        load_model(tiny_config(tmp_path, "torchscript", "hostile.pt"))
    assert not marker.exists()
    with warnings.catch_warnings(), contextlib.suppress(RuntimeError):
        warnings.simplefilter("ignore")
        torch.jit.load(tmp_path / "hostile.pt")  # loading alone runs __setstate__ (then fails)
    assert marker.exists()


def test_the_operator_setting_adds_to_the_allow_list(tmp_path, monkeypatch):
    scripted(Prints(), tmp_path / "prints.pt")
    with pytest.raises(OperatorsRefused, match="prim::Print"):
        load_model(tiny_config(tmp_path, "torchscript", "prints.pt"))
    monkeypatch.setenv("EXPLAINER_ALLOWED_OPERATORS", "quantized::*, prim::Print")
    model = load_model(tiny_config(tmp_path, "torchscript", "prints.pt"))
    assert model.module(torch.rand(2, 3, 32, 32)).shape == (2, 2)


def exported_from_file(marker: pathlib.Path, target: pathlib.Path) -> None:
    """A real program whose graph calls aten.from_file: torch.export traces it once a Meta
    kernel is registered for the export (PyTorch has none: it reads a file)."""

    def meta(filename, shared=None, size=0, *, dtype=None, **_):
        return torch.empty(size, dtype=dtype, device="meta")

    library = torch.library.Library("aten", "IMPL")
    library.impl("from_file", meta, "Meta")
    try:
        program = torch.export.export(ReadsAFile(str(marker)).eval(), (torch.rand(2, 3, 32, 32),),
                                      dynamic_shapes=({0: torch.export.Dim.AUTO},))  # fmt: skip
    finally:
        library._destroy()
    torch.export.save(program, target)


def test_exported_program_that_reads_a_file_is_refused(tmp_path):
    marker = tmp_path / "touched"
    exported_from_file(marker, tmp_path / "hostile.pt2")
    with pytest.raises(OperatorsRefused, match="aten::from_file") as e:
        load_model(tiny_config(tmp_path, "export", "hostile.pt2"))
    assert e.value.operators == ("aten::from_file",)
    assert not marker.exists()
    loaded = torch.export.unflatten(torch.export.load(tmp_path / "hostile.pt2"))
    loaded(torch.rand(1, 3, 32, 32))  # what the check stops
    assert marker.exists()


def tiny_program(path: pathlib.Path) -> None:
    torch.manual_seed(0)
    program = torch.export.export(tiny_cnn().eval(), (torch.rand(2, 3, 32, 32),),
                                  dynamic_shapes=({0: torch.export.Dim.AUTO},))  # fmt: skip
    torch.export.save(program, path)


def edit_program(source: pathlib.Path, target: pathlib.Path, edit) -> None:
    """A copy of a .pt2 archive whose program JSON went through ``edit``."""
    with zipfile.ZipFile(source) as original, zipfile.ZipFile(target, "w") as copy:
        for item in original.infolist():
            data = original.read(item.filename)
            if item.filename.endswith("models/model.json"):
                program = json.loads(data)
                edit(program)
                data = json.dumps(program).encode()
            copy.writestr(item, data)


def test_programs_whose_loading_or_guards_run_python_are_refused_unopened(tmp_path):
    """torch.export.load evaluates shape expressions with sympy.sympify (eval), and
    ExportedProgram.module() execs the guards: both are refused unless they are arithmetic."""
    tiny_program(tmp_path / "tiny.pt2")
    marker = tmp_path / "touched"
    run = f"__import__('os').system('touch {marker}') == 0"

    def in_shape(program):
        graph = program["graph_module"]["graph"]
        image = graph["inputs"][-1]["as_tensor"]["name"]
        symbols = graph["tensor_values"][image]["sizes"][0]  # the free batch size
        symbols["as_expr"]["expr_str"] = f"{symbols['as_expr']['expr_str']} if {run} else 0"

    def in_guards(program):
        program["guards_code"] = [run]

    edit_program(tmp_path / "tiny.pt2", tmp_path / "shape.pt2", in_shape)
    edit_program(tmp_path / "tiny.pt2", tmp_path / "guards.pt2", in_guards)
    for name in ("shape", "guards"):
        with pytest.raises(ModelError, match="other than shape arithmetic"):
            load_model(tiny_config(tmp_path, "export", f"{name}.pt2"))
    assert not marker.exists()
    torch.export.load(tmp_path / "shape.pt2")  # PyTorch's loader runs the expression
    assert marker.exists()
    marker.unlink()
    torch.export.load(tmp_path / "guards.pt2").module()(torch.rand(1, 3, 32, 32))
    assert marker.exists()


def timm_model(architecture: str, **kwargs) -> Callable[[], torch.nn.Module]:
    import timm

    return lambda: timm.create_model(architecture, pretrained=False, num_classes=5, **kwargs)


# Real models at small sizes (random weights, nothing downloaded): builder and example input.
REAL_MODELS = {
    "resnet18": (lambda: torchvision.models.resnet18(num_classes=5), (2, 3, 64, 64)),
    "efficientnet_lite0": (lambda: load_model("efficientnet_lite0").classifier, (2, 3, 64, 64)),
    "state_gru": (lambda: load_model("state_gru").classifier, (2, 20, 3)),
    "vit_tiny": (timm_model("vit_tiny_patch16_224", img_size=32), (2, 3, 32, 32)),
    "convnext_atto": (timm_model("convnext_atto"), (2, 3, 64, 64)),
    "swin_tiny": (timm_model("swin_tiny_patch4_window7_224", img_size=64, window_size=2),
                  (2, 3, 64, 64)),
}  # fmt: skip
# Each model both ways was checked by hand; here the quicker way for the slowest (swin's export
# takes 20 s on two cores).
ROUTES = [("resnet18", "script"), ("resnet18", "export"), ("efficientnet_lite0", "export"),
          ("state_gru", "script"), ("state_gru", "export"), ("vit_tiny", "trace"),
          ("vit_tiny", "export"), ("convnext_atto", "script"), ("convnext_atto", "export_any_size"),
          ("swin_tiny", "script")]  # fmt: skip


@pytest.mark.parametrize(("name", "route"), ROUTES, ids=[f"{n}-{r}" for n, r in ROUTES])
def test_the_default_allow_list_takes_real_models(tmp_path, name, route):
    """The checks a stored model goes through (before and after loading) accept the bundled,
    torchvision and timm models, scripted, traced and exported (a program exported for any
    image size carries guards, which pass too)."""
    build, shape = REAL_MODELS[name]
    torch.manual_seed(0)
    model, x = build().eval(), torch.rand(shape)
    path = tmp_path / f"{name}.{'pt2' if route.startswith('export') else 'pt'}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if route == "script":
            torch.jit.save(torch.jit.script(model), path)
        elif route == "trace":
            torch.jit.save(torch.jit.trace(model, x, check_trace=False), path)
        else:
            free = range(x.ndim) if route == "export_any_size" else (0,)
            dims = ({d: torch.export.Dim.AUTO for d in free},)
            torch.export.save(torch.export.export(model, (x,), dynamic_shapes=dims), path)
    if route.startswith("export"):
        check_exported_archive(path)
        found = program_operators(torch.export.load(path))
    else:
        check_torchscript_archive(path)
        unit = torch._C.CompilationUnit()
        torch._C.import_ir_module(unit, str(path), torch.device("cpu"), {}, False)
        found = torchscript_operators(unit)
    assert {"aten::linear", "aten::addmm", "aten::matmul"} & found, found
    assert [op for op in found if not is_allowed(op)] == []
