"""Comparing records: structs and unions, down to every flattened field.

A record change that moves bytes also reaches the records containing it (`field.nested`); the ioctls
passing a changed record are named in its changes' `related`.
"""

from __future__ import annotations

import dataclasses
import re
import types
from collections.abc import Iterable
from typing import Any

from kvm.spec import FieldSpec, StructSpec

from .diff_rules import LAYOUT_BREAKS, Change, Comparison

_PADDING = re.compile(r"^_*(pad|padding|reserved|rsvd|unused)\w*$", re.I)


def compare(found: Comparison) -> None:
    """Add every record and field change: kept, added and removed records, growth in place, nesting."""
    _records(found)
    _grown_in_place(found)
    _nested(found)


def _records(found: Comparison) -> None:
    old, new = found.old.STRUCTS, found.new.STRUCTS
    for name in sorted(set(old) - set(new)):
        found.add("record.removed", name, _record_json(old[name]), None,
                  f"{old[name].kind} of {old[name].size} bytes from {old[name].header}")
    for name in sorted(set(new) - set(old)):
        found.add("record.added", name, None, _record_json(new[name]),
                  f"{new[name].kind} of {new[name].size} bytes in {new[name].header}")
    for name in sorted(set(old) & set(new)):
        _record(found, name, old[name], new[name])


def _record(found: Comparison, name: str, a: StructSpec, b: StructSpec) -> None:
    aj, bj = _record_json(a), _record_json(b)
    if a.kind != b.kind:
        found.add("record.kind", name, aj, bj, f"{a.kind} -> {b.kind}")
    if b.size < a.size:
        found.add("record.shrank", name, aj, bj, f"size {a.size} -> {b.size} bytes")
    elif b.size > a.size:
        found.add("record.grew", name, aj, bj, f"size {a.size} -> {b.size} bytes")
    if a.align != b.align:
        found.add("record.align", name, aj, bj, f"alignment {a.align} -> {b.align}")
    if a.header != b.header:
        found.add("record.header", name, aj, bj, f"declared in {a.header} -> {b.header}")
    _fields(found, name, a, b)


def _fields(found: Comparison, name: str, a: StructSpec, b: StructSpec) -> None:
    old = {f.name: f for f in a.fields}
    new = {f.name: f for f in b.fields}
    removed = [old[k] for k in old if k not in new]
    added = [new[k] for k in new if k not in old]
    for key in [k for k in old if k in new]:
        f, g = old[key], new[key]
        if _is_padding(key) and shape(f) != shape(g) and f.bit_width is None and g.bit_width is None:
            vacated = sorted(set(range(f.offset, f.offset + f.size)) - set(range(g.offset, g.offset + g.size)))
            users = [h.name for h in added if any(h.offset <= i < h.offset + h.size for i in vacated)]
            inside = f.offset <= g.offset and g.offset + g.size <= f.offset + f.size
            if inside and vacated and _covered_bytes(vacated, [h for h in added if h.name in users]):
                found.add("field.padding_reused", name, _field_json(f), _field_json(g),
                          f"{f.ctype} at offset {f.offset} -> {g.ctype} at offset {g.offset}; "
                          f"the bytes it gave up are now {', '.join(users)}", key)
                continue
        _field(found, name, f, g)
    for f in list(removed):
        twin = next((g for g in added if shape(g) == shape(f)), None)
        if twin is None:
            continue
        removed.remove(f)
        added.remove(twin)
        rule = "field.padding_reused" if _is_padding(f.name) else "field.renamed"
        found.add(rule, name, _field_json(f), _field_json(twin),
                  f"renamed {f.name} -> {twin.name} ({f.ctype} at offset {f.offset})", f.name)
    for f in removed:
        users = [g.name for g in added if g.offset < f.offset + f.size and f.offset < g.offset + max(g.size, 1)]
        if _is_padding(f.name) and _covered(f, [g for g in added if g.name in users]):
            found.add("field.padding_reused", name, _field_json(f), None,
                      f"{f.ctype} at offset {f.offset} removed; its bytes are now {', '.join(users)}", f.name)
        else:
            found.add("field.removed", name, _field_json(f), None,
                      f"was {f.ctype} at offset {f.offset}, {f.size} bytes", f.name)
    for g in added:
        where = f"bit {g.bit_offset}, {g.bit_width} bits" if g.bit_width is not None else f"{g.size} bytes"
        found.add("field.added", name, None, _field_json(g), f"{g.ctype} at offset {g.offset}, {where}", g.name)


def _field(found: Comparison, name: str, a: FieldSpec, b: FieldSpec) -> None:
    aj, bj = _field_json(a), _field_json(b)
    if a.offset != b.offset or a.bit_offset != b.bit_offset:
        bits = f" (bit {a.bit_offset} -> {b.bit_offset})" if a.bit_offset != b.bit_offset else ""
        found.add("field.moved", name, aj, bj, f"offset {a.offset} -> {b.offset}{bits}", a.name)
    types_ = f" ({a.ctype} -> {b.ctype})" if a.ctype != b.ctype else ""
    if a.bit_width is not None and b.bit_width is not None and a.bit_width != b.bit_width:
        rule = "field.shrank" if b.bit_width < a.bit_width else "field.grew"
        found.add(rule, name, aj, bj, f"width {a.bit_width} -> {b.bit_width} bits{types_}", a.name)
    elif a.size != b.size:
        rule = "field.shrank" if b.size < a.size else "field.grew"
        found.add(rule, name, aj, bj, f"size {a.size} -> {b.size} bytes{types_}", a.name)
    elif _ctype(a.ctype) != _ctype(b.ctype):
        found.add("field.retyped", name, aj, bj, f"{a.ctype} -> {b.ctype}, same offset and size", a.name)


