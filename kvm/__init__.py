"""Python bindings to the Linux KVM API (/dev/kvm), generated from the kernel's own headers.

`kvm.generated` holds the machine-generated layer: every ioctl number, constant, struct layout (as a
cffi FFI) and enum of the KVM headers, for several kernel versions and arches. On top of it, this
package offers a small hand-written API that never hard-codes a number or a layout:

    import kvm

    with kvm.Kvm() as k, k.create_vm() as vm:
        mem = vm.add_memory(0x0, 0x10000)            # guest-physical 0..64 KiB, anonymous memory
        mem.write(0x1000, bytes([0xE6, 0x10, 0xF4]))  # out 0x10, al ; hlt
        vcpu = vm.create_vcpu(0)
        kvm.x86.setup_real_mode(vcpu, entry=0x1000)
        exit = vcpu.run()                             # a typed exit: kvm.IoExit(port=0x10, ...)

- `Kvm` (/dev/kvm) -> `Vm` -> `Vcpu`, `Device`, `GuestMemory`; every one a context manager, closing
  its children with it, refusing use after close (`ClosedError`) or from a forked child (`ForkedError`).
- `Vcpu.run()` releases the GIL and returns one `Exit` subclass per KVM_EXIT_* reason (`IoExit`,
  `MmioExit`, `HltExit`, ...; `UnknownExit` for anything else); `Vcpu.kick()` interrupts it from
  another thread.
- Failed ioctls raise `KvmError` (an OSError naming the ioctl and fd kind); an ioctl whose capability
  the host lacks raises `CapabilityError` without being issued.
- Objects get the methods of their binding's arch and no others (kvm/arches.py): x86 register sets,
  MSRs and CPUID only on x86 (`kvm.x86`, whose vCPUs also enter real, protected or long mode in one
  call), `init()` and registers by id on arm64 (`kvm.arm64`), registers by id on riscv64 (`kvm.riscv64`).
  An ioctl the binding says does not exist on its arch raises `UnavailableError` before it is issued.
- Every ioctl, from a generated wrapper (`vcpu.ioctls.get_regs()`) or from these classes (`vcpu.regs`),
  crosses the boundary through `kvm.marshal`, the one place arguments are checked.

Importing `kvm` (see bench/README.md for what it costs) loads everything a VM needs, so that the first VM
of a process waits for no import, cffi parsing or table building: the classes, the default binding
(`kvm.generated`: this host's arch at the newest bundled kernel) with its cffi FFI, the cffi types on the
way to the first exit (struct kvm_run, the register sets, the memory region) and the exit dispatch table.
The rest loads on first use: a binding's tables (record layouts `STRUCTS`, capabilities `CAPS`, the enums
and the ioctls it cannot issue, in its `tables_*` module), the other bundled bindings, `kvm.arm64`,
`kvm.riscv64` and `kvm.caps`.
"""

from __future__ import annotations

try:
    from . import generated  # type: ignore[attr-defined,unused-ignore]  # mypy on kvm/ alone: no generated
except ImportError as exc:  # kvm/ of a source tree (a checkout, an unpacked sdist) first on sys.path
    if "generated" not in str(exc):
        raise
    raise ImportError(f"{__path__[0]} is kvm's source, which holds no kvm.generated (installing maps generated/ "
                      "there): `pip install -e .` in the checkout, or run from another directory (`python -m "
                      "pytest` puts the current one first on sys.path; the `pytest` script does not)") from None
import importlib

from . import marshal, stats, x86
from .device import Device
from .errors import (CapabilityError, ClosedError, DeviceError, Error, ForkedError, GuestMemoryError, KvmError, ResourceError, StateError,
                     UnavailableError)
from .exits import (
    ApResetHoldExit,
    Arm64DebugExit,
    Arm64HypercallExit,
    DebugExit,
    DirtyRingFullExit,
    ExceptionExit,
    Exit,
    FailEntryExit,
    HltExit,
    HwUnknownExit,
    HypercallExit,
    HypervExit,
    InternalErrorExit,
    IntrExit,
    IoExit,
    IoapicEoiExit,
    IrqWindowOpenExit,
    MemoryFaultExit,
    MmioExit,
    NmiExit,
    NotifyExit,
    RdmsrExit,
    SetTprExit,
    ShutdownExit,
    SystemEventExit,
    TdxExit,
    TprAccessExit,
    UnknownExit,
    WrmsrExit,
    X86BusLockExit,
    X86DebugExit,
    X86HypercallExit,
    XenExit,
)
from .memory import GuestMemory
from .system import Kvm, preload
from .vcpu import CoalescedAccess, DirtyGfn, Vcpu, install_kick_handler
from .vm import EventFd, GuestMemfd, IrqchipRoute, MsiRoute, Vm
from .x86 import CpuidEntry, MsrFilterRange, Translation

TYPE_CHECKING = False
if TYPE_CHECKING:  # (at run time imported on first use: see __getattr__)
    from . import arm64, caps, riscv64

__version__ = "0.1.0"

_ON_FIRST_USE = ("arm64", "riscv64", "caps")  # modules no x86 VM needs to run: imported when named


def __getattr__(name: str) -> object:
    if name in _ON_FIRST_USE:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "ApResetHoldExit", "Arm64DebugExit", "Arm64HypercallExit", "CapabilityError", "ClosedError", "CoalescedAccess", "CpuidEntry", "DebugExit", "Device",
    "DeviceError", "Error",
    "DirtyGfn", "DirtyRingFullExit", "EventFd", "ExceptionExit", "Exit", "FailEntryExit", "ForkedError",
    "GuestMemfd", "GuestMemory", "GuestMemoryError", "HltExit", "HwUnknownExit", "HypercallExit", "HypervExit",
    "InternalErrorExit", "IntrExit", "IoExit", "IoapicEoiExit", "IrqWindowOpenExit", "IrqchipRoute", "Kvm",
    "KvmError", "MemoryFaultExit", "MmioExit", "MsiRoute", "MsrFilterRange", "NmiExit", "NotifyExit", "RdmsrExit", "ResourceError",
    "SetTprExit", "ShutdownExit", "StateError", "SystemEventExit", "TdxExit", "TprAccessExit", "Translation", "UnknownExit",
    "UnavailableError", "Vcpu", "Vm", "WrmsrExit", "X86BusLockExit", "X86DebugExit", "X86HypercallExit", "XenExit", "install_kick_handler", "preload",
    "arm64", "caps", "device", "errors", "exits", "generated", "marshal", "memory", "riscv64", "stats", "system", "vcpu",
    "vm", "x86",
]
