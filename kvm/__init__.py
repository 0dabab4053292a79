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
- `kvm.x86` puts a vCPU in real mode, flat protected mode or long mode in one call.

Importing `kvm` loads the layer and the host's default binding up front (about 25 ms, see bench/README.md),
so that the first VM of a process does not wait for imports.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> submodule that defines it (loaded on first attribute access)
_EXPORTS = {
    "Kvm": "system",
    "CpuidEntry": "system",
    "Vm": "vm",
    "EventFd": "vm",
    "GuestMemfd": "vm",
    "IrqchipRoute": "vm",
    "MsiRoute": "vm",
    "MsrFilterRange": "vm",
    "CoalescedAccess": "vm",
    "Vcpu": "vcpu",
    "Translation": "vcpu",
    "DirtyGfn": "vcpu",
    "install_kick_handler": "vcpu",
    "Device": "device",
    "GuestMemory": "memory",
    "KvmError": "errors",
    "CapabilityError": "errors",
    "ClosedError": "errors",
    "ForkedError": "errors",
    "GuestMemoryError": "errors",
    "Exit": "exits",
    "UnknownExit": "exits",
    "HwUnknownExit": "exits",
    "ExceptionExit": "exits",
    "IoExit": "exits",
    "HypercallExit": "exits",
    "DebugExit": "exits",
    "HltExit": "exits",
    "MmioExit": "exits",
    "IrqWindowOpenExit": "exits",
    "ShutdownExit": "exits",
    "FailEntryExit": "exits",
    "IntrExit": "exits",
    "SetTprExit": "exits",
    "TprAccessExit": "exits",
    "NmiExit": "exits",
    "InternalErrorExit": "exits",
    "SystemEventExit": "exits",
    "IoapicEoiExit": "exits",
    "RdmsrExit": "exits",
    "WrmsrExit": "exits",
    "DirtyRingFullExit": "exits",
    "ApResetHoldExit": "exits",
    "X86BusLockExit": "exits",
    "NotifyExit": "exits",
    "MemoryFaultExit": "exits",
    "HypervExit": "exits",
    "XenExit": "exits",
    "TdxExit": "exits",
}
_SUBMODULES = {"x86", "exits", "errors", "memory", "stats", "system", "vm", "vcpu", "device", "generated"}

__all__ = sorted(_EXPORTS) + sorted(_SUBMODULES)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is not None:
        value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


def _preload() -> None:
    """Load what a VM needs now rather than on its way to the first exit."""
    from . import exits, system, vcpu, vm, x86  # noqa: F401

    try:
        binding = system.default_binding()
    except LookupError:  # no bundled binding for this arch: kvm.generated.load() says why when asked
        return
    exits.dispatch_table(binding)


_preload()
