"""Compute struct and union layouts from pycparser's declarations, with one arch's ABI rules.

Rules (System V style, which every supported Linux ABI follows for these headers): members are placed
at the next multiple of their alignment; a record's alignment is its largest member's (raised by
`aligned`, lowered to 1 for members of `packed` records); its size is rounded up to its alignment;
bitfields fill storage units of their declared type and never straddle one; a flexible array member and
GNU's empty struct take no space.
"""

from __future__ import annotations

import dataclasses
import pathlib

from pycparser import c_ast, c_generator

from .arches import Arch
from .cexpr import ExprError, TypeFacts, evaluate
from .cparse import INT128_NAMES, HeaderError, ParsedHeaders, RecordAttrs
from .model import Field, Member, Record, Typedef

_GEN = c_generator.CGenerator()


@dataclasses.dataclass(frozen=True)
class TypeInfo:
    size: int
    align: int
    base: str  # element type text, "" for inline records
    dims: tuple[int | None, ...] = ()
    inline: Record | None = None
    signed: bool | None = None  # scalars only


MAX_OBJECT_SIZE = (1 << 63) - 1  # PTRDIFF_MAX on every supported (64-bit) arch, as gcc enforces
MAX_ARRAY_LENGTH = (1 << 31) - 1  # the most cffi can declare (every record is declared to cffi)


def _round_up(value: int, align: int) -> int:
    return (value + align - 1) // align * align


_BASIC_NORMAL = {
    ("char",): "char", ("signed", "char"): "signed char", ("unsigned", "char"): "unsigned char",
    ("short",): "short", ("short", "int"): "short", ("signed", "short"): "short",
    ("signed", "short", "int"): "short", ("unsigned", "short"): "unsigned short",
    ("unsigned", "short", "int"): "unsigned short", ("int",): "int", ("signed",): "int",
    ("signed", "int"): "int", ("unsigned",): "unsigned int", ("unsigned", "int"): "unsigned int",
    ("long",): "long", ("long", "int"): "long", ("signed", "long"): "long", ("signed", "long", "int"): "long",
    ("unsigned", "long"): "unsigned long", ("unsigned", "long", "int"): "unsigned long",
    ("long", "long"): "long long", ("long", "long", "int"): "long long", ("signed", "long", "long"): "long long",
    ("signed", "long", "long", "int"): "long long", ("unsigned", "long", "long"): "unsigned long long",
    ("unsigned", "long", "long", "int"): "unsigned long long", ("_Bool",): "_Bool", ("float",): "float",
    ("double",): "double",
}


