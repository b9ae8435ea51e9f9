"""The operators an uploaded TorchScript archive or ``torch.export`` program may call.

A model file is code: its graphs call PyTorch operators, and PyTorch has operators that read or
write files (``aten::from_file``, ``aten::save``), change process-wide state or call Python. So
before such a model is used, every operator its graphs can reach is named (TorchScript: every
function and method the archive compiles, with nested blocks and subgraphs; exported programs:
the call targets of the graph and of every subgraph) and checked against an allow-list:

- every ``aten::`` operator, except those in :data:`DENIED_ATEN` and those with a word of
  :data:`DENIED_WORDS` in their name (files, shared memory, saving, loading);
- the names in :data:`ALLOWED`: TorchScript's structure (constants, attributes, calls, control
  flow, containers, tensor properties), the higher-order operators of ``torch.export`` whose
  bodies are graphs checked the same way, and the Python functions ``torch.export`` records for
  shape arithmetic;
- what the operator adds in ``EXPLAINER_ALLOWED_OPERATORS`` (comma-separated): exact names such
  as ``quantized::linear`` (an exact name also lifts the deny-list), or whole namespaces such as
  ``quantized::*``.

Everything else is refused: other namespaces (``prims::``, ``quantized::``, custom ``my_ns::``),
the rest of ``prim::`` (``prim::Print``, ``prim::fork``, RPC), custom C++ classes
(``torchbind::``) and other Python functions (``python::``).

Loading must not run anything before the check either. ``torch.jit.load`` runs the TorchScript
``__setstate__`` methods of the objects it unpickles, and the C++ ones of custom classes;
``torch.export.load`` evaluates a program's symbolic-shape expressions with ``sympy.sympify``
(Python's ``eval``) and resolves call targets such as ``torch.save`` by name. So the archive is
read first with PyTorch's own zip reader: a TorchScript archive that defines ``__setstate__`` or
holds custom-class objects is refused unopened (torchvision and timm models have neither), and a
program's call targets, shape expressions and guard code must pass before it is loaded; the
loaded graphs are then checked again.
"""

from __future__ import annotations

import ast
import json
import os
import pickletools
import re
from collections.abc import Collection, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch

from engine.models.spec import ModelError

SETTING = "EXPLAINER_ALLOWED_OPERATORS"

# aten operators that are no part of a model's forward pass: output to the server's log,
# process-wide random state and caches, futures of TorchScript's fork, CUDA stream bookkeeping.
DENIED_ATEN = frozenset({
    "aten::_print", "aten::manual_seed", "aten::seed", "aten::wait", "aten::record_stream",
    "aten::_cufft_set_plan_cache_max_size", "aten::_cufft_clear_plan_cache",
})  # fmt: skip
# An aten operator with one of these words in its name (split at "_") touches files, memory
# shared with other processes or sockets: aten::from_file, aten::save, _share_filename_, ...
DENIED_WORDS = frozenset({"file", "filename", "fd", "shared", "share", "shm", "ipc", "mmap",
                          "save", "load", "socket", "rpc", "url"})  # fmt: skip

