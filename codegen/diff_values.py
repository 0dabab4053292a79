"""Comparing named values: constants, capabilities, exit reasons, and the enum members standing for them.

Runs after the ioctls are compared: an enum member is listed with the change of the constant,
capability, exit reason or ioctl it stands for, and on its own only when none explains it.
"""

from __future__ import annotations

import dataclasses
import enum
import re
import types
from typing import Any

from .diff_ioctls import _annotated
from .diff_rules import Comparison


def compare(found: Comparison) -> None:
    """Add every constant, capability and exit reason change, and the enum members' (in `related`, or alone)."""
    old, new = found.old, found.new
    ioctl_names = set(old.IOCTLS) | set(old.UNAVAILABLE_IOCTLS) | set(new.IOCTLS) | set(new.UNAVAILABLE_IOCTLS)
    caps_a = {n: c.value for n, c in old.CAPS.items()}
    caps_b = {n: c.value for n, c in new.CAPS.items()}
    exits_a, exits_b = _exit_reasons(old), _exit_reasons(new)
    special = ioctl_names | set(caps_a) | set(caps_b) | set(exits_a) | set(exits_b)
    consts_a = {n: v for n, v in old.CONSTANTS.items() if n not in special}
    consts_b = {n: v for n, v in new.CONSTANTS.items() if n not in special}
    by_name: dict[tuple[str, str], int] = {}  # (name, change) -> index in found.changes
    for kind, a, b in (("capability", caps_a, caps_b), ("exit_reason", exits_a, exits_b),
                       ("constant", consts_a, consts_b)):
        for name in sorted(set(a) | set(b)):
            va, vb = a.get(name), b.get(name)
            if va == vb:
                continue
            if vb is None:
                added = found.add(f"{kind}.removed", name, va, None, f"was {_num(va)}")
            elif va is None:
                added = found.add(f"{kind}.added", name, None, vb, f"= {_num(vb)}")
            else:
                added = found.add(f"{kind}.value", name, va, vb, f"{_num(va)} -> {_num(vb)}")
            by_name[(name, added.change)] = len(found.changes) - 1
    if _annotated(old) and _annotated(new):
        for name in sorted(set(old.CAPS) & set(new.CAPS)):
            _compare_typing(found, name, old.CAPS[name], new.CAPS[name])
    for i, c in enumerate(found.changes):
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
            c = found.changes[at]
            found.changes[at] = dataclasses.replace(c, related=tuple(sorted(c.related + (member,))))
            continue
        rule = {"removed": "enum.removed", "added": "enum.added", "changed": "enum.value"}[change]
        va, vb = (ma[0] if ma else None), (mb[0] if mb else None)
        detail = (f"was {_num(va)}" if vb is None else f"= {_num(vb)}" if va is None else f"{_num(va)} -> {_num(vb)}")
        found.add(rule, member, va, vb, f"{detail} (for {backing})")


def _compare_typing(found: Comparison, name: str, a: Any, b: Any) -> None:
    """A capability's named bits, and what check() answers and enable() takes (kvm/caps.py), as api.rst and
    codegen/caps_table.py give them."""
    bits_a, bits_b = [m[0] for m in a.flags], [m[0] for m in b.flags]
    if bits_a != bits_b:
        gained = [m for m in bits_b if m not in bits_a]
        lost = [m for m in bits_a if m not in bits_b]
        detail = "; ".join(part for part in (f"+ {', '.join(gained)}" if gained else "",
                                             f"- {', '.join(lost)}" if lost else "") if part)
        found.add("capability.flags", name, bits_a, bits_b, detail or "bits renamed or reordered")
    typing_a, typing_b = _typing(a), _typing(b)
    if typing_a != typing_b:
        detail = "; ".join(f"{key} {_shown(typing_a[key])} -> {_shown(typing_b[key])}"
                           for key in typing_a if typing_a[key] != typing_b[key])
        found.add("capability.params", name, typing_a, typing_b, detail)


def _typing(cap: Any) -> dict[str, Any]:
    return {"check": cap.check, "enable_on": sorted(cap.enable_on),
            "params": [{"name": p[0], "kind": p[1], "index": p[2], "shift": p[3], "width": p[4], "at_most_check": p[5]}
                       for p in cap.params]}


def _shown(value: Any) -> str:
    if isinstance(value, list) and value and isinstance(value[0], dict):
        return "(" + ", ".join(f"{p['name']}: {p['kind']} in args[{p['index']}]" for p in value) + ")"
    if isinstance(value, list):
        return "(" + ", ".join(value) + ")" if value else "none"
    return str(value)


def _num(value: int | None) -> str:
    if value is None:
        return "undefined"
    return f"{value:#x}" if abs(value) >= 0x10000 else str(value)


def _enum_classes(module: types.ModuleType) -> dict[str, type[enum.Enum]]:
    return {name: getattr(module, name) for name in module.ENUMS}  # (each made on first use)


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
