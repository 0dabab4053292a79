"""Typed exits: what `Vcpu.run()` returns, one class per KVM_EXIT_* reason.

An exit object reads its payload lazily from the vCPU's shared `struct kvm_run`, so building one costs
almost nothing; read (or `snapshot()`) what you need before the next `run()` of the same vCPU, which
overwrites that page. Replies (I/O in data, MMIO read data, RDMSR value, hypercall return) are written
straight into `kvm_run` and reach the guest on the next `run()`.

A reason this module has no class for becomes `UnknownExit`, never an error.
"""

from __future__ import annotations

import sys
from typing import Any

_BYTEORDER = sys.byteorder


class Exit:
    """Base of every exit. `reason` is the KVM_EXIT_* number, `name` its name without the prefix."""

    __slots__ = ("_run", "vcpu")
    reason: int = -1
    name: str = "?"
    _fields: tuple[str, ...] = ()

    def __init__(self, run: Any, vcpu: Any) -> None:
        self._run = run
        self.vcpu = vcpu

    def snapshot(self) -> dict[str, Any]:
        """The decoded payload as a plain dict (safe to keep after the next run())."""
        out: dict[str, Any] = {"reason": self.reason, "name": self.name}
        for field in self._fields:
            value = getattr(self, field)
            out[field] = bytes(value) if isinstance(value, memoryview) else value
        return out

    def __repr__(self) -> str:
        try:
            parts = []
            for field in self._fields:
                value = getattr(self, field)
                if isinstance(value, memoryview):
                    value = bytes(value)
                parts.append(f"{field}={value:#x}" if isinstance(value, int) and not isinstance(value, bool) else f"{field}={value!r}")
            return f"<{type(self).__name__} {' '.join(parts)}>" if parts else f"<{type(self).__name__}>"
        except Exception:
            return f"<{type(self).__name__}>"


class UnknownExit(Exit):
    """An exit reason this layer does not decode; `reason` is the raw number, `payload` the raw union."""

    __slots__ = ("reason", "name")
    _fields = ("reason",)

    def __init__(self, run: Any, vcpu: Any, reason: int | None = None, name: str = "?") -> None:
        self._run = run
        self.vcpu = vcpu
        self.reason = int(run.exit_reason) if reason is None else reason
        self.name = name

    @property
    def payload(self) -> bytes:
        """The 256 bytes of kvm_run's exit union, raw."""
        ffi = self.vcpu._ffi
        offset = ffi.offsetof("struct kvm_run", "hw")
        return bytes(self.vcpu._run_view[offset : offset + 256])


def _int_bytes(value: int | bytes, length: int) -> bytes:
    if isinstance(value, int):
        return (value & ((1 << (8 * length)) - 1)).to_bytes(length, _BYTEORDER)
    data = bytes(value)
    if len(data) != length:
        raise ValueError(f"reply of {len(data)} bytes for an access of {length}")
    return data


class HwUnknownExit(Exit):
    """KVM_EXIT_UNKNOWN: the hardware exited for a reason KVM does not handle."""

    __slots__ = ()
    _fields = ("hardware_exit_reason",)

    @property
    def hardware_exit_reason(self) -> int:
        return int(self._run.hw.hardware_exit_reason)


class ExceptionExit(Exit):
    __slots__ = ()
    _fields = ("exception", "error_code")

    @property
    def exception(self) -> int:
        return int(self._run.ex.exception)

    @property
    def error_code(self) -> int:
        return int(self._run.ex.error_code)


