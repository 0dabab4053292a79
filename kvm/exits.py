"""Typed exits: what `Vcpu.run()` returns, one class per KVM_EXIT_* reason.

A vCPU keeps one exit object per reason and hands it out again at each exit of that reason: its integer
payload fields (`port`, `value`, `phys_addr`, ...) are decoded from the vCPU's shared `struct kvm_run`
when `run()` returns, its `data` is a live view of that page, and the rest is read from the page when
asked. So read (or `snapshot()`) what you need before the next `run()` of the same vCPU. Replies (I/O in
data, MMIO read data, RDMSR value, hypercall return) are written straight into `kvm_run` and reach the
guest on the next `run()`.

A reason this module has no class for becomes `UnknownExit`, never an error.
"""

from __future__ import annotations

import sys

from ._accel import ExitBase, Field
from .errors import ClosedError
from .marshal import integer

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

_BYTEORDER = sys.byteorder


class _Payload:
    """A field of an exit's payload, named by its path in `struct kvm_run` ("io.port").

    `dispatch_table(binding)` makes a `Field` of it at the offset and width the binding's own layout
    gives. kind: "int", "bool", "bytes" (a writable memoryview of `length` [* `times`] bytes at the path,
    or at the offset stored there when `indirect`) or "value" (the first such element as an int). A
    "bytes" Field is the class attribute (read when asked); the others are decoded by `run()` into the
    exit and read back through a read-only member (`ExitBase.decoded_member`), the cheapest attribute
    read the interpreter has.
    """

    def __init__(self, path: str, kind: str = "int", *, length: str | None = None, times: str | None = None,
                 indirect: bool = False) -> None:
        self.path = path
        self.kind = kind
        self.length = length
        self.times = times
        self.indirect = indirect

    def __get__(self, obj: Any, cls: Any = None) -> Any:
        if obj is None:
            return self
        raise RuntimeError(f"{type(obj).__name__}: exit fields are bound by kvm.exits.dispatch_table(binding)")


def from_run(path: str, kind: str = "int", **options: Any) -> Any:
    """Declare an exit attribute read from `struct kvm_run` at `path` (see `_Payload`)."""
    return _Payload(path, kind, **options)


class Exit(ExitBase):
    """Base of every exit. `reason` is the KVM_EXIT_* number, `name` its name without the prefix,
    `vcpu` the vCPU it came from."""

    __slots__ = ()
    reason: int = -1
    name: str = "?"
    _fields: tuple[str, ...] = ()
    _payloads: dict[str, _Payload] = {}
    _decoders: tuple[Any, ...] = ()  # the Field of each decoded value, set by dispatch_table()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._payloads = {name: value for name, value in vars(cls).items() if isinstance(value, _Payload)}

    def _source(self) -> Any:
        """The vCPU this exit came from (exits hold it weakly); ClosedError once that object is gone."""
        vcpu = self.vcpu
        if vcpu is None:
            raise ClosedError(f"the vCPU this {type(self).__name__} came from is gone (closed and dropped)")
        return vcpu

    @property
    def _run(self) -> Any:
        """The vCPU's `struct kvm_run *` (cffi), for the fields read less often than the payload fields."""
        return self._source().kvm_run

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

    def __init__(self, vcpu: Any, reason: int | None = None, name: str = "?") -> None:
        self.reason = int(self._run.exit_reason) if reason is None else reason
        self.name = name

    @property
    def payload(self) -> bytes:
        """kvm_run's exit union, raw (256 bytes: the size of its `padding` member, which sizes the union)."""
        padding = dict(self._source().ffi.typeof("struct kvm_run").fields)["padding"]
        return bytes(self._page[padding.offset : padding.offset + self._source().ffi.sizeof(padding.type)])