# TorchScript's structure: no operator of its own reaches outside the model's tensors.
_PRIM = (
    "Constant GetAttr SetAttr CallMethod CallFunction If Loop ListConstruct ListUnpack "
    "TupleConstruct TupleUnpack TupleIndex TupleSlice DictConstruct DictIndex CreateObject "
    "Enter Exit RaiseException Uninitialized unchecked_cast unchecked_unwrap_optional isinstance "
    "NumToTensor dtype device layout requires_grad data grad shape name type itemsize nbytes "
    "tolist min max abs index rangelist StringIndex EnumName EnumValue ModuleContainerIndex "
    "AutogradZero is_cuda is_cpu is_xpu is_mps is_meta is_sparse is_sparse_csr is_quantized "
    "is_mkldnn is_nested is_vulkan is_ipu is_xla is_maia is_mtia"
)
# torch.export's higher-order operators whose bodies are subgraphs (checked like the graph).
_HIGHER_ORDER = "cond while_loop map_impl scan wrap_with_set_grad_enabled wrap_with_autocast"
# Python functions torch.export records for shape arithmetic and grad mode (its own verifier's).
_PYTHON = (
    "_operator.getitem _operator.add _operator.sub _operator.mul _operator.truediv "
    "_operator.floordiv _operator.mod _operator.pow _operator.neg _operator.pos _operator.abs "
    "_operator.eq _operator.ne _operator.lt _operator.le _operator.gt _operator.ge "
    "_operator.and_ _operator.or_ _operator.not_ _operator.lshift _operator.rshift "
    "math.ceil math.floor math.trunc torch.sym_int torch.sym_float torch.sym_ite torch.sym_max "
    "torch.sym_min torch.sym_not torch.sym_sqrt torch.sym_sum torch._C._set_grad_enabled "
    "torch.autograd.grad_mode.set_grad_enabled torch.amp.autocast_mode._enter_autocast "
    "torch.amp.autocast_mode._exit_autocast"
)
ALLOWED = frozenset(
    [f"prim::{name}" for name in _PRIM.split()]
    + [f"higher_order::{name}" for name in _HIGHER_ORDER.split()]
    + [f"python::{name}" for name in _PYTHON.split()]
)
MAX_LISTED = 12  # operators named in one refusal


class OperatorsRefused(ModelError):
    """A model whose graphs call operators off the allow-list (``operators``: their names)."""

    def __init__(self, what: str, operators: Collection[str]):
        self.operators = tuple(sorted(operators))
        listed = ", ".join(self.operators[:MAX_LISTED])
        more = len(self.operators) - MAX_LISTED
        super().__init__(
            f"the {what} calls operators that this server does not allow: {listed}"
            f"{f' and {more} more' if more > 0 else ''}. Only model-forward operators run; "
            f"the server's operator may allow more with {SETTING}"
        )


def configured() -> frozenset[str]:
    """The names the operator added (``EXPLAINER_ALLOWED_OPERATORS``, comma-separated)."""
    value = os.environ.get(SETTING, "")
    return frozenset(item.strip() for item in value.split(",") if item.strip())


def is_allowed(name: str, extra: Collection[str] = ()) -> bool:
    """Whether ``name`` ('namespace::operator') is on the allow-list, with ``extra`` added."""
    namespace, _, operator = name.partition("::")
    if name in extra or f"{namespace}::*" in extra:
        return True
    if name in ALLOWED:
        return True
    if namespace != "aten" or name in DENIED_ATEN:
        return False
    return not DENIED_WORDS & set(operator.split("_"))


def refuse_unless_allowed(names: Iterable[str], what: str, extra: Collection[str] | None = None):
    """Raise :class:`OperatorsRefused` naming every operator of ``names`` off the allow-list
    (``extra``: what the operator added; default: :func:`configured`)."""
    extra = configured() if extra is None else extra
    refused = {name for name in names if not is_allowed(name, extra)}
    if refused:
        raise OperatorsRefused(what, refused)


# --- TorchScript -------------------------------------------------------------------------------


def _records(path: Path, kind: str) -> tuple[Any, list[str]]:
    """PyTorch's own zip reader on ``path`` (what its loaders read) and the record names."""
    if not Path(path).is_file():
        raise ModelError(f"model file {path} not found")
    try:
        reader = torch._C.PyTorchFileReader(str(path))
        return reader, reader.get_all_records()
    except RuntimeError:
        raise ModelError(f"the file is not {kind}") from None


def _pickle_strings(data: bytes) -> Iterator[str]:
    """Every string a pickle holds (class names included), read without unpickling."""
    try:
        for _, argument, _ in pickletools.genops(data):
            if isinstance(argument, str):
                yield argument
    except Exception:  # a pickle the opcode reader cannot follow
        raise ModelError("the archive holds a pickle that cannot be read") from None


