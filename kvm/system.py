"""`Kvm`: the /dev/kvm system fd."""

from __future__ import annotations

import errno
import functools
import grp
import os
import stat
import weakref
from types import ModuleType

from . import generated  # type: ignore[attr-defined,unused-ignore]  # mypy on kvm/ alone does not see it
from . import marshal
from ._accel import ValueIoctl, ioctl
from ._fd import KvmFd, adopt_fd, note_record_pointer, prepass
from .arches import for_binding
from .device import ReadableAttributes
from .errors import ClosedError, DeviceError
from .exits import dispatch_table
from .vcpu import Vcpu
from .vm import Vm

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

# The binding `Kvm()` uses unless given another: the host arch at the newest bundled kernel.
DEFAULT_BINDING: ModuleType = generated.load()

# The records and the ioctls (by fd kind) the path to a VM's first exit goes through (vm.py, vcpu.py, x86.py).
_FIRST_EXIT_RECORDS = ("struct kvm_userspace_memory_region", "struct kvm_run", "struct kvm_regs", "struct kvm_sregs")
_FIRST_EXIT_IOCTLS = {"system": ("KVM_CREATE_VM", "KVM_GET_VCPU_MMAP_SIZE"),
                      "vm": ("KVM_SET_USER_MEMORY_REGION", "KVM_CREATE_VCPU"),
                      "vcpu": ("KVM_GET_SREGS", "KVM_SET_SREGS", "KVM_GET_REGS", "KVM_SET_REGS")}


def _prepare(binding: ModuleType) -> None:
    """Do now what the first VM would otherwise do on its way to its first exit: load the binding's FFI,
    have cffi parse and lay out the records of that path (0.3 ms, most of it struct kvm_run), build the
    exit dispatch table, compose the binding's Kvm, Vm and Vcpu classes (kvm/arches.py), and pass the gates
    of the path's ioctls that no capability gates (KVM_SET_USER_MEMORY_REGION's is the host's to answer)."""
    ffi = binding.ffi
    for record in _FIRST_EXIT_RECORDS:
        try:
            ffi.sizeof(record)  # lays out the record and the records it holds
        except ffi.error:
            continue  # not a record of this arch
        note_record_pointer(ffi, record)  # (parses the type string the code asks for)
    dispatch_table(binding)
    for cls in (Kvm, Vm, Vcpu):
        for_binding(cls, binding)
        prepass(binding, cls.fd_kind, _FIRST_EXIT_IOCTLS[cls.fd_kind])


def _weak_method(obj: Any, function: Any) -> Any:
    """`function` bound to `obj` without keeping `obj` alive (a dead `obj` raises ClosedError)."""
    ref = weakref.ref(obj)
    name = type(obj).__name__

    def call(*args: Any) -> Any:
        target = ref()
        if target is None:
            raise ClosedError(f"{name} is closed")
        return function(target, *args)

    return call


_BINDING_NAMES = ("ARCH", "KERNEL", "IOCTLS", "CONSTANTS", "ffi", "preload")  # what a generated binding module has


def _checked_binding(binding: Any) -> ModuleType:
    """`binding`, or DEFAULT_BINDING for None; TypeError for anything but a generated binding module."""
    if binding is None:
        return DEFAULT_BINDING
    if binding is not DEFAULT_BINDING and (not isinstance(binding, ModuleType)
                                           or not all(hasattr(binding, n) for n in _BINDING_NAMES)):
        raise TypeError(f"binding must be a generated binding module (kvm.generated.load(...)), not {binding!r}")
    return binding


def preload(binding: ModuleType | None = None) -> None:
    """Import now everything kvm would import on first use for `binding` (default: this host's, the one
    `Kvm()` uses): its tables and enums, its generated wrappers (`obj.ioctls`) and typed capabilities
    (`obj.caps`), and its arch's classes. A process that is about to chroot, or to drop the privileges
    that let it read its Python files, calls it first: afterwards, nothing kvm does needs a file."""
    binding = _checked_binding(binding)
    binding.preload()
    for cls in (Kvm, Vm, Vcpu):
        for_binding(cls, binding)


def open_device(path: Any, binding: ModuleType) -> int:
    """Open the KVM device at `path` (close-on-exec) and check it is one: an fd answering
    KVM_GET_API_VERSION with the binding's KVM_API_VERSION. Anything else raises DeviceError saying what
    is wrong and how to fix it."""
    if not isinstance(path, (str, bytes, os.PathLike)):
        raise TypeError(f"path must be a path, not {type(path).__name__}")
    name = path if path.__class__ is str else os.fsdecode(path)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError as exc:
        if os.path.abspath(name) != "/dev/kvm":
            raise DeviceError(exc.errno, f"{name} does not exist (KVM's device is normally /dev/kvm)") from None
        raise DeviceError(exc.errno, f"{name} does not exist: the kvm module is not loaded (`modprobe kvm_intel` "
                          "or `modprobe kvm_amd`), the CPU's virtualization extensions are off in the firmware, "
                          "or this is a virtual machine without nested virtualization") from None
    except PermissionError as exc:
        raise DeviceError(exc.errno, f"{name}: permission denied: {_access_hint(name)}") from None
    except OSError as exc:
        raise DeviceError(exc.errno, f"{name}: cannot open it: {exc.strerror}") from None
    version: int | None = ioctl(fd, binding.IOCTLS["KVM_GET_API_VERSION"].number, 0)
    if version is not None and version < 0:  # (-errno)
        version = None
    expected = binding.CONSTANTS["KVM_API_VERSION"]
    if version != expected:
        os.close(fd)
        what = "does not answer KVM_GET_API_VERSION" if version is None else f"answers API version {version}"
        raise DeviceError(errno.ENODEV, f"{name} is not a KVM device: it {what} (KVM's is {expected})")
    return fd