def _int_bytes(value: int | bytes, length: int) -> bytes:
    """A reply of `length` bytes: an unsigned int that fits them, or exactly that many bytes."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
        if len(data) != length:
            raise ValueError(f"reply of {len(data)} bytes for an access of {length}")
        return data
    return integer(value, "reply", 0, (1 << (8 * length)) - 1).to_bytes(length, _BYTEORDER)


def _u64(value: int, what: str) -> int:
    return integer(value, what, 0, (1 << 64) - 1)


def _constant(vcpu: Any, name: str) -> int:
    """A constant of the vCPU's binding; KeyError names it when the binding (its kernel) lacks it."""
    return vcpu.binding.CONSTANTS[name]  # type: ignore[no-any-return]


class HwUnknownExit(Exit):
    """KVM_EXIT_UNKNOWN: the hardware exited for a reason KVM does not handle."""

    __slots__ = ()
    _fields = ("hardware_exit_reason",)
    hardware_exit_reason: int = from_run("hw.hardware_exit_reason")


class ExceptionExit(Exit):
    """KVM_EXIT_EXCEPTION: the guest raised `exception` (with `error_code`) that KVM could not handle."""

    __slots__ = ()
    _fields = ("exception", "error_code")
    exception: int = from_run("ex.exception")
    error_code: int = from_run("ex.error_code")


class IoExit(Exit):
    """KVM_EXIT_IO: port I/O. For `in`, write the reply into `data` (or call `reply`) before the next run().

    `port`, `size` (bytes per element), `direction` (0 IN: the guest reads; 1 OUT: the guest writes),
    `count` (elements, > 1 for string I/O), `data` (a writable view of the size*count bytes in kvm_run),
    `value` (the first element as an unsigned integer).
    """

    __slots__ = ()
    _fields = ("port", "size", "direction", "count", "data")
    IN = 0  # KVM_EXIT_IO_IN and KVM_EXIT_IO_OUT, set from the binding by dispatch_table()
    OUT = 1
    port: int = from_run("io.port")
    size: int = from_run("io.size")
    direction: int = from_run("io.direction")
    count: int = from_run("io.count")
    data_offset: int = from_run("io.data_offset")
    data: memoryview = from_run("io.data_offset", "bytes", length="io.size", times="io.count", indirect=True)
    value: int = from_run("io.data_offset", "value", length="io.size", indirect=True)

    @property
    def is_in(self) -> bool:
        """The guest reads (`in`): reply() before the next run()."""
        return bool(self.direction == self.IN)

    @property
    def is_out(self) -> bool:
        """The guest writes (`out`): `data` holds what it wrote."""
        return bool(self.direction == self.OUT)

    def reply(self, value: int | bytes) -> None:
        """For `in`: the value(s) the guest reads (an int fills one element; bytes fill size*count)."""
        self._source().fileno()  # raises unless the vCPU is open and of this process (a child shares the page)
        data = self.data
        size = self.size
        reply = _int_bytes(value, size) if isinstance(value, int) else _int_bytes(value, len(data))
        data[: len(reply)] = reply
        self._decode()  # `value` shows the reply


class MmioExit(Exit):
    """KVM_EXIT_MMIO: an access KVM could not complete. For a read, `reply()` before the next run().

    `phys_addr` (also `address`), `len`, `is_write`, `data` (a writable view of the `len` bytes in kvm_run),
    `value` (them as an unsigned integer).
    """

    __slots__ = ()
    _fields = ("phys_addr", "len", "is_write", "data")
    phys_addr: int = from_run("mmio.phys_addr")
    address: int = from_run("mmio.phys_addr")
    len: int = from_run("mmio.len")
    is_write: bool = from_run("mmio.is_write", "bool")
    data: memoryview = from_run("mmio.data", "bytes", length="mmio.len")
    value: int = from_run("mmio.data", "value", length="mmio.len")

    def reply(self, value: int | bytes) -> None:
        """For a read: the value (an int) or the `len` bytes the guest reads."""
        self._source().fileno()  # raises unless the vCPU is open and of this process (a child shares the page)
        data = self.data
        data[:] = _int_bytes(value, len(data))
        self._decode()  # `value` shows the reply


