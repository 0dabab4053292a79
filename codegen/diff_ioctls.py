"""Comparing ioctls: number, argument layout and type, and the capability and fd kinds api.rst gives.

Runs after the records are compared: an ioctl's argument layout changed when its record's did.
"""

from __future__ import annotations

import types
from typing import Any

from kvm.spec import IoctlSpec

from .diff_records import base_type, first_break, resize_why, shape
from .diff_rules import Comparison


def compare(found: Comparison) -> None:
    """Add every ioctl change: added, removed (or no longer available on the arch), and changed."""
    old, new = found.old.IOCTLS, found.new.IOCTLS
    old_na, new_na = found.old.UNAVAILABLE_IOCTLS, found.new.UNAVAILABLE_IOCTLS
    annotated = _annotated(found.old) and _annotated(found.new)
    arch = found.new.ARCH
    for name in sorted(set(old) | set(new)):
        a, b = old.get(name), new.get(name)
        if a is not None and b is None:
            why = (f"no longer available on {arch}: {new_na[name]}" if name in new_na else "no longer defined")
            found.add("ioctl.removed", name, _ioctl_json(a), None, f"{a.number:#x}; {why}")
        elif a is None and b is not None:
            why = f"was unavailable: {old_na[name]}" if name in old_na else "new"
            found.add("ioctl.added", name, None, _ioctl_json(b), f"{b.number:#x}; {why}")
        elif a is not None and b is not None:
            _ioctl(found, name, a, b, annotated)


def _ioctl(found: Comparison, name: str, a: IoctlSpec, b: IoctlSpec, annotated: bool) -> None:
    aj, bj = _ioctl_json(a), _ioctl_json(b)
    if a.number != b.number:
        found.add("ioctl.number", name, aj, bj, f"{a.number:#x} -> {b.number:#x}: {_number_why(found, a, b)}")
    elif a.arg_type != b.arg_type or base_type(a.arg_type) in found.broken_records():
        layout = _arg_layout(found, a, b)
        if layout is not None:
            found.add("ioctl.arg_layout", name, aj, bj, layout)
        else:
            found.add("ioctl.arg_type", name, aj, bj, f"argument {a.arg_type} -> {b.arg_type}, same layout")
    gate_change = _gate_change(a, b) if annotated else None
    if gate_change:
        found.add("ioctl.capability", name, aj, bj, gate_change)
    if annotated and a.fd != b.fd:
        found.add("ioctl.fd", name, aj, bj,
                  f"issued on {', '.join(sorted(a.fd)) or '?'} -> {', '.join(sorted(b.fd)) or '?'}")


def _number_why(found: Comparison, a: IoctlSpec, b: IoctlSpec) -> str:
    """Which parts of the request number changed, and why its size did."""
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
        base = base_type(b.arg_type)
        if base == base_type(a.arg_type) and base in found.old.STRUCTS and base in found.new.STRUCTS:
            size += f" because {resize_why(found, base)}"
        parts.append(size)
    return "; ".join(parts) or "encoding differs"


def _arg_layout(found: Comparison, a: IoctlSpec, b: IoctlSpec) -> str | None:
    """Why the argument's layout differs, or None when it is the same."""
    ab, bb = base_type(a.arg_type), base_type(b.arg_type)
    old, new = found.old.STRUCTS, found.new.STRUCTS
    if ab == bb:
        if ab in found.broken_records():
            return f"{ab} changed layout ({first_break(found.record_changes[ab])})"
        return None
    if ab in old and bb in new:
        same = [shape(f) for f in old[ab].fields] == [shape(f) for f in new[bb].fields]
        return None if same else f"argument {a.arg_type} -> {b.arg_type}, laid out differently"
    if (ab in old) != (bb in new):
        return f"argument {a.arg_type} -> {b.arg_type}"
    return None


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


def _annotated(module: types.ModuleType) -> bool:
    """Whether a binding carries api.rst metadata (a headers tree without --api-rst does not)."""
    return any(i.fd or i.capability for i in module.IOCTLS.values())