def _access_hint(path: str) -> str:
    """How a user who may not open the device gets access to it."""
    try:
        info = os.stat(path)
    except OSError:
        return "run as root, or ask for access to it"
    try:
        group = grp.getgrgid(info.st_gid).gr_name
    except KeyError:
        group = str(info.st_gid)
    mode = stat.filemode(info.st_mode)
    if info.st_mode & 0o060 != 0o060:
        return (f"it is {mode}, readable and writable by its owner only: give it a group, e.g. a udev rule "
                f'KERNEL=="kvm", GROUP="kvm", MODE="0660", add your user to that group, or run as root')
    return (f"it is {mode}, group {group}: add your user to that group (`sudo usermod -aG {group} $USER`, "
            "then log in again) or run as root")


class Kvm(ReadableAttributes):
    """The KVM subsystem: `Kvm()` opens /dev/kvm (close-on-exec).

    `binding` picks another bundled binding (`kvm.generated.load("6.12")`); the default is the host
    arch at the newest bundled kernel.
    """

    fd_kind = "system"

    def __new__(cls, path: str = "/dev/kvm", *, binding: ModuleType | None = None) -> Kvm:
        # an instance of the class made for the binding's arch (see kvm/arches.py); nothing is opened yet
        binding = _checked_binding(binding)
        if binding.ARCH != DEFAULT_BINDING.ARCH:
            raise ValueError(f"binding is for {binding.ARCH}; this host's KVM is {DEFAULT_BINDING.ARCH}'s "
                             f"(kvm.generated.load(version) picks this arch's)")
        return object.__new__(for_binding(cls, binding))

    def __init__(self, path: str = "/dev/kvm", *, binding: ModuleType | None = None) -> None:
        binding = DEFAULT_BINDING if binding is None else binding
        fd = open_device(path, binding)
        name = path if path.__class__ is str else os.fsdecode(path)
        super().__init__(fd, binding, None, ("system", binding.__name__, name))
        self.path: str = name
        self._mmap_size: int | None = None

    def _release(self) -> None:
        for name in ("check_extension", "_get_api_version"):
            fast = self.__dict__.pop(name, None)
            if fast is not None:
                fast.close()

    @property
    def api_version(self) -> int:
        """KVM_GET_API_VERSION: 12 on every kernel since 2.6.22 (asked every time, in one compiled call)."""
        return self._get_api_version(0)

    @functools.cached_property
    def _get_api_version(self) -> Callable[[int], int]:
        # (as check_extension: a ValueIoctl bound to the fd; a closed or forked fd goes to _ioctl, which says so)
        return ValueIoctl(self._fd, self._ioctls["KVM_GET_API_VERSION"].number,
                          _weak_method(self, Kvm._api_version_slow))

    def _api_version_slow(self, _unused: int) -> int:
        return self._ioctl("KVM_GET_API_VERSION")

    @functools.cached_property
    def check_extension(self) -> Callable[[Any], int]:  # type: ignore[override,unused-ignore]
        """KVM_CHECK_EXTENSION on /dev/kvm: `k.check_extension(cap)` is 0 when the capability is absent,
        else a positive (often meaningful) value. `cap`: a `Cap` member, a number, or a name
        ("KVM_CAP_IRQCHIP" or "IRQCHIP"). Asks the kernel on every call.

        Made on first use (not in __init__, which is on the way to every VM's first exit): called with a
        number it is one compiled call (kvm/_speedups.c); names, a closed or forked fd and failures go to
        `_check_extension`, which reports them and is held weakly, so that dropping the last reference to
        the Kvm still closes the fd.
        """
        return ValueIoctl(self._fd, self._ioctls["KVM_CHECK_EXTENSION"].number,
                          _weak_method(self, Kvm._check_extension))

    def vm_fds_answer_caps(self) -> bool:
        """Whether VM fds answer KVM_CHECK_EXTENSION (KVM_CAP_CHECK_EXTENSION_VM): a property of the running
        kernel, so asked once per process and device path rather than once per Kvm."""
        return self._query_cap(self._binding.CONSTANTS["KVM_CAP_CHECK_EXTENSION_VM"]) > 0

    def _check_extension(self, cap: Any) -> int:
        return KvmFd.check_extension(self, cap)

    @property
    def vcpu_mmap_size(self) -> int:
        """KVM_GET_VCPU_MMAP_SIZE: the bytes of a vCPU's mapping (kvm_run and the rings after it)."""
        if self._mmap_size is None:
            self._mmap_size = self._ioctl("KVM_GET_VCPU_MMAP_SIZE")
        return self._mmap_size

    def create_vm(self, type: int = 0) -> Vm:
        """KVM_CREATE_VM: a new `Vm` (type 0 is the default VM type)."""
        fd = marshal.by_value(self._ioctl, "KVM_CREATE_VM", type, "type")
        return adopt_fd(fd, lambda: for_binding(Vm, self._binding)(self, fd, type))


_prepare(DEFAULT_BINDING)