def check_torchscript_archive(path: Path) -> None:
    """Refuse, before anything is loaded, a TorchScript archive whose loading would run code:
    ``__setstate__`` methods (torch.jit.load calls them while it unpickles the module) and
    objects of custom C++ classes (``torch.classes``, whose ``__setstate__`` is C++)."""
    reader, records = _records(path, "a TorchScript archive (torch.jit.save)")
    if "model.json" in records:
        raise ModelError("the TorchScript archive is in a legacy format, which is refused: save "
                         "it again with torch.jit.save")  # fmt: skip
    for name in records:
        if name.startswith("code/") and name.endswith(".py"):
            if b"__setstate__" in reader.get_record(name):
                raise ModelError(
                    "the TorchScript archive defines __setstate__, code that loading it would "
                    "run before it can be checked; such archives are refused"
                )
        elif name.endswith(".pkl") and any(
            "torch.classes" in text for text in _pickle_strings(reader.get_record(name))
        ):
            raise ModelError("the TorchScript archive holds objects of custom C++ classes "
                             "(torch.classes), which are refused")  # fmt: skip


def _type_names(value: torch._C.Value) -> Iterator[str]:
    text = str(value.type())
    if "torch.classes." in text:
        yield f"torchbind::{text}"


def _graph_operators(graph: torch._C.Graph | torch._C.Block, names: set[str]) -> None:
    """Every node kind of a TorchScript graph or block, nested blocks and subgraphs included,
    and custom classes its values have."""
    for value in graph.inputs():
        names.update(_type_names(value))
    for node in graph.nodes():
        names.add(node.kind())
        for value in (*node.inputs(), *node.outputs()):
            names.update(_type_names(value))
        for block in node.blocks():
            _graph_operators(block, names)
        for attribute in node.attributeNames():
            if node.kindOf(attribute) == "g":
                _graph_operators(node.g(attribute), names)
            elif node.kindOf(attribute) == "gs":
                for subgraph in node.gs(attribute):
                    _graph_operators(subgraph, names)


def torchscript_operators(unit: torch._C.CompilationUnit) -> set[str]:
    """The operators of every function and method compiled in ``unit`` (a loaded archive's:
    each module's and class's methods, free functions). Compiling one may import more from the
    archive, so this goes on until nothing new appears."""
    names: set[str] = set()
    seen: set[str] = set()
    while True:
        functions = [f for f in unit.get_functions() if f.qualified_name not in seen]
        if not functions:
            return names
        for function in functions:
            seen.add(function.qualified_name)
            _graph_operators(function.graph, names)


def load_torchscript(path: Path, extra: Collection[str] | None = None) -> torch.jit.ScriptModule:
    """A TorchScript archive on the CPU, after :func:`check_torchscript_archive` and with every
    operator it compiles on the allow-list (:class:`OperatorsRefused` otherwise)."""
    check_torchscript_archive(path)
    unit = torch._C.CompilationUnit()
    module = torch._C.import_ir_module(unit, str(path), torch.device("cpu"), {}, False)
    refuse_unless_allowed(torchscript_operators(unit), "TorchScript model", extra)
    return torch.jit._recursive.wrap_cpp_module(module)


# --- torch.export programs ---------------------------------------------------------------------

_OPS_TARGET = re.compile(r"^torch\.ops\.(\w+)\.(\w+)(?:\.\w+)?$")
# Names a program's symbolic-shape expression may use (sympy.sympify evaluates it with eval):
# sympy's own numbers, arithmetic and relations, and PyTorch's shape functions.
_SYMPY = (
    "Symbol Integer Float Rational Add Mul Max Min Eq Ne Lt Le Gt Ge StrictLessThan "
    "StrictGreaterThan LessThan GreaterThan Unequality Equality And Or Not Abs floor ceiling "
    "Piecewise oo zoo nan true false True False None"
)
_SYMPY_NAMES = frozenset(_SYMPY.split())
_SYMBOL = re.compile(r"^[a-z]+\d+$")  # s0, u3, ps12, zuf0: symbols of sizes and values
_GROWING = frozenset({"PowByNatural", "FloatPow", "LShift"})  # their second argument is bounded
_GUARD_METHODS = frozenset({"size", "stride", "storage_offset", "dim", "numel"})
_GUARD_TORCH = frozenset({"sym_max", "sym_min", "sym_int", "sym_float", "sym_ite", "sym_not",
                          "sym_sqrt", "sym_sum", "_sym_sqrt"})  # fmt: skip
