"""`kvm-bindgen diff`: what changed in the KVM ABI between two bindings, and whether it breaks users.

Both sides are binding modules of one shape: a bundled one from `kvm.generated`, or one rendered from
a headers tree (`make headers_install` output) by the generator and executed into a fresh module.
The diff compares ioctls, constants, enum members, capabilities, exit reasons and records (down to
every flattened field), and gives each change a rule from `RULES`, the one place that says what is
an addition, what is an ABI break and why. docs/diff.md documents the rules and the JSON schema.
"""

from __future__ import annotations

import dataclasses
import enum
import importlib
import json
import os
import pathlib
import re
import sys
import types
from collections.abc import Iterable, Mapping
from typing import IO, Any

from kvm.spec import FieldSpec, IoctlSpec, StructSpec

from .inputs import InputError

SCHEMA = "kvm-bindgen-diff"
SCHEMA_VERSION = 1

BREAK = "break"
ADDITION = "addition"
COMPATIBLE = "compatible"
CLASSIFICATIONS = (BREAK, ADDITION, COMPATIBLE)
FORMATS = ("text", "markdown", "json")

# The bundled pairs whose reports are committed under generated/reports/.
REPORT_ARCHES = ("x86_64", "arm64")


# ---------------------------------------------------------------------------------------------
# The classification rules: every change the diff reports names exactly one of these.


@dataclasses.dataclass(frozen=True)
class Rule:
    id: str  # "<kind>.<what>", e.g. "field.moved"
    change: str  # "added" | "removed" | "changed"
    classification: str  # BREAK | ADDITION | COMPATIBLE
    label: str  # how reports say it: "moved", "number changed"
    when: str  # what triggers it
    why: str  # why it is classified so


def _rules(*rows: tuple[str, str, str, str, str, str]) -> dict[str, Rule]:
    return {row[0]: Rule(*row) for row in rows}


RULES: dict[str, Rule] = _rules(
    # id, change, classification, label, when, why
    ("ioctl.added", "added", ADDITION, "added",
     "an ioctl has a number where it had none (new, or newly available on the arch)",
     "existing programs never issue it"),
    ("ioctl.removed", "removed", BREAK, "removed",
     "an ioctl is no longer defined, or no longer available on the arch (moved to UNAVAILABLE_IOCTLS)",
     "programs that issue it no longer build, or get ENOTTY"),
    ("ioctl.number", "changed", BREAK, "number changed",
     "an ioctl's request number changed: its direction, type, nr, or argument size (a record that grew "
     "or shrank, e.g. by a field added at the end)",
     "programs built against the old header issue a number the kernel no longer accepts"),
    ("ioctl.arg_layout", "changed", BREAK, "argument layout changed",
     "the number is the same but the argument's layout changed (a field moved, shrank, grew, was removed, "
     "or a record it contains changed)",
     "the kernel reads and writes the argument's bytes where old programs did not put them"),
    ("ioctl.arg_type", "changed", COMPATIBLE, "argument type renamed",
     "the argument's C type is named differently but has the same size and layout",
     "the same bytes are passed; only source that names the type changes"),
    ("ioctl.capability", "changed", COMPATIBLE, "capability changed",
     "api.rst names a different capability as gating the ioctl (compared only when both sides have api.rst data)",
     "documentation metadata; the binary interface is unchanged"),
    ("ioctl.fd", "changed", COMPATIBLE, "fd kinds changed",
     "api.rst names different fd kinds (system, vm, vcpu, device) for the ioctl (compared only when both sides "
     "have api.rst data)",
     "documentation metadata; the binary interface is unchanged"),
    ("constant.added", "added", ADDITION, "added",
     "a constant is defined that was not",
     "existing programs never use it"),
    ("constant.removed", "removed", BREAK, "removed",
     "a constant is no longer defined",
     "programs that use it no longer build"),
    ("constant.value", "changed", BREAK, "value changed",
     "a constant's value changed",
     "programs built with the old value pass or expect a value the kernel now reads differently"),
    ("enum.added", "added", ADDITION, "added",
     "an enum member exists that did not (only when no constant, capability, exit reason or ioctl change "
     "explains it; otherwise it is listed with that change)",
     "existing programs never use it"),
    ("enum.removed", "removed", BREAK, "removed",
     "an enum member is gone (same proviso)",
     "programs that name it fail"),
    ("enum.value", "changed", BREAK, "value changed",
     "an enum member's value changed (same proviso)",
     "programs built with the old value pass or expect a value the kernel now reads differently"),
    ("capability.added", "added", ADDITION, "added",
     "a KVM_CAP_* is defined that was not",
     "existing programs never ask for it"),
    ("capability.removed", "removed", BREAK, "removed",
     "a KVM_CAP_* is no longer defined",
     "programs that check or enable it no longer build"),
    ("capability.value", "changed", BREAK, "number changed",
     "a KVM_CAP_*'s number changed",
     "KVM_CHECK_EXTENSION and KVM_ENABLE_CAP from old programs ask for a different capability"),
    ("exit_reason.added", "added", ADDITION, "added",
     "a KVM_EXIT_* reason is defined that was not",
     "old programs do not see it unless they enable what produces it"),
    ("exit_reason.removed", "removed", BREAK, "removed",
     "a KVM_EXIT_* reason is no longer defined",
     "programs that handle it no longer build"),
    ("exit_reason.value", "changed", BREAK, "number changed",
     "a KVM_EXIT_* reason's number changed",
     "old programs misread kvm_run.exit_reason"),
    ("record.added", "added", ADDITION, "added",
     "a struct or union is defined that was not",
     "existing programs never use it"),
    ("record.removed", "removed", BREAK, "removed",
     "a struct or union is no longer defined (on the arch)",
     "programs that use it no longer build"),
    ("record.kind", "changed", BREAK, "kind changed",
     "a struct became a union or the reverse",
     "its members overlap differently"),
    ("record.shrank", "changed", BREAK, "shrank",
     "a record's size decreased",
     "old programs pass or map more bytes than the kernel expects, and anything after it moves"),
    ("record.grew", "changed", COMPATIBLE, "grew",
     "a record's size increased",
     "by itself harmless to old programs, which use the prefix they know; where the size is part of an "
     "ioctl number, or the record is embedded in another, those changes are reported as breaks"),
    ("record.align", "changed", BREAK, "alignment changed",
     "a record's alignment changed",
     "it is placed differently inside other records and arrays"),
    ("record.header", "changed", COMPATIBLE, "moved to another header",
     "a record is defined in a different header (e.g. moved from linux/kvm.h to asm/kvm.h)",
     "the layout is unchanged; only where it is declared"),
    ("field.added", "added", ADDITION, "added",
     "a field exists that did not (in padding, a union, or at the end)",
     "old programs do not set it and, by the kernel's zero-padding convention, mean 'unused'; if other "
     "fields moved to make room, those moves are reported as breaks"),
    ("field.removed", "removed", BREAK, "removed",
     "a field is gone",
     "programs that name it no longer build, and its bytes may mean something else"),
    ("field.renamed", "changed", BREAK, "renamed",
     "a field has a new name, with the same offset, size and type",
     "the bytes are unchanged but programs that name the field no longer build"),
    ("field.padding_reused", "changed", COMPATIBLE, "padding reused",
     "a padding or reserved field (pad*, padding*, reserved*, rsvd*, unused*) is gone and new fields use its bytes",
     "old programs zero padding, which the new fields read as 'unused'"),
    ("field.moved", "changed", BREAK, "moved",
     "a field's offset (or bit position) changed",
     "old programs read and write it at the old place"),
    ("field.shrank", "changed", BREAK, "shrank",
     "a field's size (or bit width) decreased",
     "old programs write bytes the kernel now reads as something else, or values that no longer fit"),
    ("field.grew", "changed", BREAK, "grew",
     "a field's size (or bit width) increased",
     "old programs leave the added bytes to whatever was there before"),
    ("field.grew_in_place", "changed", COMPATIBLE, "grew in place",
     "a field whose type is a record (named, or an anonymous struct or union member) that only grew at its end "
     "(nothing in it moved, shrank or went away) now also covers "
     "bytes that were padding, unused, or other members of the same union",
     "old programs leave those bytes zero, which the new tail reads as 'unused'; nothing else moved"),
    ("field.retyped", "changed", COMPATIBLE, "retyped",
     "a field's C type changed, with the same offset and size (signedness, a typedef, element type)",
     "the same bytes are in the same place; the value's meaning should be reviewed"),
    ("field.nested", "changed", BREAK, "nested layout changed",
     "a field's type is a record whose layout changed (the changes are listed under that record)",
     "the field's bytes are laid out differently inside the containing record"),
)

