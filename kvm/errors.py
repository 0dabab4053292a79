"""Exceptions of the KVM layer."""

from __future__ import annotations

import errno as _errno
import os


class Error(Exception):
    """The base of every exception kvm raises itself: `except kvm.Error` catches them all. Each also
    derives from the builtin exception that fits it (OSError, ValueError, RuntimeError, IndexError)."""


class KvmError(Error, OSError):
    """An ioctl failed: carries the ioctl's name, the kind of fd it was issued on, and errno.

    str(): ``KVM_CREATE_VCPU on vm fd: EINVAL (Invalid argument)``.
    """

    def __init__(self, ioctl: str, fd_kind: str, err: int | None, detail: str | None = None) -> None:
        strerror = os.strerror(err) if err is not None else None
        super().__init__(err, strerror)
        self.ioctl = ioctl
        self.fd_kind = fd_kind
        self.detail = detail

    @property
    def errno_name(self) -> str:
        """The errno's symbolic name ("EINVAL")."""
        return _errno.errorcode.get(self.errno, str(self.errno)) if self.errno is not None else "?"

    def __str__(self) -> str:
        text = f"{self.ioctl} on {self.fd_kind} fd: {self.errno_name} ({self.strerror})"
        return f"{text}: {self.detail}" if self.detail else text

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (type(self), (self.ioctl, self.fd_kind, self.errno, self.detail))


class CapabilityError(KvmError):
    """An ioctl was not issued because the capability that gates it is absent on this host."""

    def __init__(self, ioctl: str, fd_kind: str, capability: str, checked_on: str = "system") -> None:
        super().__init__(ioctl, fd_kind, None)
        self.capability = capability
        self.checked_on = checked_on

    def __str__(self) -> str:
        return (
            f"{self.ioctl} needs {self.capability}, which KVM_CHECK_EXTENSION on the {self.checked_on} fd "
            "reports absent on this host (the ioctl was not issued)"
        )

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (type(self), (self.ioctl, self.fd_kind, self.capability, self.checked_on))


class UnavailableError(KvmError):
    """An ioctl was not issued because it does not exist for the binding's arch or kernel version (the binding's
    api.rst data says which arches have it)."""

    def __init__(self, ioctl: str, fd_kind: str, reason: str) -> None:
        super().__init__(ioctl, fd_kind, None)
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.reason} (the ioctl was not issued)"

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (type(self), (self.ioctl, self.fd_kind, self.reason))


class DeviceError(Error, OSError):
    """/dev/kvm (or the path given) cannot be used: the message says why and how to fix it."""


class StateError(Error, RuntimeError):
    """The object is not set up for this call yet (e.g. the dirty ring was not enabled, the VM has no vCPU)."""


class ClosedError(Error, ValueError):
    """An object (or the VM it belongs to) was used after close()."""


class ForkedError(Error, RuntimeError):
    """A KVM object was used from a forked child: KVM fds inherited through fork() are not usable there."""


class ResourceError(Error, OSError):
    """The host refused what a call needed (memory to map, a file descriptor): `errno` says what
    (ENOMEM, EMFILE, ...), the message names the call and the size asked for."""


class GuestMemoryError(Error, IndexError):
    """A guest-physical access falls outside the guest memory it was made on."""


__all__ = ["Error", "KvmError", "StateError", "DeviceError", "UnavailableError", "CapabilityError", "ClosedError", "ForkedError", "GuestMemoryError", "ResourceError"]