class HypercallExit(Exit):
    """KVM_EXIT_HYPERCALL: hypercall `nr` with `args` (KVM_CAP_EXIT_HYPERCALL); `reply(ret)` returns a value."""

    __slots__ = ()
    _fields: tuple[str, ...] = ("nr", "args", "ret", "flags")

    @property
    def nr(self) -> int:
        """The hypercall number."""
        return int(self._run.hypercall.nr)

    @property
    def args(self) -> tuple[int, ...]:
        """Its six arguments."""
        return tuple(int(a) for a in self._run.hypercall.args)

    @property
    def ret(self) -> int:
        """The return value given so far (reply() sets it)."""
        return int(self._run.hypercall.ret)

    @property
    def flags(self) -> int:
        """KVM_EXIT_HYPERCALL_* flags (x86: KVM_EXIT_HYPERCALL_LONG_MODE)."""
        return int(self._run.hypercall.flags)

    def reply(self, ret: int) -> None:
        """The hypercall's return value (an unsigned 64-bit int)."""
        self._run.hypercall.ret = _u64(ret, "ret")


class X86HypercallExit(HypercallExit):
    """HypercallExit on x86: `long_mode` says whether the guest made it in 64-bit mode."""

    __slots__ = ()
    _fields: tuple[str, ...] = HypercallExit._fields + ("long_mode",)

    @property
    def long_mode(self) -> bool:
        """The guest made the hypercall in 64-bit mode (KVM_EXIT_HYPERCALL_LONG_MODE)."""
        return bool(self.flags & _constant(self._source(), "KVM_EXIT_HYPERCALL_LONG_MODE"))


class Arm64HypercallExit(HypercallExit):
    """HypercallExit on arm64 (an HVC or SMC the VM routes to user space): `smc` and `is_16bit` decode
    `flags`; `nr` is the SMCCC function id."""

    __slots__ = ()
    _fields: tuple[str, ...] = HypercallExit._fields + ("smc", "is_16bit")

    @property
    def smc(self) -> bool:
        """The guest issued an SMC rather than an HVC (KVM_HYPERCALL_EXIT_SMC)."""
        return bool(self.flags & _constant(self._source(), "KVM_HYPERCALL_EXIT_SMC"))

    @property
    def is_16bit(self) -> bool:
        """A 16-bit (T32) instruction made the call (KVM_HYPERCALL_EXIT_16BIT): the return address is 2 bytes
        past it rather than 4."""
        return bool(self.flags & _constant(self._source(), "KVM_HYPERCALL_EXIT_16BIT"))


class DebugExit(Exit):
    """KVM_EXIT_DEBUG: single step or breakpoint. `arch` holds the arch's `struct kvm_debug_exit_arch` as a
    dict; the arch's subclass (`X86DebugExit`, `Arm64DebugExit`) names its members."""

    __slots__ = ()
    _fields: tuple[str, ...] = ("arch",)

    @property
    def arch(self) -> dict[str, int]:
        """The members of the arch's `struct kvm_debug_exit_arch`, copied from kvm_run."""
        ffi = self._source().ffi
        record = self._run.debug.arch
        return {name: int(getattr(record, name)) for name, _ in ffi.typeof("struct kvm_debug_exit_arch").fields or ()}


class X86DebugExit(DebugExit):
    """DebugExit on x86: the exception (1 #DB, 3 #BP), the guest rip, DR6 and DR7."""

    __slots__ = ()
    _fields: tuple[str, ...] = DebugExit._fields + ("exception", "pc", "dr6", "dr7")

    @property
    def exception(self) -> int:
        """The exception vector (1 #DB, 3 #BP)."""
        return int(self._run.debug.arch.exception)

    @property
    def pc(self) -> int:
        """The guest rip of the event."""
        return int(self._run.debug.arch.pc)

    @property
    def dr6(self) -> int:
        """DR6, which says what triggered the #DB."""
        return int(self._run.debug.arch.dr6)

    @property
    def dr7(self) -> int:
        """DR7 at the event."""
        return int(self._run.debug.arch.dr7)