# The record and field rules that change where bytes are: they make the ioctls passing the record, and
# the records containing it, break too (ioctl.arg_layout, field.nested).
LAYOUT_BREAKS = frozenset({"record.kind", "record.shrank", "record.align", "field.removed", "field.moved",
                           "field.shrank", "field.grew", "field.nested"})

KINDS = ("ioctl", "record", "field", "constant", "enum_member", "capability", "exit_reason")
_KIND_TITLES = {"ioctl": "ioctls", "record": "structs and unions", "field": "fields", "constant": "constants",
                "enum_member": "enum members", "capability": "capabilities", "exit_reason": "exit reasons"}
_RULE_KIND = {"enum": "enum_member"}
_PADDING = re.compile(r"^_*(pad|padding|reserved|rsvd|unused)\w*$", re.I)


def rule_kind(rule_id: str) -> str:
    prefix = rule_id.split(".", 1)[0]
    return _RULE_KIND.get(prefix, prefix)


# ---------------------------------------------------------------------------------------------
# Changes and reports


@dataclasses.dataclass(frozen=True)
class Change:
    rule: str  # a key of RULES
    name: str  # the ioctl, constant, "Cap.X" enum member, capability, exit reason, or record
    field: str | None  # field changes: the field's designator on the old side ("io.port") or the new for additions
    old: Any  # JSON-ready value on the old side (None when absent); see docs/diff.md
    new: Any
    detail: str  # what changed, in words
    related: tuple[str, ...] = ()  # ioctls using a record; enum members standing for the same constant

    @property
    def kind(self) -> str:
        return rule_kind(self.rule)

    @property
    def change(self) -> str:
        return RULES[self.rule].change

    @property
    def classification(self) -> str:
        return RULES[self.rule].classification

    @property
    def reason(self) -> str:
        return RULES[self.rule].why

    def sort_key(self) -> tuple[int, int, str, str, str]:
        return (CLASSIFICATIONS.index(self.classification), KINDS.index(self.kind if self.kind != "field" else "record"),
                self.name, self.field or "", self.rule)


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


