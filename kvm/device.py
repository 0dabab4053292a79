"""`Device`: an in-kernel device (KVM_CREATE_DEVICE), and the attribute ioctls (KVM_{HAS,GET,SET}_DEVICE_ATTR)
it shares with VM and vCPU fds and, reading only, with /dev/kvm."""

from __future__ import annotations

import sys
from typing import Any

from ._fd import KvmFd
from .errors import KvmError


def _attr(obj: Any, group: int, attr: int, buffer: Any = None) -> Any:
    ffi = obj._binding.ffi
    request = ffi.new("struct kvm_device_attr *")
    request.group = group
    request.attr = attr
    if buffer is not None:
        request.addr = int(ffi.cast("uintptr_t", buffer))
    return request


def _has_attr(obj: Any, group: int, attr: int) -> bool:
    """KVM_HAS_DEVICE_ATTR: True when supported, False on ENXIO."""
    try:
        obj._ioctl("KVM_HAS_DEVICE_ATTR", _attr(obj, group, attr))
    except KvmError as exc:
        if exc.errno == 6:  # ENXIO: attribute not supported
            return False
        raise
    return True


def _get_attr(obj: Any, group: int, attr: int, size: int = 8) -> Any:
    """KVM_GET_DEVICE_ATTR into a `size`-byte buffer: an int for sizes 1/2/4/8, else bytes."""
    ffi = obj._binding.ffi
    buffer = ffi.new("unsigned char[]", size)
    obj._ioctl("KVM_GET_DEVICE_ATTR", _attr(obj, group, attr, buffer))
    data = bytes(ffi.buffer(buffer))
    return int.from_bytes(data, sys.byteorder) if size in (1, 2, 4, 8) else data


def _set_attr(obj: Any, group: int, attr: int, value: int | bytes | None, size: int = 8) -> None:
    """KVM_SET_DEVICE_ATTR: `value` int (stored in `size` bytes), bytes, or None (addr 0)."""
    ffi = obj._binding.ffi
    buffer = None
    if isinstance(value, int):
        buffer = ffi.new("unsigned char[]", value.to_bytes(size, sys.byteorder))
    elif value is not None:
        buffer = ffi.new("unsigned char[]", bytes(value))
    obj._ioctl("KVM_SET_DEVICE_ATTR", _attr(obj, group, attr, buffer))


class ReadableAttributes:
    """`has_attr` and `get_attr`: KVM_HAS_DEVICE_ATTR and KVM_GET_DEVICE_ATTR on this fd (each gated by
    the capability api.rst gives for the fd kind: KVM_CAP_DEVICE_CTRL, _VM_, _VCPU_ or _SYS_ATTRIBUTES)."""

    def has_attr(self, group: int, attr: int) -> bool:
        """Whether attribute `attr` of `group` is supported here (False on ENXIO)."""
        return _has_attr(self, group, attr)

    def get_attr(self, group: int, attr: int, size: int = 8) -> Any:
        """The attribute's value: an int for sizes 1, 2, 4 and 8, else `size` bytes."""
        return _get_attr(self, group, attr, size)


class Attributes(ReadableAttributes):
    """ReadableAttributes plus `set_attr` (KVM_SET_DEVICE_ATTR)."""

    def set_attr(self, group: int, attr: int, value: int | bytes | None = None, size: int = 8) -> None:
        """Set the attribute: `value` an int (stored in `size` bytes), bytes, or None (addr 0)."""
        _set_attr(self, group, attr, value, size)


class Device(KvmFd, Attributes):
    """A device fd from `Vm.create_device(type)`; `type` is a `DeviceType` number."""

    fd_kind = "device"

    def __init__(self, vm: Any, fd: int, type: int) -> None:
        super().__init__(fd, vm._binding, vm)
        self.vm = vm
        self.type = type

    def _cap_owner(self) -> KvmFd:
        return self.vm._cap_owner()  # type: ignore[no-any-return]

    def __repr__(self) -> str:
        return f"<Device type={self.type} {'closed' if self.closed else f'fd={self._fd}'}>"
