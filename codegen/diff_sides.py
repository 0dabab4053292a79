"""The two sides of a diff: a bundled binding, or one rendered from a headers tree.

Both are binding modules of one shape: a bundled one from `kvm.generated`, or one rendered from a
headers tree (`make headers_install` output) by the generator and executed into a fresh module.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import re
import types
from collections.abc import Mapping, Sequence

from .inputs import InputError


@dataclasses.dataclass(frozen=True)
class Binding:
    """One side of a diff: a binding module and where it came from."""

    spec: str  # what the user named: "6.12", "7.2.13", or a path
    source: str  # "bundled" | "headers"
    kernel: str
    linux_version: str
    arch: str
    origin: str
    module: types.ModuleType

    @property
    def label(self) -> str:
        if self.source == "bundled":
            return f"{self.kernel} ({self.linux_version})"
        return f"{self.spec} ({self.linux_version})"


class DiffInputError(InputError):
    """A side of the diff is neither a bundled version nor a headers tree."""


def module_from_source(binding: str, tables: str, name: str) -> types.ModuleType:
    """Execute a binding module's source and its tables' (as `render.binding_source` and
    `render.tables_source` make them) into one fresh module."""
    module = types.ModuleType(name)
    exec(compile(binding, f"<{name}>", "exec"), module.__dict__)
    exec(compile(tables, f"<{name} tables>", "exec"), module.__dict__)
    return module


def _binding_of_module(spec: str, source: str, origin: str, module: types.ModuleType) -> Binding:
    return Binding(spec, source, str(module.KERNEL), str(module.LINUX_VERSION), str(module.ARCH), origin, module)


def _bundled_binding(spec: str, module: types.ModuleType) -> Binding:
    return _binding_of_module(spec, "bundled", f"kvm.generated {module.LINUX_VERSION} {module.ARCH}", module)


def _generated() -> types.ModuleType:
    return importlib.import_module("kvm.generated")


def bundled(version: str, arch: str) -> Binding:
    generated = _generated()

    try:
        module = generated.load(version, arch)
    except LookupError as e:
        raise DiffInputError(str(e)) from None
    return _bundled_binding(version, module)


def bundled_bindings(arches: Sequence[str], sources: Mapping[str, str] | None = None) -> dict[tuple[str, str], Binding]:
    """(kernel, arch) -> Binding for every bundled binding on `arches`.

    By default those importable as kvm.generated; pass `sources` (file name -> text, as
    `render.render_all` returns it) to take them from files about to be written instead.
    """
    bindings: dict[tuple[str, str], Binding] = {}
    if sources is None:
        generated = _generated()

        for kernel, _, arch in generated.BUNDLED:
            if arch in arches:
                bindings[(kernel, arch)] = bundled(kernel, arch)
    else:
        for name, text in sorted(sources.items()):
            if re.fullmatch(r"linux_\w+\.py", name):
                module = module_from_source(text, sources[f"tables_{name}"], f"kvm_bindgen_reports_{name[:-3]}")
                if module.ARCH in arches:
                    bindings[(module.KERNEL, module.ARCH)] = _bundled_binding(module.KERNEL, module)
    return bindings


def from_headers(path: str | os.PathLike[str], arch: str) -> Binding:
    """Build and render a binding from a headers tree, as `kvm-bindgen generate --headers` would."""
    from .arches import ARCHES
    from .build import build
    from .inputs import open_headers_tree
    from .render import binding_source, tables_source

    tree = open_headers_tree(path, ARCHES[arch])
    kernel = ".".join(tree.linux_version.split(".")[:2]) if tree.linux_version != "unknown" else "0.0"
    model = build(tree, kernel, None)
    module = module_from_source(binding_source(model), tables_source(model), f"kvm_bindgen_diff_{model.module_name}")
    return _binding_of_module(str(path), "headers", tree.origin, module)


def _bundled_versions(arch: str) -> list[str]:
    generated = _generated()

    return [f"{k} ({r})" for k, r, a in generated.BUNDLED if a == arch]


def resolve(spec: str, arch: str) -> Binding:
    """A bundled version ("6.12", "6.12.117") or a path to a headers tree, on `arch`."""
    if re.fullmatch(r"\d+\.\d+(\.\d+)?", spec) and not os.path.exists(spec):
        return bundled(spec, arch)
    if os.path.isdir(spec):
        return from_headers(spec, arch)
    if os.sep in spec or spec.startswith("."):
        raise DiffInputError(f"no such directory: {spec}")
    bundled_here = ", ".join(_bundled_versions(arch)) or "none"
    raise DiffInputError(f"{spec!r} is neither a bundled version (bundled for {arch}: {bundled_here}) "
                         "nor a directory holding a headers tree")

