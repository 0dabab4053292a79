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
    ("_namedtuple",),
    ("_sys", "errors", "spec"),
    ("marshal",),
    ("_pure", "_speedups", "_accel"),
    ("_fd",),
    ("memory", "stats", "device", "caps"),
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


def _kvm_module(name: str) -> str | None:
    """The kvm module an absolute module path names ("kvm.vm" -> "vm"), None outside kvm."""
    parts = name.split(".")
    return parts[1] if parts[0] == "kvm" and len(parts) > 1 else None


def _imports(tree: ast.Module) -> list[tuple[str, list[str], int, ast.AST]]:
    """(kvm module imported, names taken from it, line, node) for every import of kvm's own modules: relative
    (`from .vm import Vm`, `from . import vm`), absolute (`import kvm.vm`, `from kvm.vm import Vm`, `from kvm
    import vm`), and importlib.import_module("kvm.vm") / __import__("kvm.vm") with a constant name."""
    out: list[tuple[str, list[str], int, ast.AST]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            names = [alias.name for alias in node.names]
            if node.level == 1 and node.module is None or node.level == 0 and node.module == "kvm":
                out += [(n, [], node.lineno, node) for n in names]  # from . import a, b
            elif node.level == 1 and node.module is not None:
                out.append((node.module.split(".")[0], names, node.lineno, node))
            elif node.level == 0 and node.module and (target := _kvm_module(node.module)):
                out.append((target, names, node.lineno, node))
        elif isinstance(node, ast.Import):
            out += [(target, [], node.lineno, node) for alias in node.names if (target := _kvm_module(alias.name))]
        elif (isinstance(node, ast.Call) and ast.unparse(node.func) in ("importlib.import_module", "__import__")
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)
              and (target := _kvm_module(node.args[0].value))):
            out.append((target, [], node.lineno, node))
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
        elif isinstance(node, (ast.Assign, ast.AnnAssign)) and "__slots__" in ast.unparse(node).split("=")[0]:
            names.update(c.value for c in ast.walk(node) if isinstance(c, ast.Constant) and isinstance(c.value, str))
        elif isinstance(node, ast.Call) and ast.unparse(node.func) == "setattr" and len(node.args) > 1 \
                and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str):
            names.add(node.args[1].value)
    return {name for name in names if name.startswith("_") and not name.startswith(DUNDER)}


def _private_reads(tree: ast.Module) -> list[tuple[ast.AST, str, int]]:
    """(object expression, underscore name, line) for every `obj._name` and getattr/hasattr/setattr(obj, "_name")."""
    out: list[tuple[ast.AST, str, int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            out.append((node.value, node.attr, node.lineno))
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
              and node.func.id in ("getattr", "hasattr", "setattr", "delattr") and len(node.args) > 1
              and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str)):
            out.append((node.args[0], node.args[1].value, node.lineno))
    return [(base, name, line) for base, name, line in out if name.startswith("_") and not name.startswith(DUNDER)]


def test_every_module_has_a_layer() -> None:
    assert set(_modules()) <= set(RANK), f"add {sorted(set(_modules()) - set(RANK))} to LAYERS"


def test_modules_import_only_lower_layers_and_no_underscore_names() -> None:
    problems = []
    for name, tree in _modules().items():
        for target, names, line, _node in _imports(tree):
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
            elif isinstance(node, ast.Try) and all(isinstance(n, (ast.Import, ast.ImportFrom)) for n in node.body):
                if header_done:  # an import with its failure explained (kvm/__init__.py's kvm.generated)
                    problems.append(f"kvm/{name}.py:{node.lineno}: import after the module's header")
            elif not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)) and not isinstance(node, ast.If):
                header_done = True
        in_functions = {id(inner) for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
                        for inner in ast.walk(node)}
        problems += [f"kvm/{name}.py:{line}: import of kvm.{target} inside a function"
                     for target, _names, line, node in _imports(tree) if id(node) in in_functions]
    assert not problems, "\n".join(problems)


def _reaches(name: str, tree: ast.Module) -> list[str]:
    """`obj._name` (or getattr(obj, "_name")) is fine only on self/cls, or on a plain name or private attribute
    holding an object of the module's own (a protocol between the objects of one module: the name is one the
    module defines). Through a public attribute (`self.vm._stats`, `v.vm._x`) the object is another's."""
    own = _private_names_defined(tree)
    problems = []
    for base, attr, line in _private_reads(tree):
        if isinstance(base, ast.Name) and base.id in ("self", "cls"):
            continue
        through_public = isinstance(base, ast.Attribute) and not base.attr.startswith("_")
        if (attr in own and not through_public) or attr in NAMEDTUPLE_API:
            continue
        problems.append(f"kvm/{name}.py:{line}: {ast.unparse(base)}.{attr}")
    return problems


def test_no_reaching_into_private_attributes_of_other_modules_objects() -> None:
    problems = [problem for name, tree in _modules().items() for problem in _reaches(name, tree)]
    assert not problems, "\n".join(problems)


def test_the_checks_catch_what_they_are_for() -> None:
    """Each way of breaking the layering, written into a module, is found (the checks cannot pass vacuously)."""
    bad = ast.parse("""
import kvm.vm
from kvm.vcpu import _EINTR
from kvm import system
from .vm import Vm
importlib.import_module("kvm.vm")
def f(v):
    import kvm.system
    getattr(v, "_slot_pages")
    return v.vm._stats
""")
    assert sorted(target for target, *_ in _imports(bad)) == ["system", "system", "vcpu", "vm", "vm", "vm"]
    assert len(_reaches("bad", bad)) == 2
    own_stats = ast.parse("class V:\n    def __init__(self):\n        self._stats = 0\n\ndef f(v):\n    return v.vm._stats\n")
    assert len(_reaches("own", own_stats)) == 1  # a name the module defines, but on another module's object