@dataclasses.dataclass(frozen=True)
class Report:
    old: Binding
    new: Binding
    changes: tuple[Change, ...]

    @property
    def mode(self) -> str:
        return "arches" if self.old.arch != self.new.arch else "versions"

    def counts(self) -> dict[str, int]:
        return {c: sum(1 for ch in self.changes if ch.classification == c) for c in CLASSIFICATIONS}

    @property
    def breaks(self) -> tuple[Change, ...]:
        return tuple(c for c in self.changes if c.classification == BREAK)


# ---------------------------------------------------------------------------------------------
# Loading the two sides


class DiffInputError(InputError):
    """A side of the diff is neither a bundled version nor a headers tree."""


def module_from_source(source: str, name: str) -> types.ModuleType:
    """Execute a binding module's source (as `render.binding_source` makes it) into a fresh module."""
    module = types.ModuleType(name)
    exec(compile(source, f"<{name}>", "exec"), module.__dict__)
    return module


def _binding_of_module(spec: str, source: str, origin: str, module: types.ModuleType) -> Binding:
    return Binding(spec, source, str(module.KERNEL), str(module.LINUX_VERSION), str(module.ARCH), origin, module)


def _generated() -> types.ModuleType:
    return importlib.import_module("kvm.generated")


def bundled(version: str, arch: str) -> Binding:
    generated = _generated()

    try:
        module = generated.load(version, arch)
    except LookupError as e:
        raise DiffInputError(str(e)) from None
    return _binding_of_module(version, "bundled", f"kvm.generated {module.LINUX_VERSION} {arch}", module)


def from_headers(path: str | os.PathLike[str], arch: str) -> Binding:
    """Build and render a binding from a headers tree, as `kvm-bindgen generate --headers` would."""
    from .arches import ARCHES
    from .build import build
    from .inputs import open_headers_tree
    from .render import binding_source

    tree = open_headers_tree(path, ARCHES[arch])
    kernel = ".".join(tree.linux_version.split(".")[:2]) if tree.linux_version != "unknown" else "0.0"
    model = build(tree, kernel, None)
    module = module_from_source(binding_source(model), f"kvm_bindgen_diff_{model.module_name}")
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


# ---------------------------------------------------------------------------------------------
# The diff


def _gate_change(a: IoctlSpec, b: IoctlSpec) -> str | None:
    """How the capability gating the ioctl changed, fd kind by fd kind (on the fds both issue it on),
    or None."""
    fds = sorted(a.fd & b.fd) or [""]  # "": no fd in common, compare the capability named first
    changes = [(fd, a.capability_for(fd), b.capability_for(fd)) for fd in fds]
    changes = [(fd, old, new) for fd, old, new in changes if old != new]
    if not changes:
        return None
    if len(changes) == len(fds) and len({(old, new) for _, old, new in changes}) == 1:
        _, old, new = changes[0]
        return f"gated by {old or 'nothing'} -> {new or 'nothing'}"
    return "; ".join(f"on {fd} fds gated by {old or 'nothing'} -> {new or 'nothing'}" for fd, old, new in changes)


def _ioctl_json(spec: IoctlSpec) -> dict[str, Any]:
    return {"number": spec.number, "direction": spec.direction, "size": spec.size, "arg_type": spec.arg_type,
            "fd": sorted(spec.fd), "capability": spec.capability,
            "capability_on_fd": {fd: cap for fd, cap in spec.capability_on_fd}}


def _record_json(spec: StructSpec) -> dict[str, Any]:
    return {"kind": spec.kind, "size": spec.size, "align": spec.align, "header": spec.header}


def _field_json(spec: FieldSpec) -> dict[str, Any]:
    return {"name": spec.name, "offset": spec.offset, "size": spec.size, "ctype": spec.ctype,
            "bit_offset": spec.bit_offset, "bit_width": spec.bit_width}


def _base_type(ctype: str | None) -> str:
    return (ctype or "").split("[", 1)[0].strip()


def _enum_classes(module: types.ModuleType) -> dict[str, type[enum.Enum]]:
    out = {}
    for name, obj in vars(module).items():
        if isinstance(obj, type) and issubclass(obj, enum.Enum) and obj.__module__ == module.__name__:
            out[name] = obj
    return out


def _enum_prefix(cls: type[enum.Enum]) -> str:
    """The constants' prefix an enum class stands for, from its docstring ("KVM_CAP_* constants.")."""
    m = re.match(r"\s*(\w+)\* constants", cls.__doc__ or "")
    if m:
        return m.group(1)
    from .build import ENUM_GROUPS

    return next((prefix for name, prefix, _, _ in ENUM_GROUPS if name == cls.__name__), "")


def _enum_members(module: types.ModuleType) -> dict[str, tuple[int, str]]:
    """"Class.MEMBER" -> (value, the constant it stands for), aliases included."""
    out = {}
    for cls_name, cls in _enum_classes(module).items():
        prefix = _enum_prefix(cls)
        for member, value in cls.__members__.items():
            constant = prefix + (member[1:] if member.startswith("_") and member[1:2].isdigit() else member)
            out[f"{cls_name}.{member}"] = (int(value.value), constant)
    return out


def _exit_reasons(module: types.ModuleType) -> dict[str, int]:
    cls = _enum_classes(module).get("ExitReason")
    if cls is None:
        return {}
    prefix = _enum_prefix(cls) or "KVM_EXIT_"
    return {prefix + member: int(value.value) for member, value in cls.__members__.items()}