def _grown_in_place(found: Comparison) -> None:
    """Reclassify field.grew as field.grew_in_place where a record type only grew into free bytes.

    The record type is a named one (its own changes tell) or an anonymous member (its flattened
    members' changes tell); inner members are settled first, so repeat until nothing changes.
    """
    again = True
    while again:
        again = False
        for i, c in enumerate(found.changes):
            if c.rule != "field.grew" or c.old["ctype"] != c.new["ctype"] or c.old["offset"] != c.new["offset"]:
                continue
            base = base_type(c.new["ctype"])
            if base in ("struct {...}", "union {...}"):
                inner = [ch for ch in found.record_changes[c.name] if (ch.field or "").startswith(c.old["name"] + ".")]
            elif base != c.name and base in found.old.STRUCTS and base in found.new.STRUCTS:
                inner = found.record_changes.get(base, [])
            else:
                continue
            if any(ch.rule in LAYOUT_BREAKS for ch in inner):
                continue
            start, end = c.old["offset"] + c.old["size"], c.new["offset"] + c.new["size"]
            fields = found.old.STRUCTS[c.name].fields
            if all(_free_for(c.old["name"], c.old["offset"], f, fields) for f in fields
                   if f.offset < end and start < f.offset + f.size):
                relaxed = dataclasses.replace(c, rule="field.grew_in_place")
                found.changes[i] = relaxed
                mine = found.record_changes[c.name]
                mine[mine.index(c)] = relaxed
                again = True


def _nested(found: Comparison) -> None:
    """A record whose field's record type changed layout changed too: repeat until nothing new."""
    old, new = found.old.STRUCTS, found.new.STRUCTS
    flagged: set[tuple[str, str]] = set()
    while True:
        broken = found.broken_records()
        again = False
        for name in sorted(set(old) & set(new)):
            olds = {f.name: f for f in old[name].fields}
            for f in new[name].fields:
                base = base_type(f.ctype)
                before = olds.get(f.name)
                if (before is None or before.ctype != f.ctype or base not in broken or base == name
                        or (name, f.name) in flagged or base not in old):
                    continue
                if any(c.field == f.name for c in found.record_changes.get(name, [])):
                    continue  # already reported (moved, resized)
                flagged.add((name, f.name))
                first = first_break(found.record_changes[base])
                found.add("field.nested", name, _field_json(before), _field_json(f),
                          f"{base} changed layout ({first})", f.name)
                again = True
        if not again:
            return


def annotate(found: Comparison) -> None:
    """Name the ioctls that pass each changed record (directly or inside another record)."""
    users = _record_users(found.old)
    for name, more in _record_users(found.new).items():
        users[name] = users.get(name, set()) | more
    found.changes = [dataclasses.replace(c, related=tuple(sorted(users.get(c.name, set()))))
                     if c.kind in ("record", "field") and users.get(c.name) else c for c in found.changes]


def resize_why(found: Comparison, record: str) -> str:
    """Why a kept record's size changed: "kvm_x grew from 12 to 16 bytes (extra added at offset 12)"."""
    a, b = found.old.STRUCTS[record], found.new.STRUCTS[record]
    verb = "grew" if b.size > a.size else "shrank"
    changes = found.record_changes.get(record, [])
    said = [f"{c.field} {c.change}" + (f" at offset {c.new['offset']}" if c.change == "added" else "")
            for c in changes if c.kind == "field" and c.rule in ("field.added", "field.removed", "field.grew",
                                                                  "field.shrank", "field.nested")]
    more = f" ({_first_n(said, 3)})" if said else ""
    return f"{record} {verb} from {a.size} to {b.size} bytes{more}"


def _record_json(spec: StructSpec) -> dict[str, Any]:
    return {"kind": spec.kind, "size": spec.size, "align": spec.align, "header": spec.header}


def _field_json(spec: FieldSpec) -> dict[str, Any]:
    return {"name": spec.name, "offset": spec.offset, "size": spec.size, "ctype": spec.ctype,
            "bit_offset": spec.bit_offset, "bit_width": spec.bit_width}


def base_type(ctype: str | None) -> str:
    return (ctype or "").split("[", 1)[0].strip()


def _first_n(items: list[str], n: int) -> str:
    shown = "; ".join(items[:n])
    return shown + (f"; and {len(items) - n} more" if len(items) > n else "")


def first_break(changes: list[Change]) -> str:
    said = [(f"{c.field}: " if c.field else "") + c.detail for c in changes if c.rule in LAYOUT_BREAKS]
    return _first_n(said, 2)


def _ctype(ctype: str) -> str:
    """A C type for comparing: GNU's zero-length array `T[0]` is the same as the flexible `T[]`."""
    return ctype[:-3] + "[]" if ctype.endswith("[0]") else ctype


def shape(f: FieldSpec) -> tuple[int, int, str, int | None, int | None]:
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


def _record_users(module: types.ModuleType) -> dict[str, set[str]]:
    """Record name -> the ioctls whose argument is it, or contains it at any depth."""
    structs: dict[str, StructSpec] = module.STRUCTS
    users: dict[str, set[str]] = {}
    for ioctl in module.IOCTLS.values():
        pending, seen = [base_type(ioctl.arg_type)], set()
        while pending:
            record = pending.pop()
            if record in seen or record not in structs:
                continue
            seen.add(record)
            users.setdefault(record, set()).add(ioctl.name)
            pending += [base_type(f.ctype) for f in structs[record].fields]
    return users