class Arm64DebugExit(DebugExit):
    """DebugExit on arm64: the exception syndrome (ESR_EL2, `hsr` low and `hsr_high` high 32 bits) and the
    fault address `far` (valid for watchpoints)."""

    __slots__ = ()
    _fields: tuple[str, ...] = DebugExit._fields + ("hsr", "hsr_high", "far")

    @property
    def hsr(self) -> int:
        """The low 32 bits of the exception syndrome (its EC field says which debug event)."""
        return int(self._run.debug.arch.hsr)

    @property
    def hsr_high(self) -> int:
        """The high 32 bits of the exception syndrome."""
        return int(self._run.debug.arch.hsr_high)

    @property
    def far(self) -> int:
        """The fault address register (the address a watchpoint hit)."""
        return int(self._run.debug.arch.far)


class HltExit(Exit):
    """KVM_EXIT_HLT: the guest executed `hlt` (without an in-kernel LAPIC to wait for an interrupt)."""

    __slots__ = ()


class IrqWindowOpenExit(Exit):
    """KVM_EXIT_IRQ_WINDOW_OPEN: the guest can take an interrupt now (request_interrupt_window was set)."""

    __slots__ = ()


class ShutdownExit(Exit):
    """KVM_EXIT_SHUTDOWN: on x86, a triple fault."""

    __slots__ = ()


class FailEntryExit(Exit):
    """KVM_EXIT_FAIL_ENTRY: the hardware refused to enter the guest (`hardware_entry_failure_reason`)."""

    __slots__ = ()
    _fields = ("hardware_entry_failure_reason", "cpu")
    hardware_entry_failure_reason: int = from_run("fail_entry.hardware_entry_failure_reason")
    cpu: int = from_run("fail_entry.cpu")


class IntrExit(Exit):
    """KVM_RUN returned EINTR: a signal, `immediate_exit`, or `Vcpu.kick()` interrupted it."""

    __slots__ = ()


class SetTprExit(Exit):
    """KVM_EXIT_SET_TPR: the guest wrote CR8/TPR."""

    __slots__ = ()


class TprAccessExit(Exit):
    """KVM_EXIT_TPR_ACCESS: a TPR access at `rip` (KVM_TPR_ACCESS_REPORTING)."""

    __slots__ = ()
    _fields = ("rip", "is_write")
    rip: int = from_run("tpr_access.rip")
    is_write: bool = from_run("tpr_access.is_write", "bool")


class NmiExit(Exit):
    """KVM_EXIT_NMI: an NMI exit (s390 and legacy uses)."""

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
        """The KVM_INTERNAL_ERROR_* number."""
        return int(self._run.internal.suberror)

    @property
    def suberror_name(self) -> str:
        """The suberror's name without KVM_INTERNAL_ERROR_ ("EMULATION"), or its number."""
        value = self.suberror
        for name, number in self._source().binding.CONSTANTS.items():
            if number == value and name.startswith("KVM_INTERNAL_ERROR_") and "_FLAG_" not in name:
                return name[len("KVM_INTERNAL_ERROR_"):]  # type: ignore[no-any-return]
        return str(value)

    @property
    def ndata(self) -> int:
        """How many `data` words KVM filled."""
        return int(self._run.internal.ndata)

    @property
    def data(self) -> tuple[int, ...]:
        """The `ndata` u64 words KVM reports."""
        internal = self._run.internal
        n = min(int(internal.ndata), len(internal.data))
        return tuple(int(internal.data[i]) for i in range(n))

    @property
    def insn_bytes(self) -> bytes | None:
        """For an emulation failure reported with them, the bytes of the instruction; else None."""
        failure = self._run.emulation_failure
        if (int(failure.suberror) != _constant(self._source(), "KVM_INTERNAL_ERROR_EMULATION") or int(failure.ndata) < 3
                or not int(failure.flags) & _constant(self._source(), "KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES")):
            return None
        data = bytes(self._source().ffi.buffer(failure.insn_bytes))
        return data[: min(int(failure.insn_size), len(data))]

    def describe(self) -> str:
        """One line for people: the suberror and the instruction bytes or data words."""
        text = f"internal error {self.suberror_name}"
        insn = self.insn_bytes
        if insn is not None:
            text += f": could not emulate instruction bytes {insn.hex(' ')}"
        elif self.data:
            text += ": data " + " ".join(f"{d:#x}" for d in self.data)
        return text