class _Differ:
    def __init__(self, old: types.ModuleType, new: types.ModuleType) -> None:
        self.old = old
        self.new = new
        self.changes: list[Change] = []
        self.record_changes: dict[str, list[Change]] = {}  # record name -> its record and field changes

    def add(self, rule: str, name: str, old: Any, new: Any, detail: str, field: str | None = None) -> Change:
        assert rule in RULES, rule
        change = Change(rule, name, field, old, new, detail)
        self.changes.append(change)
        if rule_kind(rule) in ("record", "field"):
            self.record_changes.setdefault(name, []).append(change)
        return change

    def run(self) -> list[Change]:
        self.records()
        self.grown_in_place()
        self.nested()
        self.ioctls()
        self.values()
        self.annotate_records()
        return sorted(self.changes, key=Change.sort_key)

    # -- records and fields

    def records(self) -> None:
        old, new = self.old.STRUCTS, self.new.STRUCTS
        for name in sorted(set(old) - set(new)):
            self.add("record.removed", name, _record_json(old[name]), None,
                     f"{old[name].kind} of {old[name].size} bytes from {old[name].header}")
        for name in sorted(set(new) - set(old)):
            self.add("record.added", name, None, _record_json(new[name]),
                     f"{new[name].kind} of {new[name].size} bytes in {new[name].header}")
        for name in sorted(set(old) & set(new)):
            self.record(name, old[name], new[name])

    def record(self, name: str, a: StructSpec, b: StructSpec) -> None:
        aj, bj = _record_json(a), _record_json(b)
        if a.kind != b.kind:
            self.add("record.kind", name, aj, bj, f"{a.kind} -> {b.kind}")
        if b.size < a.size:
            self.add("record.shrank", name, aj, bj, f"size {a.size} -> {b.size} bytes")
        elif b.size > a.size:
            self.add("record.grew", name, aj, bj, f"size {a.size} -> {b.size} bytes")
        if a.align != b.align:
            self.add("record.align", name, aj, bj, f"alignment {a.align} -> {b.align}")
        if a.header != b.header:
            self.add("record.header", name, aj, bj, f"declared in {a.header} -> {b.header}")
        self.fields(name, a, b)

    def fields(self, name: str, a: StructSpec, b: StructSpec) -> None:
        old = {f.name: f for f in a.fields}
        new = {f.name: f for f in b.fields}
        removed = [old[k] for k in old if k not in new]
        added = [new[k] for k in new if k not in old]
        for key in [k for k in old if k in new]:
            f, g = old[key], new[key]
            if _is_padding(key) and _shape(f) != _shape(g) and f.bit_width is None and g.bit_width is None:
                vacated = sorted(set(range(f.offset, f.offset + f.size)) - set(range(g.offset, g.offset + g.size)))
                users = [h.name for h in added if any(h.offset <= i < h.offset + h.size for i in vacated)]
                inside = f.offset <= g.offset and g.offset + g.size <= f.offset + f.size
                if inside and vacated and _covered_bytes(vacated, [h for h in added if h.name in users]):
                    self.add("field.padding_reused", name, _field_json(f), _field_json(g),
                             f"{f.ctype} at offset {f.offset} -> {g.ctype} at offset {g.offset}; "
                             f"the bytes it gave up are now {', '.join(users)}", key)
                    continue
            self.field(name, f, g)
        for f in list(removed):
            twin = next((g for g in added if _shape(g) == _shape(f)), None)
            if twin is None:
                continue
            removed.remove(f)
            added.remove(twin)
            rule = "field.padding_reused" if _is_padding(f.name) else "field.renamed"
            self.add(rule, name, _field_json(f), _field_json(twin),
                     f"renamed {f.name} -> {twin.name} ({f.ctype} at offset {f.offset})", f.name)
        for f in removed:
            users = [g.name for g in added if g.offset < f.offset + f.size and f.offset < g.offset + max(g.size, 1)]
            if _is_padding(f.name) and _covered(f, [g for g in added if g.name in users]):
                self.add("field.padding_reused", name, _field_json(f), None,
                         f"{f.ctype} at offset {f.offset} removed; its bytes are now {', '.join(users)}", f.name)
            else:
                self.add("field.removed", name, _field_json(f), None,
                         f"was {f.ctype} at offset {f.offset}, {f.size} bytes", f.name)
        for g in added:
            where = f"bit {g.bit_offset}, {g.bit_width} bits" if g.bit_width is not None else f"{g.size} bytes"
            self.add("field.added", name, None, _field_json(g), f"{g.ctype} at offset {g.offset}, {where}", g.name)

    def field(self, name: str, a: FieldSpec, b: FieldSpec) -> None:
        aj, bj = _field_json(a), _field_json(b)
        if a.offset != b.offset or a.bit_offset != b.bit_offset:
            bits = f" (bit {a.bit_offset} -> {b.bit_offset})" if a.bit_offset != b.bit_offset else ""
            self.add("field.moved", name, aj, bj, f"offset {a.offset} -> {b.offset}{bits}", a.name)
        types_ = f" ({a.ctype} -> {b.ctype})" if a.ctype != b.ctype else ""
        if a.bit_width is not None and b.bit_width is not None and a.bit_width != b.bit_width:
            rule = "field.shrank" if b.bit_width < a.bit_width else "field.grew"
            self.add(rule, name, aj, bj, f"width {a.bit_width} -> {b.bit_width} bits{types_}", a.name)
        elif a.size != b.size:
            rule = "field.shrank" if b.size < a.size else "field.grew"
            self.add(rule, name, aj, bj, f"size {a.size} -> {b.size} bytes{types_}", a.name)
        elif _ctype(a.ctype) != _ctype(b.ctype):
            self.add("field.retyped", name, aj, bj, f"{a.ctype} -> {b.ctype}, same offset and size", a.name)

    def grown_in_place(self) -> None:
        """Reclassify field.grew as field.grew_in_place where a record type only grew into free bytes.

        The record type is a named one (its own changes tell) or an anonymous member (its flattened
        members' changes tell); inner members are settled first, so repeat until nothing changes.
        """
        again = True
        while again:
            again = False
            for i, c in enumerate(self.changes):
                if c.rule != "field.grew" or c.old["ctype"] != c.new["ctype"] or c.old["offset"] != c.new["offset"]:
                    continue
                base = _base_type(c.new["ctype"])
                if base in ("struct {...}", "union {...}"):
                    inner = [ch for ch in self.record_changes[c.name] if (ch.field or "").startswith(c.old["name"] + ".")]
                elif base != c.name and base in self.old.STRUCTS and base in self.new.STRUCTS:
                    inner = self.record_changes.get(base, [])
                else:
                    continue
                if any(ch.rule in LAYOUT_BREAKS for ch in inner):
                    continue
                start, end = c.old["offset"] + c.old["size"], c.new["offset"] + c.new["size"]
                fields = self.old.STRUCTS[c.name].fields
                if all(_free_for(c.old["name"], c.old["offset"], f, fields) for f in fields
                       if f.offset < end and start < f.offset + f.size):
                    relaxed = dataclasses.replace(c, rule="field.grew_in_place")
                    self.changes[i] = relaxed
                    mine = self.record_changes[c.name]
                    mine[mine.index(c)] = relaxed
                    again = True

    def broken_records(self) -> set[str]:
        """Kept records whose layout changed (a rename breaks source, not the layout)."""
        return {n for n, cs in self.record_changes.items() if any(c.rule in LAYOUT_BREAKS for c in cs)}

    def nested(self) -> None:
        """A record whose field's record type changed layout changed too: repeat until nothing new."""
        old, new = self.old.STRUCTS, self.new.STRUCTS
        flagged: set[tuple[str, str]] = set()
        while True:
            broken = self.broken_records()
            found = False
            for name in sorted(set(old) & set(new)):
                olds = {f.name: f for f in old[name].fields}
                for f in new[name].fields:
                    base = _base_type(f.ctype)
                    before = olds.get(f.name)
                    if (before is None or before.ctype != f.ctype or base not in broken or base == name
                            or (name, f.name) in flagged or base not in old):
                        continue
                    if any(c.field == f.name for c in self.record_changes.get(name, [])):
                        continue  # already reported (moved, resized)
                    flagged.add((name, f.name))
                    first = _first_break(self.record_changes[base])
                    self.add("field.nested", name, _field_json(before), _field_json(f),
                             f"{base} changed layout ({first})", f.name)
                    found = True
            if not found:
                return

    def annotate_records(self) -> None:
        """Name the ioctls that pass each changed record (directly or inside another record)."""
        users = _record_users(self.old)
        for name, more in _record_users(self.new).items():
            users[name] = users.get(name, set()) | more
        self.changes = [dataclasses.replace(c, related=tuple(sorted(users.get(c.name, set()))))
                        if c.kind in ("record", "field") and users.get(c.name) else c for c in self.changes]

    # -- ioctls

    def ioctls(self) -> None:
        old, new = self.old.IOCTLS, self.new.IOCTLS
        old_na, new_na = self.old.UNAVAILABLE_IOCTLS, self.new.UNAVAILABLE_IOCTLS
        annotated = _annotated(self.old) and _annotated(self.new)
        arch = self.new.ARCH
        for name in sorted(set(old) | set(new)):
            a, b = old.get(name), new.get(name)
            if a is not None and b is None:
                why = (f"no longer available on {arch}: {new_na[name]}" if name in new_na else "no longer defined")
                self.add("ioctl.removed", name, _ioctl_json(a), None, f"{a.number:#x}; {why}")
            elif a is None and b is not None:
                why = f"was unavailable: {old_na[name]}" if name in old_na else "new"
                self.add("ioctl.added", name, None, _ioctl_json(b), f"{b.number:#x}; {why}")
            elif a is not None and b is not None:
                self.ioctl(name, a, b, annotated)

    def ioctl(self, name: str, a: IoctlSpec, b: IoctlSpec, annotated: bool) -> None:
        aj, bj = _ioctl_json(a), _ioctl_json(b)
        if a.number != b.number:
            self.add("ioctl.number", name, aj, bj, f"{a.number:#x} -> {b.number:#x}: {self.number_why(a, b)}")
        elif a.arg_type != b.arg_type or _base_type(a.arg_type) in self.broken_records():
            layout = self.arg_layout(a, b)
            if layout is not None:
                self.add("ioctl.arg_layout", name, aj, bj, layout)
            else:
                self.add("ioctl.arg_type", name, aj, bj, f"argument {a.arg_type} -> {b.arg_type}, same layout")
        gate_change = _gate_change(a, b) if annotated else None
        if gate_change:
            self.add("ioctl.capability", name, aj, bj, gate_change)
        if annotated and a.fd != b.fd:
            self.add("ioctl.fd", name, aj, bj,
                     f"issued on {', '.join(sorted(a.fd)) or '?'} -> {', '.join(sorted(b.fd)) or '?'}")

    def number_why(self, a: IoctlSpec, b: IoctlSpec) -> str:
        parts = []
        if a.direction != b.direction:
            parts.append(f"direction {a.direction} -> {b.direction}")
        if (a.number >> 8) & 0xFF != (b.number >> 8) & 0xFF:
            parts.append(f"type {(a.number >> 8) & 0xFF:#x} -> {(b.number >> 8) & 0xFF:#x}")
        if a.number & 0xFF != b.number & 0xFF:
            parts.append(f"nr {a.number & 0xFF:#x} -> {b.number & 0xFF:#x}")
        if a.arg_type != b.arg_type:
            parts.append(f"argument {a.arg_type} -> {b.arg_type}")
        if a.size != b.size:
            size = f"size {a.size} -> {b.size}"
            base = _base_type(b.arg_type)
            if base == _base_type(a.arg_type) and base in self.old.STRUCTS and base in self.new.STRUCTS:
                size += f" because {self.resize_why(base)}"
            parts.append(size)
        return "; ".join(parts) or "encoding differs"

    def resize_why(self, record: str) -> str:
        a, b = self.old.STRUCTS[record], self.new.STRUCTS[record]
        verb = "grew" if b.size > a.size else "shrank"
        changes = self.record_changes.get(record, [])
        said = [f"{c.field} {c.change}" + (f" at offset {c.new['offset']}" if c.change == "added" else "")
                for c in changes if c.kind == "field" and c.rule in ("field.added", "field.removed", "field.grew",
                                                                      "field.shrank", "field.nested")]
        more = f" ({_first_n(said, 3)})" if said else ""
        return f"{record} {verb} from {a.size} to {b.size} bytes{more}"

    def arg_layout(self, a: IoctlSpec, b: IoctlSpec) -> str | None:
        """Why the argument's layout differs, or None when it is the same."""
        ab, bb = _base_type(a.arg_type), _base_type(b.arg_type)
        old, new = self.old.STRUCTS, self.new.STRUCTS
        if ab == bb:
            if ab in self.broken_records():
                return f"{ab} changed layout ({_first_break(self.record_changes[ab])})"
            return None
        if ab in old and bb in new:
            same = [_shape(f) for f in old[ab].fields] == [_shape(f) for f in new[bb].fields]
            return None if same else f"argument {a.arg_type} -> {b.arg_type}, laid out differently"
        if (ab in old) != (bb in new):
            return f"argument {a.arg_type} -> {b.arg_type}"
        return None

    # -- constants, enum members, capabilities, exit reasons

    def values(self) -> None:
        old, new = self.old, self.new
        ioctl_names = set(old.IOCTLS) | set(old.UNAVAILABLE_IOCTLS) | set(new.IOCTLS) | set(new.UNAVAILABLE_IOCTLS)
        caps_a = {n: c.value for n, c in old.CAPS.items()}
        caps_b = {n: c.value for n, c in new.CAPS.items()}
        exits_a, exits_b = _exit_reasons(old), _exit_reasons(new)
        special = ioctl_names | set(caps_a) | set(caps_b) | set(exits_a) | set(exits_b)
        consts_a = {n: v for n, v in old.CONSTANTS.items() if n not in special}
        consts_b = {n: v for n, v in new.CONSTANTS.items() if n not in special}
        by_name: dict[tuple[str, str], int] = {}  # (name, change) -> index in self.changes
        for kind, a, b in (("capability", caps_a, caps_b), ("exit_reason", exits_a, exits_b),
                           ("constant", consts_a, consts_b)):
            for name in sorted(set(a) | set(b)):
                va, vb = a.get(name), b.get(name)
                if va == vb:
                    continue
                if vb is None:
                    added = self.add(f"{kind}.removed", name, va, None, f"was {_num(va)}")
                elif va is None:
                    added = self.add(f"{kind}.added", name, None, vb, f"= {_num(vb)}")
                else:
                    added = self.add(f"{kind}.value", name, va, vb, f"{_num(va)} -> {_num(vb)}")
                by_name[(name, added.change)] = len(self.changes) - 1
        for i, c in enumerate(self.changes):
            if c.kind == "ioctl" and c.rule in ("ioctl.added", "ioctl.removed", "ioctl.number"):
                by_name[(c.name, c.change)] = i
        members_a, members_b = _enum_members(old), _enum_members(new)
        for member in sorted(set(members_a) | set(members_b)):
            ma, mb = members_a.get(member), members_b.get(member)
            if ma is not None and mb is not None and ma[0] == mb[0]:
                continue
            change = "removed" if mb is None else "added" if ma is None else "changed"
            backing = mb[1] if mb is not None else ma[1] if ma is not None else member
            at = by_name.get((backing, change))
            if at is not None:
                c = self.changes[at]
                self.changes[at] = dataclasses.replace(c, related=tuple(sorted(c.related + (member,))))
                continue
            rule = {"removed": "enum.removed", "added": "enum.added", "changed": "enum.value"}[change]
            va, vb = (ma[0] if ma else None), (mb[0] if mb else None)
            detail = (f"was {_num(va)}" if vb is None else f"= {_num(vb)}" if va is None else f"{_num(va)} -> {_num(vb)}")
            self.add(rule, member, va, vb, f"{detail} (for {backing})")


