"""The cffi records of each binding for this host's arch against the binding's own layout model.

`b.ffi` is what programs hand to the kernel, so its idea of every record must be the model's (which
test_gcc_oracle.py checks against gcc): `ffi.sizeof` and `ffi.alignof` of every record, and
`ffi.offsetof` and the member type's size of every member the model lists. A member path such as
`redirtbl[0].fields.mask` is taken apart into cffi's `offsetof(T, "redirtbl", 0, "fields", "mask")`.
Bitfields have no offsetof; on a little-endian host their bit position is read from cffi's field
descriptions (offset * 8 + bitshift) instead. Members cffi cannot address are counted and reported.
"""

from __future__ import annotations

import re
import sys
from types import ModuleType
from typing import Any

import pytest

import kvm.generated as g
from kvm_bindgen.arches import host_arch

HOST_ARCH = host_arch()
HOST_BINDINGS: list[Any] = [(kernel, arch) for kernel, _release, arch in g.BUNDLED if arch == HOST_ARCH]
_PATH_TOKEN = re.compile(r"\.?([A-Za-z_]\w*)|\[(\d+)\]")


def path_tokens(path: str) -> list[str | int]:
    """"redirtbl[0].fields.mask" -> ["redirtbl", 0, "fields", "mask"]."""
    tokens: list[str | int] = []
    pos = 0
    while pos < len(path):
        m = _PATH_TOKEN.match(path, pos)
        if not m or (pos == 0 and path.startswith(".")):
            raise ValueError(f"not a member designator: {path!r}")
        tokens.append(m.group(1) if m.group(1) is not None else int(m.group(2)))
        pos = m.end()
    return tokens


def resolve(ffi: Any, record: str, tokens: list[str | int]) -> tuple[list[str | int], int, Any, Any]:
    """Walk cffi's type descriptions along `tokens`.

    Returns the path as cffi spells it, the offset, the member's ctype and its field object. A union of
    flexible arrays is declared to cffi as a flexible array of the union (cffi allows no flexible array
    inside a union), so the model's `data.vmx` is cffi's `data[0].vmx`: the walk steps into element 0.
    """
    ctype = ffi.typeof(record)
    offset = 0
    field = None
    spelled: list[str | int] = []
    for token in tokens:
        if isinstance(token, str) and ctype.kind == "array" and ctype.length is None \
                and ctype.item.kind in ("struct", "union"):
            spelled.append(0)
            ctype = ctype.item
        if isinstance(token, int):
            if ctype.kind != "array":
                raise KeyError(f"index into non-array {ctype.cname}")
            offset += token * ffi.sizeof(ctype.item)
            ctype = ctype.item
            field = None
        else:
            if ctype.kind not in ("struct", "union"):
                raise KeyError(f"member {token!r} of non-record {ctype.cname}")
            fields = dict(ctype.fields or ())
            if token not in fields:
                raise KeyError(f"{ctype.cname} has no member {token!r}")
            field = fields[token]
            offset += field.offset
            ctype = field.type
        spelled.append(token)
    return spelled, offset, ctype, field


def _size(ffi: Any, ctype: Any) -> int:
    if ctype.kind == "array" and ctype.length is None:
        return 0  # a flexible array member
    return ffi.sizeof(ctype)


_EMPTY = "GNU empty struct (cffi gives it 1 byte, or leaves the member out)"
_OVER_ALIGNED = "alignment above 8 (cffi knows no aligned attribute nor __int128)"
_FLEX_IN_UNION = "member size of a flexible array in a union (cffi's member is one element)"
_UNADDRESSABLE = "not addressable by cffi"
_BITFIELD_ORDER = "bitfield (bit order is the laying-out host's)"


