"""Per-ioctl and per-capability metadata from the kernel's Documentation/virt/kvm/api.rst.

api.rst is hand-written reStructuredText. Chapter 4 has one numbered section per ioctl (some sections
cover several), each opened by field lines such as `:Capability:`, `:Architectures:` and `:Type:`.
Chapters 6, 7 and 8 have one section per capability: enable-able on vCPUs, on VMs, or informational.
The parser reads only numbered section titles, the field lines under them and the first sentence of
the prose, so it needs no reStructuredText library.

The headers, not api.rst, say which ioctls exist. `annotate` joins the two for one kernel and arch,
applies the corrections in `apidoc_fixes`, and fails loudly when an ioctl is left without an fd kind
or names a capability the headers do not define.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Collection, Iterable, Iterator, Mapping

from .apidoc_fixes import Fix, fixes_by_ioctl
from .arches import ARCHES
from .inputs import InputError

FD_KINDS = frozenset({"system", "vm", "vcpu", "device"})
ALL_ARCHES = frozenset(ARCHES)

# Arch names as api.rst writes them (lowercased) -> ours. 32-bit arm KVM is gone; its notes apply to arm64.
KERNEL_ARCH_NAMES = {
    "x86": "x86_64",
    "arm64": "arm64",
    "arm": "arm64",
    "ppc": "ppc64le",
    "powerpc": "ppc64le",
    "s390": "s390x",
    "riscv": "riscv64",
    "mips": "mips64el",
    "loongarch": "loongarch64",
}

IOCTL_CHAPTER = "4"
ENABLE_ON_BY_CHAPTER = {"6": frozenset({"vcpu"}), "7": frozenset({"vm"})}
DOCUMENTING_CHAPTERS = {IOCTL_CHAPTER, "6", "7", "8"}  # 8: informational capabilities

SUMMARY_MAX_CHARS = 200

_FIXES = fixes_by_ioctl()


class ApiDocError(InputError):
    """api.rst and the headers, even with the corrections applied, leave an ioctl undescribed."""


@dataclasses.dataclass(frozen=True)
class IoctlDoc:
    name: str
    section: str  # e.g. "4.37"
    capability: str | None  # a KVM_CAP_* name; None: basic, or no capability to check
    fds: frozenset[str]  # subset of FD_KINDS; empty when api.rst does not say
    arches: frozenset[str] | None  # our arch names; None: all
    parameters: str
    returns: str
    summary: str
    # Arches on which another capability than `capability` gates the ioctl.
    capability_on_arch: Mapping[str, str | None] = dataclasses.field(default_factory=dict)
    # (arch, fd kind) where the capability differs from capability_for(arch): KVM_ENABLE_CAP is gated
    # by KVM_CAP_ENABLE_CAP on vCPUs and by KVM_CAP_ENABLE_CAP_VM on VMs.
    capability_on_fd: Mapping[tuple[str, str], str | None] = dataclasses.field(default_factory=dict)

    def capability_for(self, arch: str) -> str | None:
        return self.capability_on_arch.get(arch, self.capability)

    def capabilities_by_fd(self, arch: str) -> dict[str, str | None]:
        """On `arch`: fd kind -> capability, for the fds where it is not capability_for(arch)."""
        return {fd: cap for (on_arch, fd), cap in self.capability_on_fd.items() if on_arch == arch}


@dataclasses.dataclass(frozen=True)
class CapDoc:
    name: str
    section: str
    enable_on: frozenset[str]  # where KVM_ENABLE_CAP takes it: {"vm"}, {"vcpu"}, both, or empty
    arches: frozenset[str] | None
    parameters: str  # what args[] of struct kvm_enable_cap mean, where the text says so
    summary: str
    body: tuple[str, ...] = dataclasses.field(default=(), compare=False)  # the section's lines (codegen/caps.py)


@dataclasses.dataclass(frozen=True)
class ApiDoc:
    ioctls: dict[str, IoctlDoc]
    caps: dict[str, CapDoc]


@dataclasses.dataclass(frozen=True)
class IoctlMeta:
    capability: str | None
    fds: frozenset[str]
    arches: frozenset[str] | None
    section: str | None  # None: api.rst has no section for it
    summary: str
    capability_on_fd: Mapping[str, str | None] = dataclasses.field(default_factory=dict)  # fd -> another one

    def capabilities(self) -> set[str]:
        """Every capability gating it, on any fd."""
        return {cap for cap in (self.capability, *self.capability_on_fd.values()) if cap is not None}


# ---------------------------------------------------------------------------------------------
# The join with the headers


def annotate(doc: ApiDoc, ioctl_names: Iterable[str], cap_names: Collection[str], arch: str) -> dict[str, IoctlMeta]:
    """Metadata for every ioctl the headers define, for one arch; raises ApiDocError on gaps."""
    metas = {name: _corrected(_meta_from_doc(doc.ioctls.get(name), arch), _FIXES.get(name)) for name in ioctl_names}
    problems = [f"{name}: no fd kind (system, vm, vcpu or device)" for name, meta in metas.items() if not meta.fds]
    # An ioctl documented for other arches may still get a number here (its struct is in linux/kvm.h)
    # while its capability is defined only under that arch's #ifdef: only this arch's own must exist.
    problems += [
        f"{name}: capability {cap} is not defined in the headers"
        for name, meta in metas.items()
        for cap in sorted(meta.capabilities())
        if cap not in cap_names and (meta.arches is None or arch in meta.arches)
    ]
    if problems:
        raise ApiDocError(f"api.rst leaves {len(problems)} problem(s) on {arch}; add rows to "
                          "codegen/apidoc_fixes.py:\n  " + "\n  ".join(problems))
    return metas


def _meta_from_doc(ioctl: IoctlDoc | None, arch: str) -> IoctlMeta:
    if ioctl is None:
        return IoctlMeta(capability=None, fds=frozenset(), arches=None, section=None, summary="")
    return IoctlMeta(ioctl.capability_for(arch), ioctl.fds, ioctl.arches, ioctl.section, ioctl.summary,
                     ioctl.capabilities_by_fd(arch))


def _corrected(meta: IoctlMeta, fix: Fix | None) -> IoctlMeta:
    if fix is None:
        return meta
    if fix.fds is not None:
        fds = parse_fds(fix.fds)
        meta = dataclasses.replace(meta, fds=fds, capability_on_fd={
            fd: cap for fd, cap in meta.capability_on_fd.items() if fd in fds})
    if fix.capability is not None:  # a correction names the one capability of every fd
        meta = dataclasses.replace(meta, capability=normalize_capability(fix.capability), capability_on_fd={})
    if fix.arches is not None:
        meta = dataclasses.replace(meta, arches=parse_arches(fix.arches))
    return meta


def normalize_capability(name: str) -> str | None:
    """A KVM_CAP_* name, or None for api.rst's "basic" and "none" (nothing to check)."""
    name = name.strip()
    return None if name.lower() in ("basic", "none") else name