class IoExit(Exit):
    """KVM_EXIT_IO: port I/O. For `in`, write the reply into `data` (or call `reply`) before the next run()."""

    __slots__ = ()
    _fields = ("port", "size", "direction", "count", "data")
    IN = 0
    OUT = 1

    @property
    def port(self) -> int:
        return int(self._run.io.port)

    @property
    def size(self) -> int:
        return int(self._run.io.size)

    @property
    def count(self) -> int:
        return int(self._run.io.count)

    @property
    def direction(self) -> int:
        """0 (IN, the guest reads) or 1 (OUT, the guest writes)."""
        return int(self._run.io.direction)

    @property
    def is_in(self) -> bool:
        return self._run.io.direction == 0

    @property
    def is_out(self) -> bool:
        return self._run.io.direction == 1

    @property
    def data(self) -> memoryview:
        """A writable view of the size*count bytes in kvm_run (out: the guest's data; in: the reply)."""
        io = self._run.io
        offset = int(io.data_offset)
        length = int(io.size) * int(io.count)
        return self.vcpu._run_view[offset : offset + length]

    @property
    def value(self) -> int:
        """The first element as an unsigned little-endian integer."""
        io = self._run.io
        offset = int(io.data_offset)
        return int.from_bytes(self.vcpu._run_view[offset : offset + int(io.size)], _BYTEORDER)

    def reply(self, value: int | bytes) -> None:
        """For `in`: the value(s) the guest reads (an int fills one element; bytes fill size*count)."""
        io = self._run.io
        offset = int(io.data_offset)
        size = int(io.size)
        if isinstance(value, int):
            data = _int_bytes(value, size)
        else:
            data = _int_bytes(value, size * int(io.count))
        self.vcpu._run_view[offset : offset + len(data)] = data


class MmioExit(Exit):
    """KVM_EXIT_MMIO: an access KVM could not complete. For a read, `reply()` before the next run()."""

    __slots__ = ()
    _fields = ("phys_addr", "len", "is_write", "data")

    @property
    def phys_addr(self) -> int:
        return int(self._run.mmio.phys_addr)

    address = phys_addr

    @property
    def len(self) -> int:
        return int(self._run.mmio.len)

    @property
    def is_write(self) -> bool:
        return bool(self._run.mmio.is_write)

    @property
    def data(self) -> bytes:
        mmio = self._run.mmio
        return bytes(mmio.data)[: int(mmio.len)]

    @property
    def value(self) -> int:
        return int.from_bytes(self.data, _BYTEORDER)

    def reply(self, value: int | bytes) -> None:
        mmio = self._run.mmio
        data = _int_bytes(value, int(mmio.len))
        for i, b in enumerate(data):
            mmio.data[i] = b


class HypercallExit(Exit):
    __slots__ = ()
    _fields = ("nr", "args", "ret", "flags")

    @property
    def nr(self) -> int:
        return int(self._run.hypercall.nr)

    @property
    def args(self) -> tuple[int, ...]:
        return tuple(int(a) for a in self._run.hypercall.args)

    @property
    def ret(self) -> int:
        return int(self._run.hypercall.ret)

    @property
    def flags(self) -> int:
        return int(self._run.hypercall.flags)

    @property
    def long_mode(self) -> bool:
        return bool(self.flags & 1)

    def reply(self, ret: int) -> None:
        self._run.hypercall.ret = ret & 0xFFFFFFFFFFFFFFFF


class DebugExit(Exit):
    """KVM_EXIT_DEBUG: single step or breakpoint. x86: `exception` (1 #DB, 3 #BP), `pc`, `dr6`, `dr7`."""

    __slots__ = ()
    _fields = ("exception", "pc", "dr6", "dr7")

    @property
    def arch(self) -> Any:
        return self._run.debug.arch

    @property
    def exception(self) -> int:
        return int(self._run.debug.arch.exception)

    @property
    def pc(self) -> int:
        return int(self._run.debug.arch.pc)

    @property
    def dr6(self) -> int:
        return int(self._run.debug.arch.dr6)

    @property
    def dr7(self) -> int:
        return int(self._run.debug.arch.dr7)


class HltExit(Exit):
    __slots__ = ()


class IrqWindowOpenExit(Exit):
    __slots__ = ()


class ShutdownExit(Exit):
    """KVM_EXIT_SHUTDOWN: on x86, a triple fault."""

    __slots__ = ()


class FailEntryExit(Exit):
    __slots__ = ()
    _fields = ("hardware_entry_failure_reason", "cpu")

    @property
    def hardware_entry_failure_reason(self) -> int:
        return int(self._run.fail_entry.hardware_entry_failure_reason)

    @property
    def cpu(self) -> int:
        return int(self._run.fail_entry.cpu)


class IntrExit(Exit):
    """KVM_RUN returned EINTR: a signal, `immediate_exit`, or `Vcpu.kick()` interrupted it."""

    __slots__ = ()


class SetTprExit(Exit):
    __slots__ = ()


class TprAccessExit(Exit):
    __slots__ = ()
    _fields = ("rip", "is_write")

    @property
    def rip(self) -> int:
        return int(self._run.tpr_access.rip)

    @property
    def is_write(self) -> bool:
        return bool(self._run.tpr_access.is_write)


