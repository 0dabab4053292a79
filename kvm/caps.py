"""Typed capabilities: what the generated `caps_*` modules are made of.

Each binding's `kvm.generated.caps_linux_<ver>_<arch>` module has one `Capability` subclass per
KVM_CAP_* (`X2apicApiCap`), the `IntFlag` sets their values are made of (`X2apicApi`), and three
`Caps` classes, `SystemCaps`, `VmCaps` and `VcpuCaps`, with one attribute per capability, which
`kvm.Kvm().caps`, `vm.caps` and `vcpu.caps` return bound to that object:

    vm.caps.x2apic_api.check()                    # X2apicApi.USE_32BIT_IDS|..., KVM_CHECK_EXTENSION decoded
    vm.caps.x2apic_api.enable(features=X2apicApi.USE_32BIT_IDS)
    kvm.Kvm().caps.max_vcpus.check()              # 1024

`check()` asks KVM_CHECK_EXTENSION through the object (`obj.check_extension`: the fd that answers for
it) and types the answer: bool, int, or the capability's IntFlag. `enable(...)` exists only where
KVM_ENABLE_CAP takes the capability (a VM capability has none on `vcpu.caps`, and /dev/kvm takes
none); it checks every argument (type, range, and for bits, that they are named, or reported by
`check()` when the kernel says the argument must be a subset of it) before anything is issued, raises
CapabilityError without issuing KVM_ENABLE_CAP when the host reports the capability absent, and then
issues it through `obj.enable_cap`. Capabilities the binding does not know stay reachable by number
(`obj.check_extension(n)`, `obj.enable_cap(n, ...)`).
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from typing import Any, ClassVar, Generic, Protocol, TypeVar, overload

from . import marshal
from ._fd import BoundToFd
from .errors import CapabilityError


class HasFileno(Protocol):
    """What an fd argument may be besides an int: a `Vm`, a file, a socket."""

    def fileno(self) -> int: ...


class Capability(BoundToFd):
    """One KVM_CAP_* bound to a `Kvm`, `Vm` or `Vcpu`: its facts as class attributes, `check()`, and
    `enable(...)` in the subclasses of the fd kinds that take it."""

    NAME: ClassVar[str]  # "KVM_CAP_X2APIC_API"
    NUMBER: ClassVar[int]
    SECTION: ClassVar[str | None]  # api.rst section
    ARCHES: ClassVar[tuple[str, ...] | None]  # arches api.rst (or the reviewed table) names; None: all
    ENABLE_ON: ClassVar[tuple[str, ...]]  # fd kinds KVM_ENABLE_CAP takes it on: "vm", "vcpu"
    FLAGS: ClassVar[type[enum.IntFlag] | None] = None  # the IntFlag of its bits, where the headers name them

    __slots__ = ()

    def value(self) -> int:
        """KVM_CHECK_EXTENSION's answer as the int the kernel gave (0: absent)."""
        return self._owner.check_extension(self.NUMBER)

    def check(self) -> bool | int | enum.IntFlag:
        """KVM_CHECK_EXTENSION's answer, typed (overridden per capability)."""
        return self.value() > 0

    def _present(self) -> int:
        """The check answer, or CapabilityError (nothing issued) when the host reports it absent."""
        answer = self.value()
        if answer <= 0:
            owner = self._owner
            raise CapabilityError("KVM_ENABLE_CAP", owner.fd_kind, self.NAME, _answering_kind(owner))
        return answer

    def _enable(self, *args: tuple[int, int, int]) -> None:
        """KVM_ENABLE_CAP with args[index] |= value << shift for each (index, shift, value)."""
        self._present()
        packed = [0, 0, 0, 0]
        for index, shift, value in args:
            packed[index] |= value << shift
        self._owner.enable_cap(self.NUMBER, *packed)

    # -- arguments, each checked before anything is issued -------------------------------------------

    def _flags(self, what: str, value: Any, flags: type[enum.IntFlag] | None, width: int, within_check: bool) -> int:
        """A set of bits: named by `flags` (when the headers name them), and with `within_check` only those
        check() reports."""
        bits = marshal.integer(value, f"{self.NAME} {what}", 0, (1 << width) - 1)
        if within_check:
            allowed, whose = self._present(), "KVM_CHECK_EXTENSION reports"
        elif flags is not None:
            allowed, whose = sum(int(member) for member in flags), f"{flags.__name__} names"
        else:
            return bits
        if bits & ~allowed:
            shown = format_value(flags(allowed)) if flags is not None else f"{allowed:#x}"
            raise ValueError(f"{self.NAME}: {what} has bits {bits & ~allowed:#x} that are not among those "
                             f"{whose} ({shown or 'none'})")
        return bits

    def _int(self, what: str, value: Any, width: int, at_most_check: bool) -> int:
        high = (1 << width) - 1
        if at_most_check:
            high = min(high, self._present())
        return marshal.integer(value, f"{self.NAME} {what}", 0, high)

    def _bool(self, what: str, value: Any) -> int:
        return int(marshal.boolean(value, f"{self.NAME} {what}"))

    def _fd(self, what: str, value: Any) -> int:
        """A file descriptor: an int, or an object with fileno() (a `Vm`, a file)."""
        fileno = getattr(value, "fileno", None)
        return marshal.integer(fileno() if callable(fileno) else value, f"{self.NAME} {what}", 0, (1 << 31) - 1)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.NAME} ({self.NUMBER}) of {self._owner!r}>"