def _num(value: int | None) -> str:
    if value is None:
        return "undefined"
    return f"{value:#x}" if abs(value) >= 0x10000 else str(value)


def _first_n(items: list[str], n: int) -> str:
    shown = "; ".join(items[:n])
    return shown + (f"; and {len(items) - n} more" if len(items) > n else "")


def _first_break(changes: list[Change]) -> str:
    said = [(f"{c.field}: " if c.field else "") + c.detail for c in changes if c.rule in LAYOUT_BREAKS]
    return _first_n(said, 2)


def _ctype(ctype: str) -> str:
    """A C type for comparing: GNU's zero-length array `T[0]` is the same as the flexible `T[]`."""
    return ctype[:-3] + "[]" if ctype.endswith("[0]") else ctype


def _shape(f: FieldSpec) -> tuple[int, int, str, int | None, int | None]:
    return (f.offset, f.size, _ctype(f.ctype), f.bit_offset, f.bit_width)


def _is_padding(designator: str) -> bool:
    return bool(_PADDING.match(designator.rsplit(".", 1)[-1].split("[", 1)[0]))


def _free_for(name: str, offset: int, other: FieldSpec, fields: Iterable[FieldSpec]) -> bool:
    """Whether field `name` (at `offset`) may grow into `other`'s bytes: `other` is padding, encloses it,
    or is another member of the same union (one starting where it starts) or inside one."""
    if _is_padding(other.name) or other.name == name or name.startswith(other.name + "."):
        return True
    siblings = {f.name for f in fields if f.offset == offset and f.size > 0 and f.name != name
                and not name.startswith(f.name + ".")}
    return other.name in siblings or any(other.name.startswith(s + ".") for s in siblings)