class NmiExit(Exit):
    __slots__ = ()


class InternalErrorExit(Exit):
    """KVM_EXIT_INTERNAL_ERROR: `suberror` (1 = emulation failure), `data` (ndata u64 words).

    For emulation failures reported with instruction bytes, `insn_bytes` holds the instruction KVM could
    not emulate.
    """

    __slots__ = ()
    _fields = ("suberror", "data", "insn_bytes")

    @property
    def suberror(self) -> int:
        value = int(self._run.internal.suberror)
        try:
            return self.vcpu._binding.InternalErrorSuberror(value)  # type: ignore[no-any-return]
        except Exception:
            return value

    @property
    def suberror_name(self) -> str:
        return {1: "EMULATION", 2: "SIMUL_EX", 3: "DELIVERY_EV", 4: "UNEXPECTED_EXIT_REASON"}.get(
            int(self._run.internal.suberror), str(int(self._run.internal.suberror))
        )

    @property
    def ndata(self) -> int:
        return int(self._run.internal.ndata)

    @property
    def data(self) -> tuple[int, ...]:
        internal = self._run.internal
        n = min(int(internal.ndata), len(internal.data))
        return tuple(int(internal.data[i]) for i in range(n))

    @property
    def insn_bytes(self) -> bytes | None:
        failure = self._run.emulation_failure
        if int(failure.suberror) != 1 or int(failure.ndata) < 3 or not (int(failure.flags) & 1):
            return None
        size = min(int(failure.insn_size), 15)
        return bytes(self.vcpu._ffi.buffer(failure.insn_bytes))[:size]

    def describe(self) -> str:
        text = f"internal error {self.suberror_name}"
        insn = self.insn_bytes
        if insn is not None:
            text += f": could not emulate instruction bytes {insn.hex(' ')}"
        elif self.data:
            text += ": data " + " ".join(f"{d:#x}" for d in self.data)
        return text


class SystemEventExit(Exit):
    __slots__ = ()
    _fields = ("type", "data")

    @property
    def type(self) -> int:
        value = int(self._run.system_event.type)
        try:
            return self.vcpu._binding.SystemEvent(value)  # type: ignore[no-any-return]
        except Exception:
            return value

    @property
    def data(self) -> tuple[int, ...]:
        event = self._run.system_event
        n = min(int(event.ndata), 16)
        return tuple(int(event.data[i]) for i in range(n))


class IoapicEoiExit(Exit):
    __slots__ = ()
    _fields = ("vector",)

    @property
    def vector(self) -> int:
        return int(self._run.eoi.vector)


class _MsrExit(Exit):
    __slots__ = ()
    _fields = ("index", "reason_flags", "data")

    @property
    def index(self) -> int:
        return int(self._run.msr.index)

    @property
    def reason_flags(self) -> int:
        """Why the access exits to user space: KVM_MSR_EXIT_REASON_* (INVAL, UNKNOWN, FILTER)."""
        return int(self._run.msr.reason)

    @property
    def data(self) -> int:
        return int(self._run.msr.data)

    def fail(self) -> None:
        """Make the guest's access fail (#GP) when it resumes."""
        self._run.msr.error = 1


class RdmsrExit(_MsrExit):
    """KVM_EXIT_X86_RDMSR: `reply(value)` gives the guest its value; `fail()` injects #GP."""

    __slots__ = ()

    def reply(self, value: int) -> None:
        msr = self._run.msr
        msr.data = value & 0xFFFFFFFFFFFFFFFF
        msr.error = 0


class WrmsrExit(_MsrExit):
    """KVM_EXIT_X86_WRMSR: `data` is what the guest wrote; `fail()` injects #GP."""

    __slots__ = ()

    def reply(self) -> None:
        self._run.msr.error = 0


class DirtyRingFullExit(Exit):
    """KVM_EXIT_DIRTY_RING_FULL: harvest the vCPU's dirty ring and reset the rings, then run again."""

    __slots__ = ()


class ApResetHoldExit(Exit):
    __slots__ = ()


class X86BusLockExit(Exit):
    __slots__ = ()


class NotifyExit(Exit):
    __slots__ = ()
    _fields = ("flags",)

    @property
    def flags(self) -> int:
        return int(self._run.notify.flags)


