"""Every KVM_CAP_* of a Model, typed: what KVM_CHECK_EXTENSION answers, and what KVM_ENABLE_CAP takes.

Read from api.rst's capability sections (chapters 6 to 8, `apidoc.CapDoc`): the chapter or `:Target:`
says where KVM_ENABLE_CAP takes it; `:Parameters:` names its args[] ("args[0] - features that should
be enabled"), each read as a flags, int, bool or fd argument by its words; `#define` blocks and tables
of header constants in the section name the bits; a sentence tying KVM_CHECK_EXTENSION to a bitmask or
a default value gives the check's type. `caps_table` corrects or completes it, row by row, and every
fact records where it came from. Summaries are ours (`caps_prose`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from . import apidoc, caps_prose
from .caps_table import ARCH_PREFIXES, TABLE, Flags, Param, Row
from .model import CapInfo, CapParam, FlagSet

API_RST = "api.rst"
REVIEWED = "table"

_ARGS = re.compile(r"\bargs?\[(\d)\]")
_DEFINE = re.compile(r"^\s*#define\s+(\w+)")
_TABLE_BORDER = re.compile(r"^\s*=+(\s+=+)+\s*$")
_FLAG_WORDS = ("features", "quirks", "exits", "events", "policy")  # the name of a flags argument, when said


def build_caps(constants: Mapping[str, int], docs: Mapping[str, apidoc.CapDoc]) -> dict[str, CapInfo]:
    """CapInfo for every KVM_CAP_* constant of a binding."""
    return {name: _cap(name, constants, docs.get(name), TABLE.get(name))
            for name in constants if name.startswith("KVM_CAP_")}


def _cap(name: str, constants: Mapping[str, int], doc: apidoc.CapDoc | None, row: Row | None) -> CapInfo:
    sources: dict[str, str] = {}
    body = doc.body if doc is not None else ()
    parsed_params = _parse_params(doc.parameters if doc is not None else "")

    # the named bits: the table's constants, else those the section lists
    flags = None
    if row is not None and row.flags is not None:
        flags = _flag_set(name, _by_prefix(constants, row.flags), REVIEWED)
        sources["flags"] = REVIEWED
    else:
        listed = _listed_bits(body, constants)
        if listed:
            flags = _flag_set(name, [(_strip_common(listed, c), c, constants[c]) for c in listed], API_RST)

    check = _check_from_text(body, flags is not None)
    if row is not None and row.check is not None:
        check, sources["check"] = row.check, REVIEWED
    elif check != "bool":
        sources["check"] = API_RST

    enable_on = tuple(sorted(doc.enable_on)) if doc is not None else ()
    if row is not None and row.enable_on is not None:
        enable_on, sources["enable_on"] = tuple(row.enable_on.split()), REVIEWED
    elif enable_on:
        sources["enable_on"] = API_RST

    params: tuple[CapParam, ...] = ()
    if enable_on:
        if row is not None and row.params is not None:
            params = tuple(_param(p, REVIEWED) for p in row.params)
            sources["params"] = REVIEWED
        else:
            typed = (_typed(p, flags is not None, check == "flags") for p in parsed_params)
            params = tuple(p for p in typed if p is not None)
            if params:
                sources["params"] = API_RST
    if not any(p.kind == "flags" for p in params) and check != "flags":
        flags = None  # bits a section lists for something else (a struct's flags field)
        sources.pop("flags", None)
    elif flags is not None and not flags.members:
        flags = None  # bits the headers of this binding do not name: an int, its bits checked all the same
        check = "int" if check == "flags" else check
    elif flags is not None:
        sources.setdefault("flags", flags.source)

    arches = _arches(name, doc, row)
    return CapInfo(name, enable_on, doc.section if doc is not None else None, caps_prose.summary(name),
                   arches, check, flags, params, tuple(sorted(sources.items())))


# ---------------------------------------------------------------------------------------------
# Bits


def _by_prefix(constants: Mapping[str, int], spec: Flags) -> list[tuple[str, str, int]]:
    """(member, constant, bit) of the constants `spec` selects; the member is the name without its prefix."""
    members = []
    for constant, value in constants.items():
        prefix = next((p for p in spec.prefixes if constant.startswith(p)), None)
        if (prefix is None or not constant.endswith(spec.suffix) or _not_a_bit(constant)
                or spec.only and constant not in spec.only):
            continue
        bit = 1 << value if spec.bit_index else value
        if not _one_bit(bit) or any(c == constant for _, c, _ in members):
            continue
        member = constant[len(prefix):] or constant.removeprefix("KVM_")
        member = "_" + member if member[0].isdigit() else member
        members.append((member, constant, bit))
    return members


def _listed_bits(body: tuple[str, ...], constants: Mapping[str, int]) -> list[str]:
    """Constants a section lists in `#define` lines or in the first column of a table, one bit each."""
    names: list[str] = []
    in_table = after_border = False
    for line in body:
        if _TABLE_BORDER.match(line):
            in_table = after_border = True
            continue
        if after_border and not line.strip():
            in_table = False  # the blank line after a table's last border (rows may have blank lines between)
        after_border = False
        match = _DEFINE.match(line) or (re.match(r"\s*(KVM_\w+)", line) if in_table else None)
        if match and match[1] not in names:
            names.append(match[1])
    return [n for n in names if n in constants and not _not_a_bit(n) and _one_bit(constants[n])]


def _not_a_bit(constant: str) -> bool:
    return constant.startswith(("KVM_CAP_", "KVM_EXIT_")) or any(w in constant for w in ("_MASK", "VALID", "_SHIFT"))


def _one_bit(value: int) -> bool:
    return value > 0 and value & (value - 1) == 0


def _strip_common(names: list[str], name: str) -> str:
    """`name` without the longest prefix (ending in "_") all `names` share."""
    prefix = names[0]
    for other in names[1:]:
        while not other.startswith(prefix):
            prefix = prefix[:-1]
    prefix = prefix[: prefix.rfind("_") + 1] if len(names) > 1 else name[: name.rfind("_") + 1]
    member = name[len(prefix):]
    return member if member and not member[0].isdigit() else name.removeprefix("KVM_")


def _flag_set(cap: str, members: list[tuple[str, str, int]], source: str) -> FlagSet:
    return FlagSet(class_name(cap), tuple(sorted(members, key=lambda m: (m[2], m[0]))), source)


def class_name(cap: str) -> str:
    """KVM_CAP_X2APIC_API -> X2apicApi."""
    return "".join(word.capitalize() for word in cap.removeprefix("KVM_CAP_").split("_"))


# ---------------------------------------------------------------------------------------------
# KVM_CHECK_EXTENSION


def _check_from_text(body: tuple[str, ...], has_flags: bool) -> str:
    """"flags" or "int" when a sentence ties KVM_CHECK_EXTENSION's answer to bits or to a value."""
    text = re.sub(r"\s+", " ", " ".join(body))
    for sentence in re.split(r"(?<=\.)\s", text):
        if "KVM_CHECK_EXTENSION" not in sentence:
            continue
        if has_flags and re.search(r"bitmask|bit-array|bit array|supported modes|result to KVM_ENABLE_CAP", sentence):
            return "flags"
        if re.search(r"default value|return value of KVM_CHECK_EXTENSION\(KVM_CAP_\w+\) as the maximum", sentence):
            return "int"
    return "bool"


