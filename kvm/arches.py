"""The classes the objects of a binding are made of: the arch's own methods, and no others.

`Kvm`, `Vm` and `Vcpu` hold what every arch shares. For a binding, `for_binding(Vcpu, binding)` makes
(once) the subclass its objects are instances of: the arch's mixin first (`kvm.x86.X86Vcpu`,
`kvm.arm64.Arm64Vcpu`, ...), then the shared class. Every method marked with `kvm._fd.needs(ioctl)`
whose ioctl the binding says does not exist (another arch's, or a newer kernel's) is replaced by an
attribute that raises AttributeError saying why: `hasattr(vcpu, "lapic")` is False on arm64.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from ._accel import VcpuBase
from ._fd import KvmFd, absent_reason

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, TypeVar

    _T = TypeVar("_T", bound=KvmFd)

# arch -> the module of its mixins (its MIXINS: fd kind -> the mixin of that arch's objects of that kind),
# imported when a binding of that arch is first used
MIXIN_MODULES: dict[str, str] = {"x86_64": "kvm.x86", "arm64": "kvm.arm64", "riscv64": "kvm.riscv64"}


def mixin(arch: str, fd_kind: str) -> type | None:
    """The mixin of `arch`'s objects of `fd_kind`, None when the arch has none."""
    module = MIXIN_MODULES.get(arch)
    if module is None:
        return None
    mixins: dict[str, type] = importlib.import_module(module).MIXINS
    return mixins.get(fd_kind)

_CLASSES: dict[tuple[type, str], type] = {}


class Absent:
    """In place of a method the binding does not have: reading it raises AttributeError saying why."""

    def __init__(self, name: str, reason: str) -> None:
        self.name = name
        self.reason = reason

    def __get__(self, obj: Any, cls: Any = None) -> Any:
        owner = cls.__name__ if cls is not None else type(obj).__name__
        raise AttributeError(f"{owner}.{self.name} is not available: {self.reason}")

    def __set__(self, obj: Any, value: Any) -> None:
        self.__get__(obj)


def _ioctls_of(value: Any) -> tuple[str, ...]:
    function = value.fget if isinstance(value, property) else value
    return getattr(function, "__kvm_ioctls__", ())


def for_binding(cls: type[_T], binding: ModuleType) -> type[_T]:
    """The subclass of `cls` whose instances are `binding`'s objects (see the module docstring)."""
    key = (cls, binding.__name__)
    made = _CLASSES.get(key)
    if made is None:
        arch_mixin = mixin(binding.ARCH, cls.fd_kind)
        bases = (arch_mixin, cls) if arch_mixin is not None else (cls,)
        made = type(cls.__name__, bases, {"__module__": cls.__module__, "__qualname__": cls.__qualname__,
                                          "__doc__": cls.__doc__})
        seen: set[str] = set()
        absent: list[Absent] = []
        for klass in made.__mro__:  # (each name's value as the class sees it: the first in the MRO)
            for name, value in vars(klass).items():
                if name in seen:
                    continue
                seen.add(name)
                reasons = (absent_reason(binding, ioctl, cls.fd_kind) for ioctl in _ioctls_of(value))
                reason = next((r for r in reasons if r is not None), None)
                if reason is not None:
                    absent.append(Absent(name, reason))
        for attribute in absent:
            setattr(made, attribute.name, attribute)
        if issubclass(made, VcpuBase):
            VcpuBase.bind_run(made)  # `run` as a method of exactly this class (see kvm/_speedups.c)
        _CLASSES[key] = made
    return made


__all__ = ["MIXIN_MODULES", "Absent", "for_binding", "mixin"]