_EXPRESSION_NODES = (ast.Expression, ast.BinOp, ast.UnaryOp, ast.BoolOp, ast.Compare, ast.Tuple,
                     ast.operator, ast.unaryop, ast.boolop, ast.cmpop, ast.Load)  # fmt: skip
MAX_EXPRESSION = 10_000  # characters of one shape expression or guard


def _torch_shape_functions() -> frozenset[str]:
    import sympy
    from torch.utils._sympy import functions

    return frozenset(
        name
        for name, value in vars(functions).items()
        if isinstance(value, type) and issubclass(value, sympy.Basic) and not name.startswith("_")
    )


def _safe_constant(node: ast.AST) -> bool:
    value = getattr(node, "value", None)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return abs(value) <= 2**64
    return value is None or isinstance(value, bool | str)


def _small_exponent(node: ast.AST) -> bool:
    """A symbol or an integer up to 64: no 2**2**60 to compute while loading."""
    if isinstance(node, ast.Name):
        return True
    value = getattr(node, "value", None)
    return isinstance(node, ast.Constant) and type(value) is int and abs(value) <= 64


def _check_expression(text: str, call_allowed, what: str) -> None:
    """Refuse unless ``text`` is one expression of numbers, names and calls that
    ``call_allowed(node)`` accepts (no attribute reaches Python's builtins, no lambda)."""
    try:
        tree = ast.parse(text, mode="eval") if len(text) <= MAX_EXPRESSION else None
    except (SyntaxError, ValueError):
        tree = None
    if tree is None:
        raise ModelError(f"the exported program holds a {what} that is not an expression")
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant):
            fine = _safe_constant(node)
        elif isinstance(node, ast.Call):
            fine = call_allowed(node) and all(_safe_constant(k.value) for k in node.keywords)
        elif isinstance(node, ast.keyword):
            fine = node.arg is not None
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow | ast.LShift):
            fine = _small_exponent(node.right)
        else:
            fine = isinstance(node, (*_EXPRESSION_NODES, ast.Name, ast.Attribute, ast.Subscript))
            fine = fine and call_allowed(node)
        if not fine:
            code = ast.unparse(node)[:80]
            raise ModelError(f"the exported program holds a {what} with code other than shape "
                             f"arithmetic ({code!r}), which is refused")  # fmt: skip


def check_shape_expression(text: str) -> None:
    """A program's symbolic-shape expression (``expr_str``), which torch.export.load hands to
    ``sympy.sympify``: only symbols, numbers, arithmetic and sympy's and PyTorch's shape
    functions."""
    names = _SYMPY_NAMES | _torch_shape_functions()

    def allowed(node: ast.AST) -> bool:
        if isinstance(node, ast.Call):
            if not (isinstance(node.func, ast.Name) and node.func.id in names):
                return False
            growing = node.func.id in _GROWING and len(node.args) == 2
            return not growing or _small_exponent(node.args[1])
        if isinstance(node, ast.Name):
            return node.id in names or bool(_SYMBOL.match(node.id))
        return not isinstance(node, ast.Attribute | ast.Subscript)

    _check_expression(text, allowed, "shape expression")


def _guard_attribute(node: ast.Attribute) -> bool:
    """``x.size``, ``x.stride``, ..., ``math.floor`` or ``torch.sym_max``: nothing else."""
    if node.attr in _GUARD_METHODS:
        return True
    if not isinstance(node.value, ast.Name):
        return False
    if node.value.id == "math":
        return not node.attr.startswith("_")
    return node.value.id == "torch" and node.attr in _GUARD_TORCH