# ---------------------------------------------------------------------------------------------
# enable()'s arguments


def _parse_params(text: str) -> list[tuple[int, str]]:
    """(args index, description) for each args[N] of a :Parameters: line; "a, b" names them in order."""
    text = text.strip()
    if text.lower().rstrip(".") in ("", "none"):
        return []
    matches = list(_ARGS.finditer(text))
    if not matches:
        words = [w.strip() for w in text.split(",")]
        return [(i, w) for i, w in enumerate(words) if re.fullmatch(r"[a-z_]+", w)]
    ends = [m.start() for m in matches[1:]] + [len(text)]
    return [(int(m[1]), text[m.end():end].strip(" -;.")) for m, end in zip(matches, ends)]


def _typed(parsed: tuple[int, str], has_flags: bool, check_is_flags: bool) -> CapParam | None:
    """A parsed argument's kind and name, by its words; None for a reserved one (sent as 0)."""
    index, words = parsed
    lower = words.lower()
    if re.fullmatch(r"[a-z_]+", words):  # named by the line itself ("vsmt_mode, flags")
        return CapParam(words, "int", index)
    if re.search(r"reserved|must be 0|should be 0", lower):
        return None
    if re.search(r"\bfd\b|file handle|file descriptor", lower):
        return CapParam("fd", "fd", index)
    if re.search(r"\bwhether\b|0 to disable", lower):
        return CapParam("enable", "bool", index)
    if has_flags and re.search(r"mask|bits|features|set of|flags|which|policy", lower):
        name = next((w for w in _FLAG_WORDS if w in lower), "flags")
        return CapParam(name, "flags", index, at_most_check=check_is_flags)
    for pattern, name in (("size", "size"), ("nanosecond", "ns"), ("address", "address"), ("number", "number")):
        if pattern in lower:
            return CapParam(name, "int", index)
    return CapParam("value", "int", index)


def _param(p: Param, source: str) -> CapParam:
    return CapParam(p.name, p.kind, p.index, p.shift, p.width, p.at_most_check, source)


# ---------------------------------------------------------------------------------------------
# Arches


def _arches(name: str, doc: apidoc.CapDoc | None, row: Row | None) -> tuple[str, ...] | None:
    if row is not None and row.arches is not None:
        arches = apidoc.parse_arches(row.arches)
    elif doc is not None:
        arches = doc.arches
    else:
        prefix = next((p for p in ARCH_PREFIXES if name.startswith(p)), None)
        arches = apidoc.parse_arches(ARCH_PREFIXES[prefix]) if prefix else None
    return tuple(sorted(arches)) if arches is not None else None