def compare(b: ModuleType, *, bitfields: bool = True) \
        -> tuple[dict[str, int], dict[str, int], list[tuple[str, object, object]]]:
    """(counts compared by kind, counts not compared by reason, mismatches as (label, model, cffi))."""
    ffi = b.ffi
    errors = (ffi.error, TypeError, KeyError, ValueError)
    compared = {"sizeof": 0, "alignof": 0, "offsetof": 0, "member size": 0, "bitfield": 0}
    skipped = {_EMPTY: 0, _OVER_ALIGNED: 0, _FLEX_IN_UNION: 0, _UNADDRESSABLE: 0, _BITFIELD_ORDER: 0}
    bad: list[tuple[str, object, object]] = []

    def check(kind: str, label: str, model: object, got: object) -> None:
        compared[kind] += 1
        if model != got:
            bad.append((f"{kind} {label}", model, got))

    def empty(ctype: str, size: int) -> bool:
        record = b.STRUCTS.get(ctype)
        return size == 0 and (ctype == "struct {...}" or (record is not None and not record.fields))

    for name, rec in sorted(b.STRUCTS.items()):
        try:
            size, align = ffi.sizeof(name), ffi.alignof(name)
        except errors as e:
            bad.append((f"record {name}", "declared", f"cffi: {e}"))
            continue
        if empty(name, rec.size):
            skipped[_EMPTY] += 1
        else:
            check("sizeof", name, rec.size, size)
        if rec.align > 8 and align == 8:
            skipped[_OVER_ALIGNED] += 1
        else:
            check("alignof", name, rec.align, align)
        for f in rec.fields:
            label = f"{name}.{f.name}"
            tokens = path_tokens(f.name)
            try:
                spelled, offset, ctype, field = resolve(ffi, name, tokens)
            except errors:
                skipped[_EMPTY if empty(f.ctype, f.size) else _UNADDRESSABLE] += 1
                continue
            if f.bit_width is not None:
                if not bitfields or sys.byteorder != "little" or field is None:
                    skipped[_BITFIELD_ORDER] += 1
                    continue
                check("bitfield", label, (f.bit_offset, f.bit_width), (offset * 8 + field.bitshift, field.bitsize))
                continue
            try:
                via_offsetof = ffi.offsetof(name, *spelled)
            except errors:
                skipped[_UNADDRESSABLE] += 1
                continue
            check("offsetof", label, f.offset, via_offsetof)
            if via_offsetof != offset:
                bad.append((f"field walk {label}", via_offsetof, offset))
            if spelled != tokens and f.size == 0 and f.ctype.endswith("]"):
                skipped[_FLEX_IN_UNION] += 1  # a `[]` or `[0]` array in a union
            elif empty(f.ctype, f.size):
                skipped[_EMPTY] += 1
            else:
                check("member size", label, f.size, _size(ffi, ctype))
    return compared, skipped, bad


def _report(bad: list[tuple[str, object, object]]) -> str:
    shown = "\n".join(f"  {label}: model {model!r}, cffi {got!r}" for label, model, got in bad[:40])
    return f"{len(bad)} cffi layouts differ from the model (first {min(len(bad), 40)}):\n{shown}"


@pytest.mark.parametrize(
    ("kernel", "arch"),
    HOST_BINDINGS or [pytest.param(None, HOST_ARCH, marks=pytest.mark.skip(
        reason=f"no bundled binding for this host's arch ({HOST_ARCH or 'unsupported machine'})"))],
    ids=[f"{k}-{a}" for k, a in HOST_BINDINGS] or ["no-host-binding"],
)
def test_cffi_records_match_the_model(kernel: str, arch: str, cffi_layout_summary) -> None:
    compared, skipped, bad = compare(g.load(kernel, arch))
    cffi_layout_summary.record(f"{kernel}-{arch}", compared, len(bad), skipped=skipped)
    assert not bad, _report(bad)
    assert compared["offsetof"] > 0


FOREIGN_BINDINGS = [(kernel, arch) for kernel, _release, arch in g.BUNDLED if arch != HOST_ARCH]


@pytest.mark.parametrize(("kernel", "arch"), FOREIGN_BINDINGS, ids=[f"{k}-{a}" for k, a in FOREIGN_BINDINGS])
def test_foreign_cffi_records_match_the_model(kernel: str, arch: str, cffi_foreign_layout_summary) -> None:
    """Another arch's records as this host's cffi lays them out.

    cffi lays records out by the host's natural rules, and every supported arch is an LP64 Linux ABI
    with the same natural sizes and alignments, so sizes and offsets must come out as on that arch; bit
    order within bitfields is the host's, so bitfields are left out.
    """
    compared, skipped, bad = compare(g.load(kernel, arch), bitfields=False)
    cffi_foreign_layout_summary.record(f"{kernel}-{arch}", compared, len(bad), skipped=skipped)
    assert not bad, _report(bad)


def test_path_tokens() -> None:
    assert path_tokens("regs") == ["regs"]
    assert path_tokens("io.port") == ["io", "port"]
    assert path_tokens("redirtbl[0].fields.mask") == ["redirtbl", 0, "fields", "mask"]
    assert path_tokens("a[1][2].b") == ["a", 1, 2, "b"]
    with pytest.raises(ValueError):
        path_tokens("a..b")