def enable_caps(doc: ApiDoc) -> dict[str, frozenset[str]]:
    """Capability -> the fd kinds ({"vm", "vcpu"}) on which KVM_ENABLE_CAP accepts it."""
    return {name: cap.enable_on for name, cap in doc.caps.items() if cap.enable_on}


# ---------------------------------------------------------------------------------------------
# Parsing


def parse(text: str) -> ApiDoc:
    ioctls: dict[str, IoctlDoc] = {}
    caps: dict[str, CapDoc] = {}
    for section in _sections(text):
        if section.chapter not in DOCUMENTING_CHAPTERS:
            continue
        names = _title_names(section.title)
        # Titles name capabilities in chapters 6 to 8, and once (5.10's 4.97) in chapter 4.
        for cap in _cap_docs(section, [n for n in names if n.startswith("KVM_CAP_")]):
            caps[cap.name] = _merged_cap(caps.get(cap.name), cap)
        if section.chapter == IOCTL_CHAPTER:
            for ioctl in _ioctl_docs(section, [n for n in names if not n.startswith("KVM_CAP_")]):
                ioctls.setdefault(ioctl.name, ioctl)
    return ApiDoc(ioctls, caps)


@dataclasses.dataclass(frozen=True)
class _Section:
    number: str  # "4.37"
    title: str  # what follows the number
    lines: list[str]  # the body, up to the next numbered title

    @property
    def chapter(self) -> str:
        return self.number.split(".", 1)[0]


_NUMBERED_TITLE = re.compile(r"^(\d+(?:\.\d+)?)\.?\s+(\S.*?)\s*$")
_TITLE_UNDERLINE = re.compile(r"^(-{3,}|={3,})\s*$")


