"""Render a Model's records as cffi declarations (`ffi.cdef` text).

cffi lays records out itself, with the host's natural rules, and knows neither `packed`, `aligned`,
`__int128`, nor GNU's empty struct. So the text is written to reproduce the model's layout under
natural rules: 128-bit integers become a pair of 64-bit words, `__DECLARE_FLEX_ARRAY` and a trailing
`[0]` become a plain trailing `[]`, and explicit padding is inserted wherever the real ABI places a member later than
natural alignment would (e.g. arm64's 16-byte-aligned FP state). Where the real layout is tighter than
natural alignment allows, the record cannot be expressed and generation fails loudly.
"""

from __future__ import annotations

import dataclasses

from .cparse import INT128_NAMES
from .model import Member, Model, Record


class CdefError(Exception):
    pass


class _Renderer:
    def __init__(self, model: Model):
        self.model = model
        self.natural_align: dict[str, int] = {}
        self.pad_count = 0

    def base_align(self, base: str) -> int:
        """Natural (cffi) alignment of an element type spelled `base`."""
        if base in INT128_NAMES:
            return 8
        if base in self.model.records:
            return self.record_align(self.model.records[base])
        if base in self.model.typedefs:
            target = self.model.typedefs[base].target.split("[")[0]
            return self.base_align(target) if target != base else self.model.typedefs[base].align
        if base.endswith("*"):
            return 8
        return {"char": 1, "signed char": 1, "unsigned char": 1, "_Bool": 1, "short": 2, "unsigned short": 2,
                "int": 4, "unsigned int": 4, "float": 4}.get(base, 4 if base.startswith("enum ") else 8)

    def record_align(self, record: Record) -> int:
        if record.name and record.name in self.natural_align:
            return self.natural_align[record.name]
        align = max((self.member_align(m) for m in record.members), default=1)
        if record.name:
            self.natural_align[record.name] = align
        return align

    def member_align(self, m: Member) -> int:
        if m.inline is not None:
            flex = _flex_array(m)
            return self.base_align(flex.base) if flex else self.record_align(m.inline)
        return self.base_align(m.base)

    def body(self, record: Record, indent: str) -> list[str]:
        lines: list[str] = []
        cursor = 0  # bytes used so far, as cffi will count them
        for index, m in enumerate(record.members):
            if self.is_empty_record(m):
                continue  # GNU C's empty struct takes no space; cffi would give it one byte
            if record.kind == "struct" and index == len(record.members) - 1 and m.dims[:1] == (0,):
                # an old-style trailing `T x[0]` is a flexible array: cffi then sizes it from `ffi.new`
                m = dataclasses.replace(m, dims=(None, *m.dims[1:]))
            if record.kind == "struct" and m.bit_width is None:
                natural = -(-cursor // self.member_align(m)) * self.member_align(m)
                if m.offset < natural:
                    raise CdefError(f"{record.name or 'an anonymous record'}: member {m.name} at {m.offset} is "
                                    f"packed tighter than cffi can express")
                if m.offset > natural:
                    lines.append(f"{indent}uint8_t __pad{self._pad()}[{m.offset - cursor}];")
            lines += self.member(m, indent)
            if record.kind == "struct":
                if m.bit_width is not None:
                    assert m.bit_offset is not None
                    cursor = max(cursor, -(-(m.bit_offset + m.bit_width) // 8))
                else:
                    cursor = m.offset + m.size
        if record.kind == "struct":
            natural_size = -(-cursor // self.record_align(record)) * self.record_align(record)
            if record.size > natural_size:
                lines.append(f"{indent}uint8_t __pad{self._pad()}[{record.size - cursor}];")
        return lines

    def is_empty_record(self, m: Member) -> bool:
        record = m.inline or self.model.records.get(m.base)
        return m.size == 0 and not m.dims and record is not None and not record.members

    def _pad(self) -> int:
        self.pad_count += 1
        return self.pad_count

    def member(self, m: Member, indent: str) -> list[str]:
        flex = _flex_array(m)
        if flex is not None:
            return self.member(flex, indent)
        dims = "".join(f"[{d if d is not None else ''}]" for d in m.dims)
        name = m.name or ""
        if m.bit_width is not None:
            return [f"{indent}{m.base} {name} : {m.bit_width};"]
        if m.inline is not None and _is_union_of_flex_arrays(m.inline):
            # cffi allows no flexible (or zero-length) array inside a union: declare a flexible array
            # of the union instead, so `x.data[0].vmx` reaches the same bytes.
            elements = [dataclasses.replace(_flex_array(e) or e, dims=(_flex_array(e) or e).dims[1:])
                        for e in m.inline.members]
            return ([f"{indent}union {{"] + [line for e in elements for line in self.member(e, indent + "    ")]
                    + [f"{indent}}}{(' ' + name) if name else ''}[];"])
        if m.inline is not None:
            return ([f"{indent}{m.inline.kind} {{"] + self.body(m.inline, indent + "    ")
                    + [f"{indent}}}{(' ' + name) if name else ''}{dims};"])
        return [f"{indent}{m.base} {name}{dims};"]

    def render(self) -> str:
        out = ["typedef struct { uint64_t w[2]; } __kvm_bindgen_u128;",
               "typedef __kvm_bindgen_u128 __uint128_t;", "typedef __kvm_bindgen_u128 __int128_t;"]
        for td in self.model.typedefs.values():
            if td.name in self.model.records:
                continue
            base, _, dims = td.target.partition("[")
            out.append(f"typedef {base} {td.name}{'[' + dims if dims else ''};")
        for record in _dependency_order(self.model):
            if record.name.startswith(("struct ", "union ")):
                out.append(f"{record.name} {{")
                out += self.body(record, "    ")
                out.append("};")
            else:
                out.append(f"typedef {record.kind} {{")
                out += self.body(record, "    ")
                out.append(f"}} {record.name};")
        return "\n".join(out) + "\n"


def _flex_array(m: Member) -> Member | None:
    """The array inside an expansion of `__DECLARE_FLEX_ARRAY(T, name)`, else None."""
    if m.name is not None or m.inline is None or len(m.inline.members) != 2:
        return None
    empty, array = m.inline.members
    if empty.name and empty.name.startswith("__empty_") and array.dims[:1] == (None,):
        return array
    return None


def _is_union_of_flex_arrays(record: Record) -> bool:
    return record.kind == "union" and bool(record.members) and all(
        (_flex_array(m) or m).dims[:1] in ((None,), (0,)) for m in record.members)


def _dependency_order(model: Model) -> list[Record]:
    """Records with every record they embed by value declared first."""
    done: set[str] = set()
    order: list[Record] = []

    def visit(name: str) -> None:
        if name in done or name not in model.records:
            return
        done.add(name)
        for f in model.records[name].fields:
            visit(f.ctype.split("[")[0])
        order.append(model.records[name])

    for name in model.records:
        visit(name)
    return order


def cdef(model: Model) -> str:
    return _Renderer(model).render()