class Layout:
    """All records, typedefs and enum constants of one preprocessed header set, laid out for one arch."""

    def __init__(self, parsed: ParsedHeaders, arch: Arch, include_dirs: tuple[pathlib.Path, ...]):
        self.arch = arch
        self.parsed = parsed
        self.include_dirs = include_dirs
        self.typedef_nodes: dict[str, c_ast.Node] = {}
        self.record_nodes: dict[str, c_ast.Node] = {}  # "struct tag" or typedef name -> Struct/Union node
        self.record_file: dict[str, str] = {}
        self.enum_values: dict[str, int] = {}
        self.enum_types: dict[str, c_ast.Enum] = {}
        self.enumerator_file: dict[str, str] = {}
        self.records: dict[str, Record] = {}
        self._in_progress: set[str] = set()
        for node in parsed.ast.ext:
            self._collect(node)

    # -- collecting declarations ------------------------------------------------------------
    def header_of(self, node: c_ast.Node) -> str:
        file = str(node.coord.file) if node.coord else ""
        for d in self.include_dirs:
            if file.startswith(str(d) + "/"):
                return file[len(str(d)) + 1 :]
        return file

    def _collect(self, node: c_ast.Node) -> None:
        if isinstance(node, c_ast.Typedef):
            self.typedef_nodes[node.name] = node.type
            inner = node.type.type if isinstance(node.type, c_ast.TypeDecl) else None
            if isinstance(inner, (c_ast.Struct, c_ast.Union)) and inner.decls is not None and not inner.name:
                self.record_nodes[node.name] = inner
                self.record_file[node.name] = self.header_of(node)
        for child in _type_children(node):
            self._collect_type(child)

    def _collect_type(self, node: c_ast.Node) -> None:
        if isinstance(node, (c_ast.Struct, c_ast.Union)) and node.decls is not None:
            if node.name:
                key = f"{_kind(node)} {node.name}"
                self.record_nodes[key] = node
                self.record_file[key] = self.header_of(node)
            for decl in node.decls:
                for child in _type_children(decl):
                    self._collect_type(child)
        elif isinstance(node, c_ast.Enum) and node.values is not None:
            if node.name:
                self.enum_types[node.name] = node
            value = -1
            for enumerator in node.values.enumerators:
                if enumerator.value is not None:
                    try:
                        value = self.eval_node(enumerator.value)
                    except (KeyError, ExprError) as e:
                        raise HeaderError(f"cannot evaluate enumerator {enumerator.name}: {e}",
                                          *_coord(enumerator)) from None
                else:
                    value += 1
                self.enum_values[enumerator.name] = value
                self.enumerator_file[enumerator.name] = self.header_of(enumerator)
        else:
            for child in _type_children(node):
                self._collect_type(child)

    # -- expressions --------------------------------------------------------------------------
    def eval_node(self, node: c_ast.Node) -> int:
        return self.eval_text(_GEN.visit(node))

    def eval_text(self, text: str) -> int:
        return evaluate(text, self.enum_values, self.type_facts)

    def type_facts(self, words: list[str]) -> TypeFacts:
        """Size and signedness of a type name given as tokens (for sizeof and casts)."""
        words = [w for w in words if w not in ("const", "volatile")]
        dims: list[int] = []
        while words and words[-1] == "]":
            start = len(words) - 1 - words[::-1].index("[")
            dims.insert(0, self.eval_text(" ".join(words[start + 1 : -1])))
            words = words[:start]
        if words and words[-1] == "*":
            return TypeFacts(8, False)
        info = self.resolve_name(words)
        count = 1
        for d in dims:
            count *= d
        return TypeFacts(info.size * count, info.signed if not dims else None)

    # -- types --------------------------------------------------------------------------------
    def resolve_name(self, words: list[str]) -> TypeInfo:
        """A type given by name: a basic type, "struct x", "union x", "enum x" or a typedef name."""
        if len(words) == 2 and words[0] in ("struct", "union"):
            return self._record_info(" ".join(words))
        if len(words) == 2 and words[0] == "enum":
            return self._enum_info(words[1])
        if len(words) == 1 and words[0] in INT128_NAMES:
            size, align = self.arch.scalar("__int128_t")
            return TypeInfo(size, align, words[0], signed=words[0] == "__int128_t")
        if len(words) == 1 and words[0] in self.typedef_nodes:
            return self._typedef_info(words[0])
        basic = _BASIC_NORMAL.get(tuple(words))
        if basic is None:
            raise KeyError(" ".join(words))
        size, align = self.arch.scalar(basic)
        signed = not basic.startswith("unsigned") and basic not in ("_Bool",)
        return TypeInfo(size, align, basic, signed=signed)

    def _typedef_info(self, name: str) -> TypeInfo:
        if name in self.record_nodes:
            record = self.record(name)
            return TypeInfo(record.size, record.align, name)
        info = self.resolve(self.typedef_nodes[name])
        attrs = self.parsed.typedef_attrs.get(name)
        align = attrs.aligned if attrs and attrs.aligned else info.align
        return TypeInfo(info.size, align, name, signed=info.signed if not info.dims else None)

    def _enum_info(self, tag: str) -> TypeInfo:
        node = self.enum_types.get(tag)
        values = [self.enum_values[e.name] for e in node.values.enumerators] if node else [0]
        if min(values) >= -(1 << 31) and max(values) < (1 << 31):
            return TypeInfo(4, 4, f"enum {tag}", signed=True)
        if min(values) >= 0 and max(values) < (1 << 32):
            return TypeInfo(4, 4, f"enum {tag}", signed=False)
        return TypeInfo(8, 8, f"enum {tag}", signed=min(values) < 0)

    def _record_info(self, key: str) -> TypeInfo:
        record = self.record(key)
        return TypeInfo(record.size, record.align, key)

    def resolve(self, node: c_ast.Node) -> TypeInfo:
        """Size, alignment and spelling of a declarator's type."""
        if isinstance(node, c_ast.TypeDecl):
            return self.resolve(node.type)
        if isinstance(node, c_ast.IdentifierType):
            return self.resolve_name(list(node.names))
        if isinstance(node, (c_ast.Struct, c_ast.Union)):
            if node.decls is None:
                return self._record_info(f"{_kind(node)} {node.name}")
            if node.name:
                return self._record_info(f"{_kind(node)} {node.name}")
            record = self.layout_record(node, "", RecordAttrs())
            return TypeInfo(record.size, record.align, "", inline=record)
        if isinstance(node, c_ast.Enum):
            return self._enum_info(node.name) if node.name else TypeInfo(4, 4, "int", signed=True)
        if isinstance(node, c_ast.PtrDecl):
            inner = _GEN.visit(node.type).strip() if not isinstance(node.type, c_ast.FuncDecl) else "void"
            return TypeInfo(8, 8, f"{inner} *".replace("  ", " "), signed=False)
        if isinstance(node, c_ast.ArrayDecl):
            element = self.resolve(node.type)
            if node.dim is None:
                dim: int | None = None
            else:
                dim = self.eval_node(node.dim)
                if dim < 0:
                    raise ExprError(f"array size {dim} is negative")
                if dim > MAX_ARRAY_LENGTH:
                    raise ExprError(f"array size {dim} is more than the {MAX_ARRAY_LENGTH} cffi can declare")
            size = element.size * (dim or 0)
            if size > MAX_OBJECT_SIZE:
                raise ExprError(f"array of {dim} elements of {element.size} bytes is larger than any object can be")
            return dataclasses.replace(element, size=size, dims=(dim,) + element.dims, signed=None)
        if isinstance(node, c_ast.FuncDecl):
            raise HeaderError("function type in a record", *_coord(node))
        raise HeaderError(f"unsupported type construct {type(node).__name__}", *_coord(node))

    # -- records ------------------------------------------------------------------------------
    def record(self, key: str) -> Record:
        if key in self.records:
            return self.records[key]
        node = self.record_nodes.get(key)
        if node is None:
            raise KeyError(key)
        if key in self._in_progress:
            raise HeaderError(f"{key} contains itself", *_coord(node))
        self._in_progress.add(key)
        attrs = self.parsed.record_attrs.get(key) or self.parsed.typedef_attrs.get(key) or RecordAttrs()
        record = self.layout_record(node, key, attrs)
        self._in_progress.discard(key)
        self.records[key] = record
        return record

    def layout_record(self, node: c_ast.Node, name: str, attrs: RecordAttrs) -> Record:
        is_union = isinstance(node, c_ast.Union)
        bit = 0  # next free bit (structs)
        end = 0  # largest end in bits (unions and structs)
        align = 1
        members: list[Member] = []
        for decl in node.decls or []:
            try:
                info = self.resolve(decl.type)
                member_align = 1 if attrs.packed else info.align
                for a in decl.align or []:
                    alignment = self.eval_node(a.alignment)
                    if alignment <= 0 or alignment & (alignment - 1):
                        raise ExprError(f"alignment {alignment} is not a power of 2")
                    member_align = max(member_align, alignment)
                width = self.eval_node(decl.bitsize) if decl.bitsize is not None else None
                if width is not None and (info.signed is None or info.dims):
                    raise ExprError("a bitfield must have an integer type")
                if width is not None and not 0 <= width <= info.size * 8:
                    raise ExprError(f"bitfield width {width} does not fit its {info.size * 8}-bit type")
                if width == 0 and decl.name:
                    raise ExprError("a zero-width bitfield must be unnamed")
            except (KeyError, ExprError) as e:
                raise HeaderError(f"cannot lay out member {decl.name!r} of {name or 'a record'}: {e}",
                                  *_coord(decl)) from None
            if width is not None:
                unit = info.size * 8
                start = 0 if is_union else bit
                if width == 0:
                    bit = _round_up(bit, unit)
                    continue
                if not attrs.packed and start // unit != (start + width - 1) // unit:
                    start = _round_up(start, unit)
                if decl.name:
                    align = max(align, member_align)
                    members.append(Member(decl.name, start // 8, info.size, info.base, bit_width=width,
                                          bit_offset=start))
                bit = start + width if not is_union else bit
                end = max(end, start + width)
                continue
            offset = 0 if is_union else _round_up(bit, member_align * 8) // 8
            align = max(align, member_align)
            members.append(Member(decl.name, offset, info.size, info.base, info.dims, info.inline))
            if not is_union:
                bit = (offset + info.size) * 8
            end = max(end, (offset + info.size) * 8)
        if attrs.aligned:
            align = max(align, attrs.aligned)
        size = _round_up((end + 7) // 8, align)
        if size > MAX_OBJECT_SIZE:
            raise HeaderError(f"{name or 'a record'} is {size} bytes, larger than any object can be", *_coord(node))
        fields = tuple(_flatten(members, "", 0))
        _refuse_duplicates(node, name, fields)
        return Record(_kind(node), name, size, align, fields, tuple(members), attrs.packed,
                      self.record_file.get(name, ""))

    def typedefs(self) -> dict[str, Typedef]:
        out = {}
        for name, node in self.typedef_nodes.items():
            if name in INT128_NAMES or isinstance(getattr(node, "type", None), c_ast.FuncDecl) \
                    or isinstance(node, c_ast.PtrDecl):
                continue
            try:
                info = self._typedef_info(name)
                target = self.resolve(node)
            except (KeyError, ExprError, HeaderError):
                continue
            spelled = (target.base or "struct {...}") + "".join(f"[{d}]" for d in target.dims)
            out[name] = Typedef(name, spelled, info.size, info.align)
        return out


def _refuse_duplicates(node: c_ast.Node, name: str, fields: tuple[Field, ...]) -> None:
    """Two members of one name (directly, or through anonymous members) are an error to gcc: pycparser
    lets them through, and the binding would not load."""
    seen: set[str] = set()
    for field in fields:
        if field.name in seen:
            clashes = [decl for decl in node.decls or [] if decl.name == field.name]
            where = clashes[-1] if len(clashes) > 1 else node
            raise HeaderError(f"duplicate member {field.name!r} in {name or 'a record'}", *_coord(where))
        seen.add(field.name)


def _coord(node: c_ast.Node) -> tuple[str | None, int | None]:
    """file and line of a declaration, for errors."""
    return (str(node.coord.file), node.coord.line) if node.coord else (None, None)


def _kind(node: c_ast.Node) -> str:
    return "union" if isinstance(node, c_ast.Union) else "struct"


def _type_children(node: c_ast.Node) -> list[c_ast.Node]:
    """Child nodes that can hold struct/union/enum definitions."""
    if isinstance(node, (c_ast.Decl, c_ast.Typedef, c_ast.TypeDecl, c_ast.ArrayDecl, c_ast.PtrDecl,
                         c_ast.Typename)):
        return [node.type]
    return []


def _flatten(members: list[Member] | tuple[Member, ...], prefix: str, base: int) -> list[Field]:
    fields = []
    for m in members:
        offset = base + m.offset
        if m.inline is not None and m.name is None:
            fields += _flatten(m.inline.members, prefix, offset)
            continue
        ctype = (m.base or f"{m.inline.kind if m.inline else 'struct'} {{...}}") + "".join(
            f"[{d if d is not None else ''}]" for d in m.dims)
        assert m.name is not None
        if m.bit_width is not None:
            assert m.bit_offset is not None
            fields.append(Field(prefix + m.name, offset, m.size, ctype, base * 8 + m.bit_offset, m.bit_width))
            continue
        fields.append(Field(prefix + m.name, offset, m.size, ctype))
        if m.inline is not None:
            index = "[0]" * len(m.dims)
            fields += _flatten(m.inline.members, f"{prefix}{m.name}{index}.", offset)
    return fields
