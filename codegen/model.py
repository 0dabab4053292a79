"""The model: one plain description of the KVM ABI for one (kernel version, arch).

Everything downstream (templates, the diff, tests) reads only this. Templates format it; they never
compute. Layout is kept twice on purpose: `fields` is the flat list of every reachable member (what
users and the diff look at), and `members` is the declaration tree the cffi definitions are rendered
from.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Field:
    name: str  # dotted path for members of anonymous-typed members, e.g. "io.port", "s.regs[0]"
    offset: int  # bytes from the start of the outermost record
    size: int  # bytes; 0 for a flexible array member
    ctype: str  # C type as declared, e.g. "__u64", "struct kvm_regs", "__u8[16]", "struct kvm_msr_entry[]"
    bit_offset: int | None = None  # bitfields only: bit position within the record
    bit_width: int | None = None


@dataclasses.dataclass(frozen=True)
class Member:
    """One declaration in a record body, as the cffi renderer needs it."""

    name: str | None  # None for anonymous structs/unions
    offset: int
    size: int
    base: str  # element C type ("__u64", "struct kvm_regs"); "" when `inline` holds the type
    dims: tuple[int | None, ...] = ()  # array dimensions; None = flexible
    inline: "Record | None" = None  # the type body of an anonymous or untagged struct/union
    bit_width: int | None = None
    bit_offset: int | None = None  # bitfields: bit position within the record containing them


@dataclasses.dataclass(frozen=True)
class Record:
    kind: str  # "struct" or "union"
    name: str  # "struct kvm_regs", a typedef name for untagged records, "" for anonymous inline ones
    size: int
    align: int
    fields: tuple[Field, ...]
    members: tuple[Member, ...]
    packed: bool = False
    header: str = ""  # the header that defines it, e.g. "linux/kvm.h"


@dataclasses.dataclass(frozen=True)
class Typedef:
    name: str
    target: str  # "unsigned long long", "struct kvm_foo", "__u32[4]"
    size: int
    align: int


@dataclasses.dataclass(frozen=True)
class Ioctl:
    name: str
    number: int | None  # None when unavailable on this arch
    direction: str  # "none" | "read" | "write" | "readwrite"
    type: int  # the ioctl "magic" (KVMIO = 0xAE)
    nr: int
    size: int
    arg_type: str | None  # "struct kvm_regs", "__u32", ... or None for _IO
    unavailable: str | None = None  # why there is no number on this arch
    fds: tuple[str, ...] = ()  # sorted subset of ("device", "system", "vcpu", "vm")
    capability: str | None = None  # KVM_CAP_* that gates it, None for basic
    capability_on_fd: tuple[tuple[str, str | None], ...] = ()  # (fd, capability) where not `capability`
    arches: tuple[str, ...] | None = None  # arches api.rst names (None = all)
    section: str | None = None  # api.rst section number
    summary: str = ""

    def capability_for(self, fd: str) -> str | None:
        """The capability gating it on a `fd` fd."""
        return dict(self.capability_on_fd).get(fd, self.capability)

    def capabilities(self) -> set[str]:
        """Every capability gating it, on any fd."""
        return {cap for cap in (self.capability, *(cap for _, cap in self.capability_on_fd)) if cap is not None}


@dataclasses.dataclass(frozen=True)
class EnumGroup:
    """Constants the kernel groups by a common prefix, rendered as an IntEnum/IntFlag."""

    name: str  # Python class name, e.g. "Cap"
    prefix: str  # e.g. "KVM_CAP_"
    flag: bool  # IntFlag (bit values) rather than IntEnum
    members: tuple[tuple[str, int], ...]  # (member name without prefix, value), sorted by value then name


@dataclasses.dataclass(frozen=True)
class FlagSet:
    """Named bits of a capability: its KVM_CHECK_EXTENSION value, or an argument of KVM_ENABLE_CAP."""

    name: str  # Python IntFlag class name, e.g. "X2apicApi"
    members: tuple[tuple[str, str, int], ...]  # (member name, header constant, bit value), by value
    source: str  # "api.rst" (its #define block or table) or "table" (codegen/caps_table.py)


@dataclasses.dataclass(frozen=True)
class CapParam:
    """One keyword argument of a capability's enable(): where it goes in args[] and what it holds."""

    name: str
    kind: str  # "flags" (the capability's FlagSet), "int", "bool" (sent as 1/0), "fd"
    index: int  # args[index]
    shift: int = 0  # bits below it in args[index] (KVM_CAP_X86_NOTIFY_VMEXIT packs two values)
    width: int = 64  # bits it may use
    at_most_check: bool = False  # not above the KVM_CHECK_EXTENSION value (flags: a subset of it)
    source: str = "api.rst"  # "api.rst" (read from :Parameters:) or "table"


@dataclasses.dataclass(frozen=True)
class CapInfo:
    name: str
    enable_on: tuple[str, ...]  # subset of ("vcpu", "vm") with KVM_ENABLE_CAP
    section: str | None = None
    summary: str = ""  # ours (codegen/caps_prose.py), not api.rst's
    arches: tuple[str, ...] | None = None  # arches api.rst or the table names (None: all)
    check: str = "bool"  # what KVM_CHECK_EXTENSION answers: "bool", "int" (a count or size) or "flags"
    flags: FlagSet | None = None  # the named bits of a "flags" check or of "flags" parameters
    params: tuple[CapParam, ...] = ()  # enable()'s arguments, in args[] order
    sources: tuple[tuple[str, str], ...] = ()  # (fact, "api.rst" | "table"): check, flags, params, enable_on


@dataclasses.dataclass
class Model:
    kernel: str  # the bundled series, e.g. "6.12"
    linux_version: str  # e.g. "6.12.117"
    arch: str
    origin: str  # where the headers came from
    constants: dict[str, int]
    ioctls: dict[str, Ioctl]
    records: dict[str, Record]
    typedefs: dict[str, Typedef]
    enums: dict[str, EnumGroup]
    caps: dict[str, CapInfo] = dataclasses.field(default_factory=dict)
    apidoc_fixes: int = 0

    @property
    def module_name(self) -> str:
        return f"linux_{self.kernel.replace('.', '_')}_{self.arch}"