class Presence(Capability):
    """A capability whose KVM_CHECK_EXTENSION answer means present (True) or absent (False)."""

    __slots__ = ()

    def check(self) -> bool:
        return self.value() > 0


class Count(Capability):
    """A capability whose KVM_CHECK_EXTENSION answer is a count or a size (0: absent)."""

    __slots__ = ()

    def check(self) -> int:
        return self.value()


_C = TypeVar("_C", bound=Capability, covariant=True)  # VmCaps may narrow a SystemCaps attribute


class Bound(Generic[_C]):
    """A `Caps` attribute: reading it gives the capability class bound to the Caps' object."""

    def __init__(self, cls: type[_C]) -> None:
        self.cls = cls
        self.__doc__ = cls.__doc__

    @overload
    def __get__(self, caps: None, owner: type | None = None) -> Bound[_C]: ...

    @overload
    def __get__(self, caps: Caps, owner: type | None = None) -> _C: ...

    def __get__(self, caps: Caps | None, owner: type | None = None) -> Bound[_C] | _C:
        return self if caps is None else self.cls(caps.owner)


class Caps(BoundToFd):
    """Every capability of a binding, as attributes bound to one object (see the module docstring)."""

    __slots__ = ()

    def __iter__(self) -> Iterator[Capability]:
        """Each capability, in the order of their numbers."""
        bound: dict[str, Bound[Capability]] = {}
        for klass in reversed(type(self).__mro__):  # a subclass's attribute replaces its base's
            bound.update((name, attr) for name, attr in vars(klass).items() if isinstance(attr, Bound))
        return iter(sorted((b.cls(self._owner) for b in bound.values()), key=lambda c: c.NUMBER))

    def __repr__(self) -> str:
        return f"<{type(self).__name__} of {self._owner!r}>"


def format_value(value: bool | int | enum.IntFlag) -> str:
    """A check() answer for people: flag names joined by "|" (unnamed bits in hex), else the value."""
    if isinstance(value, enum.IntFlag):
        names = [member.name for member in type(value) if member.name and member & value == member]
        rest = int(value) & ~sum(int(member) for member in type(value))
        return "|".join(names + ([f"{rest:#x}"] if rest else []))
    return str(value)


def _answering_kind(owner: Any) -> str:
    """The fd kind whose KVM_CHECK_EXTENSION answers for `owner` (a VM's own fd, or /dev/kvm)."""
    vm = owner if owner.fd_kind == "vm" else getattr(owner, "vm", None)
    return str(vm.capability_fd().fd_kind if vm is not None else owner.fd_kind)


__all__ = ["Bound", "Capability", "Caps", "Count", "HasFileno", "Presence", "format_value"]