class SystemEventExit(Exit):
    """KVM_EXIT_SYSTEM_EVENT: the guest asked for a shutdown, reset, crash, suspend, ... (`type`, `data`)."""

    __slots__ = ()
    _fields = ("type", "data")

    @property
    def type(self) -> int:
        """The KVM_SYSTEM_EVENT_* number (a `SystemEvent` member when the binding names it)."""
        value = int(self._run.system_event.type)
        try:
            return self._source().binding.SystemEvent(value)  # type: ignore[no-any-return]
        except Exception:
            return value

    @property
    def data(self) -> tuple[int, ...]:
        """The event's `ndata` words."""
        event = self._run.system_event
        n = min(int(event.ndata), len(event.data))
        return tuple(int(event.data[i]) for i in range(n))


class IoapicEoiExit(Exit):
    """KVM_EXIT_IOAPIC_EOI: an EOI for `vector` with a split irqchip."""

    __slots__ = ()
    _fields = ("vector",)
    vector: int = from_run("eoi.vector")


class _MsrExit(Exit):
    __slots__ = ()
    _fields = ("index", "reason_flags", "data")
    index: int = from_run("msr.index")
    reason_flags = from_run("msr.reason")  # why it exits to user space: KVM_MSR_EXIT_REASON_*

    data: int = from_run("msr.data")

    def fail(self) -> None:
        """Make the guest's access fail (#GP) when it resumes."""
        self._run.msr.error = 1


class RdmsrExit(_MsrExit):
    """KVM_EXIT_X86_RDMSR: `reply(value)` gives the guest its value; `fail()` injects #GP."""

    __slots__ = ()

    def reply(self, value: int) -> None:
        """The value the guest's RDMSR reads (a u64)."""
        msr = self._run.msr
        msr.data = _u64(value, "value")
        msr.error = 0
        self._decode()  # `data` shows the reply


class WrmsrExit(_MsrExit):
    """KVM_EXIT_X86_WRMSR: `data` is what the guest wrote; `fail()` injects #GP."""

    __slots__ = ()

    def reply(self) -> None:
        """Let the guest's WRMSR complete (the default; `fail()` injects #GP instead)."""
        self._run.msr.error = 0


class DirtyRingFullExit(Exit):
    """KVM_EXIT_DIRTY_RING_FULL: harvest the vCPU's dirty ring and reset the rings, then run again."""

    __slots__ = ()


class ApResetHoldExit(Exit):
    """KVM_EXIT_AP_RESET_HOLD: an SEV-ES AP waits for its reset to be released."""

    __slots__ = ()


class X86BusLockExit(Exit):
    """KVM_EXIT_X86_BUS_LOCK: the guest took a bus lock (KVM_CAP_X86_BUS_LOCK_EXIT)."""

    __slots__ = ()


class NotifyExit(Exit):
    """KVM_EXIT_NOTIFY: the guest stayed in a non-interruptible window too long (`flags`)."""

    __slots__ = ()
    _fields = ("flags",)
    flags: int = from_run("notify.flags")