def _sections(text: str) -> Iterator[_Section]:
    """Numbered sections ("4.37 KVM_ENABLE_CAP" underlined with dashes).

    Chapter titles ("4. API description") end the section before them but are not yielded.
    """
    lines = text.splitlines()
    starts = [
        i for i in range(len(lines) - 1)
        if _TITLE_UNDERLINE.match(lines[i + 1]) and _NUMBERED_TITLE.match(lines[i])
    ]
    for start, end in zip(starts, starts[1:] + [len(lines)]):
        match = _NUMBERED_TITLE.match(lines[start])
        assert match is not None
        number, title = match.groups()
        if "." in number:
            yield _Section(number, title, lines[start + 2 : end])


def _title_names(title: str) -> list[str]:
    """The KVM_* names in a title: "A, B", "A/B", "KVM_(UN)REGISTER_X" (both), "A (vm ioctl)"."""
    expanded = re.sub(r"KVM_\((\w+)\)(\w+)", r"KVM_\2 KVM_\1\2", title)
    return re.findall(r"\bKVM_\w+", expanded)


_FIELD = re.compile(r"^(:?)(Capability|Architectures?|Type|Target|Parameters|Returns|Extended by)\b(:?)\s*(.*)$")
_FIELD_ALIASES = {"architecture": "architectures"}


def _field(line: str) -> tuple[str, str] | None:
    """(lowercased name, value) of a field line ":Name: value", or of its slips "Name: value", ":Name value"."""
    match = _FIELD.match(line)
    if not match or not (match[1] or match[3]):
        return None
    name = match[2].lower()
    return _FIELD_ALIASES.get(name, name), match[4].strip()


def _field_blocks(lines: list[str]) -> list[dict[str, str]]:
    """The runs of field lines that open a section; indented lines continue the value above them.

    Field names are lowercased. Runs are separated by blank lines (KVM_ENABLE_CAP has two, for its
    vcpu and vm forms); the first other line ends the fields.
    """
    blocks: list[dict[str, str]] = []
    block: dict[str, str] | None = None
    name = ""
    for line in lines:
        field = _field(line)
        if field:
            name, value = field
            if block is None or name in block:
                block = {}
                blocks.append(block)
            block[name] = value
        elif block is not None and line[:1].isspace() and line.strip():
            block[name] += " " + line.strip()
        elif not line.strip():
            block = None
        else:
            break
    return blocks


def _ioctl_docs(section: _Section, names: list[str]) -> list[IoctlDoc]:
    blocks = _field_blocks(section.lines) or [{}]
    summary = _summary(section.lines)
    docs = []
    typed_fds = frozenset().union(*(parse_fds(b.get("type", "")) for b in blocks))
    for name in names:
        fds = typed_fds | _noted_fds(blocks, name)
        capability, capability_on_arch = _capability_per_arch(blocks, name)
        on_fd = {
            (arch, fd): cap
            for arch in sorted(ALL_ARCHES) for fd in sorted(fds)
            if (cap := _capability_on(blocks, name, arch, fd)) != capability_on_arch.get(arch, capability)
        }
        docs.append(IoctlDoc(
            name=name,
            section=section.number,
            capability=capability,
            fds=fds,
            arches=_union_of_arches(parse_arches(b.get("architectures", "all")) for b in blocks),
            parameters=blocks[0].get("parameters", ""),
            returns=blocks[0].get("returns", ""),
            summary=summary,
            capability_on_arch=capability_on_arch,
            capability_on_fd=on_fd,
        ))
    return docs


def _cap_docs(section: _Section, names: list[str]) -> list[CapDoc]:
    fields = (_field_blocks(section.lines) or [{}])[0]
    return [
        CapDoc(
            name=name,
            section=section.number,
            enable_on=_enable_on(section.chapter, fields.get("target", "")),
            arches=parse_arches(fields.get("architectures", "all")),
            parameters=fields.get("parameters", ""),
            summary=_summary(section.lines),
            body=tuple(section.lines),
        )
        for name in names
    ]


def _enable_on(chapter: str, target: str) -> frozenset[str]:
    """The chapter says where a capability is enabled, unless its `:Target:` names the fd (6.8 says vm)."""
    by_chapter = ENABLE_ON_BY_CHAPTER.get(chapter, frozenset())
    by_target = parse_fds(target) & {"vm", "vcpu"}
    return by_target if by_chapter and by_target else by_chapter


