"""kvm/ is layered: its modules import only modules below them, never another module's underscore names,
and never reach into the private attributes another module's objects keep.

The order, lowest first (a module may import any module listed before it):
system calls -> errors, records -> marshalling -> run loop -> fd base -> memory, stats, attributes
-> exits -> per-arch mixins -> vcpu -> vm -> system -> package and CLI.
"""

from __future__ import annotations

import ast
import pathlib

KVM = pathlib.Path(__file__).resolve().parent.parent / "kvm"

LAYERS: tuple[tuple[str, ...], ...] = (
    ("_sys", "errors", "spec"),
    ("marshal",),
    ("_pure", "_speedups", "_accel"),
    ("_fd",),
    ("memory", "stats", "device"),
    ("exits",),
    ("x86", "arm64", "riscv64"),
    ("arches",),
    ("vcpu",),
    ("vm",),
    ("system",),
    ("cli",),
    ("__init__", "__main__"),
)
RANK = {module: rank for rank, modules in enumerate(LAYERS) for module in modules}
# names every module may use on any object: Python's own protocol
DUNDER = ("__",)
NAMEDTUPLE_API = {"_asdict", "_replace", "_fields", "_make"}


def _modules() -> dict[str, ast.Module]:
    return {path.stem: ast.parse(path.read_text(), str(path)) for path in sorted(KVM.glob("*.py"))}


def _imports(tree: ast.Module) -> list[tuple[str, list[str], int]]:
    """(kvm module imported, names taken from it, line) for every relative import of kvm's own modules."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module is None:  # from . import a, b
                out += [(alias.name, [], node.lineno) for alias in node.names]
            else:
                out.append((node.module.split(".")[0], [alias.name for alias in node.names], node.lineno))
    return out


def _private_names_defined(tree: ast.Module) -> set[str]:
    """The underscore names a module defines: its functions, classes, attributes and slots."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("_"):
            names.add(node.value)  # __slots__ entries, getattr names
    return {name for name in names if name.startswith("_") and not name.startswith(DUNDER)}


def test_every_module_has_a_layer() -> None:
    assert set(_modules()) <= set(RANK), f"add {sorted(set(_modules()) - set(RANK))} to LAYERS"


def test_modules_import_only_lower_layers_and_no_underscore_names() -> None:
    problems = []
    for name, tree in _modules().items():
        for target, names, line in _imports(tree):
            if target == "generated":
                continue  # the generated package sits beside kvm/, below everything
            if target not in RANK:
                problems.append(f"kvm/{name}.py:{line}: imports unknown module {target}")
            elif RANK[target] >= RANK[name] and name not in ("_accel",) and target != name:
                problems.append(f"kvm/{name}.py:{line}: imports {target}, which is not below it")
            problems += [f"kvm/{name}.py:{line}: imports {target}.{n}" for n in names
                         if n.startswith("_") and not n.startswith(DUNDER)]
    assert not problems, "\n".join(problems)


def test_no_function_imports_and_no_imports_after_the_header() -> None:
    problems = []
    for name, tree in _modules().items():
        header_done = False
        for node in tree.body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                if header_done:
                    problems.append(f"kvm/{name}.py:{node.lineno}: import after the module's header")
            elif not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)) and not isinstance(node, ast.If):
                header_done = True
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for inner in ast.walk(node):
                    if isinstance(inner, ast.ImportFrom) and inner.level == 1:
                        problems.append(f"kvm/{name}.py:{inner.lineno}: import inside {node.name}()")
    assert not problems, "\n".join(problems)


def test_no_reaching_into_private_attributes_of_other_modules_objects() -> None:
    problems = []
    for name, tree in _modules().items():
        own = _private_names_defined(tree)
        for node in ast.walk(tree):
            if not isinstance(node, ast.Attribute) or not node.attr.startswith("_") or node.attr.startswith(DUNDER):
                continue
            base = node.value
            if isinstance(base, ast.Name) and base.id in ("self", "cls"):
                continue
            if node.attr in own or node.attr in NAMEDTUPLE_API:
                continue  # a protocol between the objects of one module
            problems.append(f"kvm/{name}.py:{node.lineno}: {ast.unparse(node)}")
    assert not problems, "\n".join(problems)