class MemoryFaultExit(Exit):
    """KVM_EXIT_MEMORY_FAULT: an access to `gpa` (`size` bytes) that KVM could not resolve."""

    __slots__ = ()
    _fields = ("flags", "gpa", "size")
    flags: int = from_run("memory_fault.flags")
    gpa: int = from_run("memory_fault.gpa")

    size: int = from_run("memory_fault.size")

    @property
    def private(self) -> bool:
        """The access was to private memory (KVM_MEMORY_EXIT_FLAG_PRIVATE)."""
        return bool(self.flags & _constant(self._source(), "KVM_MEMORY_EXIT_FLAG_PRIVATE"))


class _PayloadExit(Exit):
    """An exit whose payload is exposed raw as the cffi view of its kvm_run union member."""

    __slots__ = ()
    _member = ""

    @property
    def payload(self) -> Any:
        """The cffi view of this exit's member of kvm_run's union."""
        return getattr(self._run, self._member)


class HypervExit(_PayloadExit):
    """KVM_EXIT_HYPERV: a Hyper-V SynIC or hypercall event; `payload` is kvm_run's `hyperv` member."""

    __slots__ = ()
    _member = "hyperv"


class XenExit(_PayloadExit):
    """KVM_EXIT_XEN: a Xen hypercall; `payload` is kvm_run's `xen` member."""

    __slots__ = ()
    _member = "xen"


class TdxExit(_PayloadExit):
    """KVM_EXIT_TDX: a TDX guest's call to the VMM; `payload` is kvm_run's `tdx` member."""

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

_TABLES: dict[int, tuple[Any, ...]] = {}
# (class, attribute) -> the Field installed and the binding it was computed from
_INSTALLED: dict[tuple[type, str], tuple[tuple[Any, ...], str]] = {}


def _resolve(ffi: Any, path: str) -> tuple[int, Any]:
    """Offset and cffi type of the field at `path` ("io.port") in struct kvm_run."""
    ctype = ffi.typeof("struct kvm_run")
    offset = 0
    for name in path.split("."):
        fields = dict(ctype.fields) if ctype.kind in ("struct", "union") else {}
        if name not in fields:
            raise LookupError(f"struct kvm_run has no field {path}")
        offset += fields[name].offset
        ctype = fields[name].type
    return offset, ctype


def _field_arguments(ffi: Any, name: str, spec: _Payload) -> tuple[Any, ...]:
    offset, ctype = _resolve(ffi, spec.path)
    width = ffi.sizeof(ctype)
    signed = ctype.kind == "primitive" and int(ffi.cast(ctype, -1)) < 0
    length_offset = length_width = times_offset = times_width = -1
    if spec.length is not None:
        length_offset, length_type = _resolve(ffi, spec.length)
        length_width = ffi.sizeof(length_type)
    if spec.times is not None:
        times_offset, times_type = _resolve(ffi, spec.times)
        times_width = ffi.sizeof(times_type)
    return (name, spec.kind, offset, width, signed, spec.indirect, length_offset, max(length_width, 0),
            times_offset, max(times_width, 0))