def check_guard(text: str) -> None:
    """One of a program's guards (Python that ``ExportedProgram.module()`` runs with exec):
    comparisons of the inputs' sizes and shape arithmetic, such as ``L['x'].size()[2] >= 4``
    or ``torch.sym_max(1, L['x'].size()[3] // 4) > 1``."""
    names = _torch_shape_functions() | {"L", "math", "torch", "inf", "True", "False"}

    def allowed(node: ast.AST) -> bool:
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Attribute):
                return _guard_attribute(func)
            return isinstance(func, ast.Name) and func.id in names
        if isinstance(node, ast.Attribute):
            return _guard_attribute(node)
        if isinstance(node, ast.Name):
            return node.id in names
        return True

    _check_expression(text, allowed, "guard")


def target_name(target: Any) -> str:
    """A call target of an exported graph as 'namespace::operator': 'aten::conv2d',
    'higher_order::cond', 'python::_operator.getitem' (as torch.export serialises it)."""
    if isinstance(target, torch._ops.OpOverload | torch._ops.OpOverloadPacket):
        return target._schema.name if hasattr(target, "_schema") else target._qualified_op_name
    if isinstance(target, torch._ops.HigherOrderOperator):
        return f"higher_order::{target.name()}"
    if isinstance(target, str):
        return serialized_target_name(target)
    module = getattr(target, "__module__", None) or "?"
    return f"python::{module}.{getattr(target, '__qualname__', repr(target))}"


def serialized_target_name(target: str) -> str:
    """A call target as torch.export.save writes it ('torch.ops.aten.conv2d.default') named
    like :func:`target_name` names the loaded one."""
    match = _OPS_TARGET.match(target)
    if match is None:
        return f"python::{target}"
    namespace, operator = match.groups()
    return f"{namespace}::{operator}"


def _walk_json(value: Any, targets: set[str]) -> None:
    """Collect the call targets of a serialised program (nodes of every graph, nested graphs of
    higher-order operators included) and check its shape expressions and guards."""
    if isinstance(value, dict):
        if isinstance(value.get("target"), str) and "inputs" in value:
            targets.add(serialized_target_name(value["target"]))
        for key, item in value.items():
            if key == "expr_str":
                check_shape_expression(str(item))
            elif key == "guards_code":
                for guard in item or ():
                    check_guard(str(guard))
            else:
                _walk_json(item, targets)
    elif isinstance(value, list):
        for item in value:
            _walk_json(item, targets)


def check_program_archive(path: Path, extra: Collection[str] | None = None) -> None:
    """Before torch.export.load: every program in a ``.pt2`` archive calls allowed operators
    only, and its shape expressions and guards are shape arithmetic (both are evaluated as
    Python while it loads or runs)."""
    reader, records = _records(path, "a torch.export archive (.pt2)")
    targets: set[str] = set()
    for name in records:
        if name.endswith(".json"):
            try:
                document = json.loads(reader.get_record(name))
            except ValueError:
                raise ModelError(f"the archive's {Path(name).name} is not JSON") from None
            _walk_json(document, targets)
    refuse_unless_allowed(targets, "exported program", extra)


def program_operators(program: torch.export.ExportedProgram) -> set[str]:
    """The call targets of a loaded program's graph and of every subgraph, with the operators
    that higher-order wrappers (``with_effects``, ``auto_functionalized``) take as arguments."""
    names: set[str] = set()
    for _, module in program.graph_module.named_modules():
        graph = getattr(module, "graph", None)
        if not isinstance(graph, torch.fx.Graph):
            continue
        for node in graph.nodes:
            if node.op == "call_function":
                names.add(target_name(node.target))
                for argument in (*node.args, *node.kwargs.values()):
                    if isinstance(argument, torch._ops.OperatorBase):
                        names.add(target_name(argument))
            elif node.op in ("call_method", "call_module"):
                names.add(f"python::{node.op}.{node.target}")
    return names