def _covered(f: FieldSpec, others: list[FieldSpec]) -> bool:
    """Whether `others` together cover every byte of `f`."""
    return f.size > 0 and _covered_bytes(range(f.offset, f.offset + f.size), others)


def _covered_bytes(offsets: Iterable[int], others: list[FieldSpec]) -> bool:
    covered: set[int] = set()
    for g in others:
        covered.update(range(g.offset, g.offset + g.size))
    return bool(covered) and all(i in covered for i in offsets)


def _annotated(module: types.ModuleType) -> bool:
    """Whether a binding carries api.rst metadata (a headers tree without --api-rst does not)."""
    return any(i.fd or i.capability for i in module.IOCTLS.values())


def _record_users(module: types.ModuleType) -> dict[str, set[str]]:
    """Record name -> the ioctls whose argument is it, or contains it at any depth."""
    structs: dict[str, StructSpec] = module.STRUCTS
    users: dict[str, set[str]] = {}
    for ioctl in module.IOCTLS.values():
        pending, seen = [_base_type(ioctl.arg_type)], set()
        while pending:
            record = pending.pop()
            if record in seen or record not in structs:
                continue
            seen.add(record)
            users.setdefault(record, set()).add(ioctl.name)
            pending += [_base_type(f.ctype) for f in structs[record].fields]
    return users