def _bind_fields(cls: type[Exit], binding: Any) -> None:
    """Install the payload fields of `cls` computed from `binding`'s layout of kvm_run: a Field for
    "bytes", a decoded member (and its Field in `cls._decoders`) for the others.

    The exit classes are shared by every binding (`type(exit) is IoExit` holds whatever the binding),
    which is right because kvm_run's layout is ABI: it never changes between kernel versions of an arch
    (tests/test_fastpath.py checks every bundled binding), and a process only runs vCPUs of its own
    arch. A binding that disagrees with one already in use (another arch's) is refused rather than
    silently misread.
    """
    label = f"Linux {getattr(binding, 'KERNEL', '?')} {getattr(binding, 'ARCH', '?')}"
    base = cls.__mro__[1]
    decoders = list(base._decoders if isinstance(base, type) and issubclass(base, Exit) else ())
    first = len(decoders)
    index_of: dict[tuple[Any, ...], int] = {}  # fields of the same path and kind share one value
    for name, spec in cls._payloads.items():
        try:
            arguments = _field_arguments(binding.ffi, f"{cls.__name__}.{name}", spec)
        except LookupError as exc:
            raise LookupError(f"{cls.__name__}.{name} in the binding for {label}: {exc}") from None
        installed = _INSTALLED.get((cls, name))
        if installed is not None:
            if installed[0] != arguments:
                raise RuntimeError(
                    f"{cls.__name__}.{name}: kvm_run layout of {label} differs from that of {installed[1]}, "
                    "already in use in this process"
                )
            continue
        (label_name, kind, offset, width, signed, indirect, length_offset, length_width, times_offset,
         times_width) = arguments
        field = Field(label_name, kind, offset, width, signed=signed, indirect=indirect,
                      length_offset=length_offset, length_width=length_width,
                      times_offset=times_offset, times_width=times_width)
        if kind == "bytes":
            setattr(cls, name, field)
        else:
            index = index_of.setdefault(arguments[1:], len(decoders))
            if index == len(decoders):
                decoders.append(field)
            setattr(cls, name, ExitBase.decoded_member(cls, name, index))
        _INSTALLED[(cls, name)] = (arguments, label)
    if len(decoders) > first:
        cls._decoders = tuple(decoders)


def reason_names(binding: Any) -> dict[int, str]:
    """Exit reason number -> KVM_EXIT_ name without the prefix, for `binding`."""
    names: dict[int, str] = {}
    for name, value in binding.CONSTANTS.items():
        if name.startswith("KVM_EXIT_") and isinstance(value, int) and 0 <= value < 4096:
            short = name[len("KVM_EXIT_") :]
            if short in _NOT_REASONS:
                continue
            if short in EXIT_CLASSES or value not in names:
                names[value] = short
    return names


# Exits whose payload differs by arch: the binding's arch decodes them with its own subclass.
ARCH_EXIT_CLASSES: dict[str, dict[str, type[Exit]]] = {
    "x86_64": {"DEBUG": X86DebugExit, "HYPERCALL": X86HypercallExit},
    "arm64": {"DEBUG": Arm64DebugExit, "HYPERCALL": Arm64HypercallExit},
}


def dispatch_table(binding: Any) -> tuple[Any, ...]:
    """A tuple indexed by exit reason: the `Exit` class decoding that reason for `binding`, or None for
    a reason this module does not decode (`Vcpu.run()` returns an `UnknownExit` then)."""
    table = _TABLES.get(id(binding))
    if table is not None:
        return table
    names = reason_names(binding)
    classes: list[Any] = [None] * (max(names) + 1 if names else 1)
    for value, short in names.items():
        cls = ARCH_EXIT_CLASSES.get(binding.ARCH, {}).get(short) or EXIT_CLASSES.get(short)
        if cls is None:
            continue
        # Exit numbers are the same on every arch and version, so the classes carry them (the shared class
        # too when an arch's subclass decodes the exit).
        for klass in {cls, EXIT_CLASSES.get(short, cls)}:
            klass.reason = value
            klass.name = short
        for klass in cls.__mro__:
            if isinstance(klass, type) and issubclass(klass, Exit) and klass._payloads:
                _bind_fields(klass, binding)
        classes[value] = cls
    IoExit.IN = binding.CONSTANTS["KVM_EXIT_IO_IN"]
    IoExit.OUT = binding.CONSTANTS["KVM_EXIT_IO_OUT"]
    table = _TABLES[id(binding)] = tuple(classes)
    return table


__all__ = [name for name, obj in list(globals().items()) if isinstance(obj, type) and issubclass(obj, Exit)] + [
    "EXIT_CLASSES", "ARCH_EXIT_CLASSES",
]