class MemoryFaultExit(Exit):
    """KVM_EXIT_MEMORY_FAULT: an access to `gpa` (`size` bytes) that KVM could not resolve."""

    __slots__ = ()
    _fields = ("flags", "gpa", "size")

    @property
    def flags(self) -> int:
        return int(self._run.memory_fault.flags)

    @property
    def gpa(self) -> int:
        return int(self._run.memory_fault.gpa)

    @property
    def size(self) -> int:
        return int(self._run.memory_fault.size)

    @property
    def private(self) -> bool:
        return bool(self.flags & (1 << 3))


class _PayloadExit(Exit):
    """An exit whose payload is exposed raw as the cffi view of its kvm_run union member."""

    __slots__ = ()
    _member = ""

    @property
    def payload(self) -> Any:
        return getattr(self._run, self._member)


class HypervExit(_PayloadExit):
    __slots__ = ()
    _member = "hyperv"


class XenExit(_PayloadExit):
    __slots__ = ()
    _member = "xen"


class TdxExit(_PayloadExit):
    __slots__ = ()
    _member = "tdx"


# KVM_EXIT_<name> -> class; the numbers come from the binding's ExitReason.
EXIT_CLASSES: dict[str, type[Exit]] = {
    "UNKNOWN": HwUnknownExit,
    "EXCEPTION": ExceptionExit,
    "IO": IoExit,
    "HYPERCALL": HypercallExit,
    "DEBUG": DebugExit,
    "HLT": HltExit,
    "MMIO": MmioExit,
    "IRQ_WINDOW_OPEN": IrqWindowOpenExit,
    "SHUTDOWN": ShutdownExit,
    "FAIL_ENTRY": FailEntryExit,
    "INTR": IntrExit,
    "SET_TPR": SetTprExit,
    "TPR_ACCESS": TprAccessExit,
    "NMI": NmiExit,
    "INTERNAL_ERROR": InternalErrorExit,
    "SYSTEM_EVENT": SystemEventExit,
    "IOAPIC_EOI": IoapicEoiExit,
    "HYPERV": HypervExit,
    "X86_RDMSR": RdmsrExit,
    "X86_WRMSR": WrmsrExit,
    "DIRTY_RING_FULL": DirtyRingFullExit,
    "AP_RESET_HOLD": ApResetHoldExit,
    "X86_BUS_LOCK": X86BusLockExit,
    "XEN": XenExit,
    "NOTIFY": NotifyExit,
    "MEMORY_FAULT": MemoryFaultExit,
    "TDX": TdxExit,
}

# The KVM_EXIT_* names of linux/kvm.h that are flags of another exit, not exit reasons.
_NOT_REASONS = {"ARM_SEA_FLAG_GPA_VALID", "HYPERCALL_LONG_MODE", "IO_IN", "IO_OUT"}

_TABLES: dict[int, list[Any]] = {}


def dispatch_table(binding: Any) -> list[Any]:
    """A list indexed by exit reason of callables (run, vcpu) -> Exit: the class decoding the reason, or a
    factory of `UnknownExit` for a reason this module does not decode."""
    table = _TABLES.get(id(binding))
    if table is not None:
        return table
    names: dict[int, str] = {}
    for name, value in binding.CONSTANTS.items():
        if name.startswith("KVM_EXIT_") and isinstance(value, int) and 0 <= value < 4096:
            short = name[len("KVM_EXIT_") :]
            if short in _NOT_REASONS:
                continue
            if short in EXIT_CLASSES or value not in names:
                names[value] = short
    size = max(names) + 1 if names else 1
    table = [None] * size
    for value in range(size):
        short = names.get(value)
        cls = EXIT_CLASSES.get(short) if short is not None else None
        if cls is None or short is None:
            table[value] = _unknown_factory(value, short or "?")
            continue
        # The classes are shared by every binding: exit numbers are the same on all arches and versions.
        cls.reason = value
        cls.name = short
        table[value] = cls
    _TABLES[id(binding)] = table
    return table


def _unknown_factory(value: int, short: str) -> Any:
    def make(run: Any, vcpu: Any) -> UnknownExit:
        return UnknownExit(run, vcpu, value, short)

    return make


__all__ = [name for name, obj in list(globals().items()) if isinstance(obj, type) and issubclass(obj, Exit)] + [
    "EXIT_CLASSES",
]
