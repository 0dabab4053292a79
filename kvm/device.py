"""`Device`: an in-kernel device (KVM_CREATE_DEVICE), and the attribute ioctls (KVM_{HAS,GET,SET}_DEVICE_ATTR)
it shares with VM and vCPU fds and, reading only, with /dev/kvm."""

from __future__ import annotations

import sys

from . import marshal
from ._fd import KvmFd, needs

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


class ReadableAttributes(KvmFd):
    """`has_attr`, `get_attr` and `read_attr`: KVM_HAS_DEVICE_ATTR and KVM_GET_DEVICE_ATTR on this fd (each
    gated by the capability api.rst gives for the fd kind: KVM_CAP_DEVICE_CTRL, _VM_, _VCPU_ or
    _SYS_ATTRIBUTES). They are the generated `has_device_attr` and `get_device_attr`, with the value as an int."""

    @needs("KVM_HAS_DEVICE_ATTR")
    def has_attr(self, group: int, attr: int) -> bool:
        """Whether attribute `attr` of `group` exists here (False when the kernel answers ENXIO)."""
        return marshal.attr_has(self._ioctl, self._binding.ffi, "KVM_HAS_DEVICE_ATTR", group, attr)

    @needs("KVM_GET_DEVICE_ATTR")
    def get_attr(self, group: int, attr: int, size: int = marshal.ATTR_BYTES) -> int:
        """The attribute's value, an unsigned integer of `size` bytes (1, 2, 4 or 8, as it is declared)."""
        if size not in (1, 2, 4, 8):
            raise ValueError(f"size must be 1, 2, 4 or 8, not {size!r} (read_attr reads records)")
        return int.from_bytes(self.read_attr(group, attr, size), sys.byteorder)

    @needs("KVM_GET_DEVICE_ATTR")
    def read_attr(self, group: int, attr: int, size: int) -> bytes:
        """The attribute's first `size` bytes (for attributes that are records)."""
        return marshal.attr_get(self._ioctl, self._binding.ffi, "KVM_GET_DEVICE_ATTR", group, attr, size)


class Attributes(ReadableAttributes):
    """ReadableAttributes plus `set_attr` (KVM_SET_DEVICE_ATTR, the generated `set_device_attr`)."""

    @needs("KVM_SET_DEVICE_ATTR")
    def set_attr(self, group: int, attr: int, value: int | bytes | None = None, size: int = marshal.ATTR_BYTES) -> None:
        """Set the attribute: `value` an int (an unsigned integer of `size` bytes), bytes, or None (address 0)."""
        marshal.attr_set(self._ioctl, self._binding.ffi, "KVM_SET_DEVICE_ATTR", group, attr, value, 0, size)


class Device(Attributes):
    """A device fd from `Vm.create_device(type)`; `type` is a `DeviceType` number."""

    fd_kind = "device"

    def __init__(self, vm: Any, fd: int, type: int) -> None:
        self.vm = vm
        self.type = type
        super().__init__(fd, vm.binding, vm)  # (last: from here on a close() of the VM may close it)

    def _cap_owner(self) -> KvmFd:
        return self.vm.capability_fd()  # type: ignore[no-any-return]

    def __repr__(self) -> str:
        return f"<Device type={self.type} {'closed' if self.closed else f'fd={self._fd}'}>"