def _merged_cap(earlier: CapDoc | None, later: CapDoc) -> CapDoc:
    """A capability listed in two chapters (say 7 and 8) is enable-able wherever one of them says."""
    if earlier is None:
        return later
    return dataclasses.replace(earlier, enable_on=earlier.enable_on | later.enable_on)


# ---------------------------------------------------------------------------------------------
# Field values


def parse_fds(text: str) -> frozenset[str]:
    """"system ioctl, vm ioctl", "vcpu ioctl / vm ioctl", "VM" -> fd kinds."""
    return frozenset(word for word in re.findall(r"[a-z]+", text.lower()) if word in FD_KINDS)


def parse_arches(text: str) -> frozenset[str] | None:
    """"all" -> None; "all except arm64", "x86, arm64", "x86 SEV enabled" -> our arch names.

    api.rst writes "none" for ioctls that no arch-specific code implements (KVM_CREATE_GUEST_MEMFD):
    like "all", it leaves availability to the capability.
    """
    before, _, excepted = text.lower().partition("except")
    if re.search(r"\b(all|none)\b", before):
        excluded = _arch_words(excepted)
        return ALL_ARCHES - excluded if excluded else None
    return _arch_words(text.lower())


def _arch_words(text: str) -> frozenset[str]:
    return frozenset(KERNEL_ARCH_NAMES[w] for w in re.findall(r"[a-z0-9]+", text) if w in KERNEL_ARCH_NAMES)


def _union_of_arches(arch_sets: Iterable[frozenset[str] | None]) -> frozenset[str] | None:
    union: frozenset[str] = frozenset()
    for arches in arch_sets:
        if arches is None:
            return None
        union |= arches
    return union


@dataclasses.dataclass(frozen=True)
class _CapabilityChoice:
    name: str | None  # None: basic
    arches: frozenset[str] | None  # from a note like "(s390)"; None: no arch note
    only_for: str | None  # the ioctl named by a note like "for KVM_GET_MSR_FEATURE_INDEX_LIST"
    fd: str | None = None  # the fd kind of a note like "for vm device" or "for system (/dev/kvm) device"
    no_set: bool = False  # "(no set)": not for the KVM_SET_* ioctl of a SET/GET section


# A choice is a capability, "basic" or "none"; a KVM_* name after "for" belongs to the note before it.
# Non-KVM_CAP_ names are kept too: when api.rst misnames a capability, `annotate` then reports it.
_CHOICE = re.compile(r"(?<!for )\b(KVM_\w+|basic|none)\b")
_PARENTHESIZED = re.compile(r"\(([^)]*)\)")


def _capability_choices(text: str) -> list[_CapabilityChoice]:
    """"KVM_CAP_A, KVM_CAP_B (s390)", "basic, KVM_CAP_C for KVM_X", "A or B", "A / B", "A and B"."""
    matches = list(_CHOICE.finditer(text))
    ends = [m.start() for m in matches[1:]] + [len(text)]
    choices = []
    for match, end in zip(matches, ends):
        note = text[match.end() : end]
        only_for = re.search(r"\bfor (KVM_\w+)", note)
        fd = re.search(r"\bfor (vm|vcpu|system)\b", note)
        choices.append(_CapabilityChoice(
            name=normalize_capability(match[1]),
            arches=_arch_note(note),
            only_for=only_for[1] if only_for else None,
            fd=fd[1] if fd else None,
            no_set="(no set)" in note,
        ))
    return choices


def _choices_for(text: str, ioctl: str) -> list[_CapabilityChoice]:
    """The choices that apply to `ioctl` ("for <ioctl>" ones take precedence; "(no set)" ones skip SETs)."""
    choices = [c for c in _capability_choices(text) if not (c.no_set and "_SET_" in ioctl)]
    return [c for c in choices if c.only_for == ioctl] or [c for c in choices if c.only_for is None]


def _noted_fds(blocks: list[dict[str, str]], ioctl: str) -> frozenset[str]:
    """fd kinds only a capability note names ("KVM_CAP_SYS_ATTRIBUTES for system (/dev/kvm) device")."""
    return frozenset(c.fd for b in blocks for c in _choices_for(b.get("capability", "basic"), ioctl) if c.fd)