def diff(old: Binding, new: Binding) -> Report:
    return Report(old, new, tuple(_Differ(old.module, new.module).run()))


# ---------------------------------------------------------------------------------------------
# Formats


def to_json(report: Report) -> dict[str, Any]:
    """The JSON document (schema in docs/diff.md)."""

    def side(b: Binding) -> dict[str, Any]:
        return {"spec": b.spec, "source": b.source, "kernel": b.kernel, "linux_version": b.linux_version,
                "arch": b.arch, "origin": b.origin}

    return {
        "schema": SCHEMA,
        "version": SCHEMA_VERSION,
        "mode": report.mode,
        "old": side(report.old),
        "new": side(report.new),
        "counts": report.counts(),
        "changes": [{"kind": c.kind, "name": c.name, "field": c.field, "change": c.change, "rule": c.rule,
                     "classification": c.classification, "old": c.old, "new": c.new, "detail": c.detail,
                     "reason": c.reason, "related": list(c.related)} for c in report.changes],
    }


def _title(report: Report) -> str:
    old, new = report.old, report.new
    if report.mode == "arches":
        if old.label == new.label:
            return f"KVM ABI on {old.arch} vs {new.arch}, Linux {old.label}"
        return f"KVM ABI of {old.label} on {old.arch} vs {new.label} on {new.arch}"
    return f"KVM ABI diff {old.label} -> {new.label} on {new.arch}"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _summary(report: Report) -> str:
    if not report.changes:
        return "no differences"
    n = report.counts()
    text = (f"{_plural(n[BREAK], 'ABI break')}, {_plural(n[ADDITION], 'addition')}, "
            f"{_plural(n[COMPATIBLE], 'compatible change')}")
    if report.mode == "arches":
        sizes = [f"{len(changes)} {title[0].lower() + title[1:]}" for title, changes in _sections(report)]
        text = f"{', '.join(sizes)} (for a program moving from {report.old.arch} to {report.new.arch}: {text})"
    return text


def _only(c: Change, which: str) -> bool:
    return c.kind != "field" and c.change == which


def _sections(report: Report) -> list[tuple[str, list[Change]]]:
    """Headed groups in display order: breaks first (versions), or what only one arch has first (arches)."""
    changes = list(report.changes)
    if report.mode == "versions":
        titles = {BREAK: "ABI breaks", ADDITION: "Additions", COMPATIBLE: "Compatible changes"}
        return [(titles[k], [c for c in changes if c.classification == k]) for k in CLASSIFICATIONS]
    return [(f"Only on {report.old.arch}", [c for c in changes if _only(c, "removed")]),
            (f"Only on {report.new.arch}", [c for c in changes if _only(c, "added")]),
            ("Different", [c for c in changes if not _only(c, "removed") and not _only(c, "added")])]


def _display_order(changes: list[Change]) -> list[Change]:
    """Grouped by kind (fields with their record), then by name."""
    return sorted(changes, key=lambda c: (KINDS.index("record" if c.kind == "field" else c.kind), c.name,
                                          c.field is not None, c.field or "", c.rule))


