"""The record types the generated bindings are made of (kvm.generated.*.IOCTLS, STRUCTS, ...)."""

from __future__ import annotations

from ._namedtuple import NamedTuple  # (typing.NamedTuple's, without importing typing)


class IoctlSpec(NamedTuple):
    name: str
    number: int
    direction: str  # "none" | "read" | "write" | "readwrite"
    size: int  # bytes of the argument the number encodes
    arg_type: str | None  # C type of the argument ("struct kvm_regs", "__u32"), None for _IO
    fd: frozenset[str]  # kinds of fd it is issued on: "system", "vm", "vcpu", "device"
    capability: str | None  # the KVM_CAP_* that gates it, None when it is basic API
    arches: frozenset[str] | None  # arches api.rst documents it for (None: all)
    section: str | None  # api.rst section
    summary: str
    # (fd kind, capability) where issuing it on that fd needs another capability than `capability`
    capability_on_fd: tuple[tuple[str, str | None], ...] = ()

    def capability_for(self, fd_kind: str) -> str | None:
        """The KVM_CAP_* that gates it on a `fd_kind` fd ("vm", "vcpu", ...), None when basic."""
        for fd, capability in self.capability_on_fd:
            if fd == fd_kind:
                return capability
        return self.capability


class FieldSpec(NamedTuple):
    name: str  # "regs", "io.port", "entries[0].flags"
    offset: int
    size: int
    ctype: str
    bit_offset: int | None = None  # bitfields only: position in bits from the record's start
    bit_width: int | None = None


class StructSpec(NamedTuple):
    name: str  # "struct kvm_regs", "union kvm_...", or a typedef name
    kind: str  # "struct" | "union"
    size: int
    align: int
    fields: tuple[FieldSpec, ...]
    header: str  # "linux/kvm.h", "asm/kvm.h", ...


class CapSpec(NamedTuple):
    name: str
    value: int
    enable_on: frozenset[str]  # "vm" and/or "vcpu": accepted by KVM_ENABLE_CAP there
    ioctls: tuple[str, ...]  # the ioctls it gates
    section: str | None
    summary: str
    # How it is typed (generated caps_* modules, kvm/caps.py): what KVM_CHECK_EXTENSION answers ("bool",
    # "int", "flags"), the bits' (member, header constant, value), enable()'s (name, kind, args index,
    # shift, width, at most the check answer), the arches api.rst names (None: all), and where each of
    # these facts came from: (fact, "api.rst" | "table").
    check: str = "bool"
    flags: tuple[tuple[str, str, int], ...] = ()
    params: tuple[tuple[str, str, int, int, int, bool], ...] = ()
    arches: frozenset[str] | None = None
    sources: tuple[tuple[str, str], ...] = ()