def _arch_note(note: str) -> frozenset[str] | None:
    """The arches in a parenthesized note made only of arch names, like "(s390)"; "(vcpu)" is none."""
    for inside in _PARENTHESIZED.findall(note):
        words = re.findall(r"[a-z0-9]+", inside.lower())
        if words and all(w in KERNEL_ARCH_NAMES for w in words):
            return _arch_words(inside.lower())
    return None


def _capability_per_arch(blocks: list[dict[str, str]], ioctl: str) -> tuple[str | None, dict[str, str | None]]:
    """The capability gating `ioctl` on most arches, and the arches where another one does.

    Choice rule, when api.rst names several: on each arch, the first field block that covers the arch
    (KVM_ENABLE_CAP's vcpu block lacks arm64, so its vm block's capability gates it there); within a
    block, a choice with an arch note naming the arch, else the first choice without an arch note.
    Choices marked "for <ioctl>" apply only to that ioctl and take precedence for it.
    """
    per_arch = {arch: _capability_on(blocks, ioctl, arch) for arch in sorted(ALL_ARCHES)}
    default = _capability_on(blocks, ioctl, arch=None)
    return default, {arch: cap for arch, cap in per_arch.items() if cap != default}


def _capability_on(blocks: list[dict[str, str]], ioctl: str, arch: str | None, fd: str | None = None) -> str | None:
    """The capability gating `ioctl` on `arch` (None: on arches without a note of their own), issued on a
    `fd` fd when given: then only the blocks whose type names that fd count, when any does."""
    if fd is not None:
        blocks = [b for b in blocks if fd in parse_fds(b.get("type", ""))] or blocks
    # On an arch that no block covers the ioctl does not exist; the first block's answer will do.
    block = next((b for b in blocks if arch is None or _covers(parse_arches(b.get("architectures", "all")), arch)),
                 blocks[0])
    choices = _choices_for(block.get("capability", "basic"), ioctl)
    # a choice noted "for <fd kind>" gates that fd kind only
    choices = [c for c in choices if fd is not None and c.fd == fd] or [c for c in choices if c.fd is None] or choices
    on_arch = [c for c in choices if arch is not None and c.arches is not None and arch in c.arches]
    without_arch_note = [c for c in choices if c.arches is None]
    for candidates in (on_arch, without_arch_note, choices):
        if candidates:
            return candidates[0].name
    return None


def _covers(arches: frozenset[str] | None, arch: str) -> bool:
    return arches is None or arch in arches


# ---------------------------------------------------------------------------------------------
# Prose


def _summary(lines: list[str]) -> str:
    """The first sentence of the section's first prose paragraph, trimmed to one short line."""
    without_fields = ["" if _field(line) else line for line in lines]
    for paragraph in _paragraphs(without_fields):
        if _is_prose(paragraph):
            return _trimmed(_first_sentence(" ".join(paragraph)))
    return ""


def _paragraphs(lines: list[str]) -> Iterator[list[str]]:
    paragraph: list[str] = []
    for line in lines + [""]:
        if line.strip():
            paragraph.append(line)
        elif paragraph:
            yield paragraph
            paragraph = []


def _is_prose(paragraph: list[str]) -> bool:
    """Text starting with a letter at the margin; not a title, a term, nor a lead-in like "Errors:".

    That leaves out indented blocks, directives, tables, ``literals`` and (asides).
    """
    first = paragraph[0]
    if not first[:1].isalpha() or " " not in first.strip():
        return False  # not at the margin, markup, or a lone term such as "KVM_PV_DISABLE"
    if len(paragraph) > 1 and (paragraph[1][:1].isspace() or re.fullmatch(r"([-=^~])\1+\s*", paragraph[1])):
        return False  # a definition-list term, or a title
    return not (len(paragraph) == 1 and first.rstrip().endswith(":"))


def _first_sentence(text: str) -> str:
    text = re.sub(r"\s+", " ", text).strip()
    # A period ends the sentence when a capital letter, a parenthesis or the end follows, and it is not
    # part of "e.g." or "i.e.".
    match = re.match(r"(.+?(?<!\be\.g)(?<!\bi\.e)[.!?])(?=\s+[A-Z(]|$)", text)
    return match[1] if match else text


def _trimmed(sentence: str) -> str:
    if len(sentence) <= SUMMARY_MAX_CHARS:
        return sentence
    return sentence[: SUMMARY_MAX_CHARS - 3].rsplit(" ", 1)[0] + "..."