def _describe(c: Change, report: Report) -> str:
    """"what: detail [related]" for one change."""
    what = RULES[c.rule].label
    if report.mode == "arches" and c.kind != "field" and c.change in ("added", "removed"):
        what = f"only on {report.new.arch if c.change == 'added' else report.old.arch}"
    if c.field is not None:
        what = f"field {c.field} {what}"
    text = f"{what}: {c.detail}"
    if c.related:
        text += f" ({'used by' if c.kind in ('record', 'field') else 'also'} {', '.join(c.related)})"
    return text


def render_text(report: Report) -> str:
    out = [_title(report), _summary(report)]
    for title, changes in _sections(report):
        if not changes:
            continue
        out += ["", f"{title} ({len(changes)})"]
        kind = ""
        for c in _display_order(changes):
            group = "record" if c.kind == "field" else c.kind
            if group != kind:
                kind = group
                out.append(f"  {_KIND_TITLES[kind]}")
            out.append(f"    {c.name}: {_describe(c, report)}  [{c.classification}: {c.rule}]")
    return "\n".join(out) + "\n"


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("<", "&lt;").replace("\n", " ")


def render_markdown(report: Report) -> str:
    """For a pull-request comment: the breaks in full, the rest folded."""
    out = [f"### {_md(_title(report))}", "", f"**{_md(_summary(report))}**"]
    for title, changes in _sections(report):
        if not changes:
            continue
        folded = not (report.mode == "versions" and title == "ABI breaks")
        out.append("")
        if folded:
            out += [f"<details><summary>{title} ({len(changes)})</summary>", ""]
        else:
            out += [f"#### {title} ({len(changes)})", ""]
        out += ["| kind | name | change | rule |", "|---|---|---|---|"]
        for c in _display_order(changes):
            kind = _KIND_TITLES["record" if c.kind == "field" else c.kind]
            out.append(f"| {kind} | `{c.name}` | {_md(_describe(c, report))} | {c.classification}: `{c.rule}` |")
        if folded:
            out += ["", "</details>"]
    return "\n".join(out) + "\n"


def render(report: Report, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(to_json(report), indent=2, sort_keys=False) + "\n"
    if fmt == "markdown":
        return render_markdown(report)
    if fmt == "text":
        return render_text(report)
    raise ValueError(f"unknown format {fmt!r}; one of {', '.join(FORMATS)}")


# ---------------------------------------------------------------------------------------------
# The command and the committed reports


def command(old: str, new: str | None, arch: str | None, vs_arch: str | None, fmt: str,
            fail_on_abi_break: bool, out: IO[str] | None = None, err: IO[str] | None = None) -> int:
    """`kvm-bindgen diff`: 0 on success, 1 with `fail_on_abi_break` when a break is found, 2 on bad input."""
    from .arches import ARCHES, host_arch

    out = out or sys.stdout
    err = err or sys.stderr
    old_arch = arch or host_arch() or "x86_64"
    for name in (old_arch, vs_arch):
        if name is not None and name not in ARCHES:
            print(f"kvm-bindgen diff: unknown arch {name!r}; one of {', '.join(sorted(ARCHES))}", file=err)
            return 2
    if new is None and vs_arch is None:
        print("kvm-bindgen diff: NEW is missing: give two versions or headers trees (OLD NEW), "
              "or one and --vs-arch ARCH to compare two arches", file=err)
        return 2
    sides = []
    for role, spec, side_arch in (("OLD", old, old_arch), ("NEW", new if new is not None else old, vs_arch or old_arch)):
        try:
            sides.append(resolve(spec, side_arch))
        except InputError as e:
            print(f"kvm-bindgen diff: {role} ({spec}): {e}", file=err)
            return 2
    a, b = sides
    report = diff(a, b)
    out.write(render(report, fmt))
    return 1 if fail_on_abi_break and report.breaks else 0


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(x) for x in version.split(".") if x.isdigit())


def reports(sources: Mapping[str, str] | None = None) -> dict[str, str]:
    """{"reports/<old>-<new>-<arch>.md": markdown} for each consecutive pair of bundled kernels on REPORT_ARCHES.

    Built from the bundled binding modules: by default those importable as kvm.generated; pass
    `sources` (file name -> text, as `render.render_all` returns it) to build them from files about to
    be written instead, so the reports never lag the bindings they describe.
    """
    modules: dict[tuple[str, str], Binding] = {}
    if sources is None:
        generated = _generated()

        for kernel, _, arch in generated.BUNDLED:
            if arch in REPORT_ARCHES:
                modules[(kernel, arch)] = bundled(kernel, arch)
    else:
        for name, text in sorted(sources.items()):
            if re.fullmatch(r"linux_\w+\.py", name):
                module = module_from_source(text, f"kvm_bindgen_reports_{name[:-3]}")
                if module.ARCH in REPORT_ARCHES:
                    modules[(module.KERNEL, module.ARCH)] = _binding_of_module(
                        module.KERNEL, "bundled", f"kvm.generated {module.LINUX_VERSION} {module.ARCH}", module)
    files = {}
    for arch in REPORT_ARCHES:
        kernels = sorted((k for k, a in modules if a == arch), key=_version_key)
        for older, newer in zip(kernels, kernels[1:]):
            report = diff(modules[(older, arch)], modules[(newer, arch)])
            files[f"reports/{older}-{newer}-{arch}.md"] = render_markdown(report)
    return files


def write_reports(out: pathlib.Path, files: Iterable[tuple[str, str]]) -> None:
    for name, text in files:
        path = out / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
