"""`Vcpu`: a virtual CPU fd, its shared `struct kvm_run` page, registers, and the run loop."""

from __future__ import annotations

import errno as _errno
import os
import signal
import threading
from typing import Any, Iterable, Mapping, NamedTuple

from . import _sys
from ._fd import KvmFd
from .errors import KvmError
from ._accel import Runner, VcpuBase
from .device import Attributes
from .exits import IntrExit, UnknownExit, dispatch_table, reason_names
from .memory import PAGE_SIZE
from .system import CpuidEntry, _grow, cpuid_entries

_EINTR = _errno.EINTR

# -- kick: a no-op handler on a real-time signal, so that a signal interrupts KVM_RUN with EINTR ------

KICK_SIGNAL: int = int(signal.SIGRTMIN) + 2 if hasattr(signal, "SIGRTMIN") else int(signal.SIGUSR1)
_kick_handler_installed = False


def _noop_handler(signum: int, frame: Any) -> None:
    pass


def install_kick_handler(signum: int | None = None) -> bool:
    """Install the no-op handler `Vcpu.kick()` relies on (must run in the main thread; idempotent).

    Returns whether a handler is in place. Called automatically when a vCPU is created in the main
    thread. A handler someone else installed on the signal is kept.
    """
    global _kick_handler_installed, KICK_SIGNAL
    if signum is not None and signum != KICK_SIGNAL:
        KICK_SIGNAL = signum
        _kick_handler_installed = False
    if _kick_handler_installed:
        return True
    current = signal.getsignal(KICK_SIGNAL)
    if callable(current):
        _kick_handler_installed = True
        return True
    if threading.current_thread() is not threading.main_thread():
        return False
    signal.signal(KICK_SIGNAL, _noop_handler)
    _kick_handler_installed = True
    return True


class Translation(NamedTuple):
    physical_address: int
    valid: bool
    writeable: bool
    usermode: bool


class DirtyGfn(NamedTuple):
    """A harvested dirty-ring entry: page `offset` (in pages) of memory slot `slot`."""

    slot: int
    offset: int


def _read_msrs(obj: Any, indices: list[int]) -> dict[int, int]:
    ffi = obj._binding.ffi
    n = len(indices)
    buf = ffi.new("struct kvm_msrs *", {"nmsrs": n, "entries": max(n, 1)})
    buf.nmsrs = n
    for i, index in enumerate(indices):
        buf.entries[i].index = index
    done = obj._ioctl("KVM_GET_MSRS", buf)
    if done < n:
        raise KvmError("KVM_GET_MSRS", obj.fd_kind, _errno.EINVAL,
                       f"read {done} of {n} MSRs; MSR {indices[done]:#x} was refused")
    return {int(buf.entries[i].index): int(buf.entries[i].data) for i in range(n)}


def _struct_arg(ffi: Any, ctype: str, value: Any, current: Any = None) -> Any:
    """Accept a cffi pointer/struct of `ctype`, or a mapping of field -> value applied over `current`."""
    if isinstance(value, Mapping):
        target = current if current is not None else ffi.new(ctype + " *")
        for key, item in value.items():
            _assign(target, key, item)
        return target
    if isinstance(value, (bytes, bytearray)):
        target = ffi.new(ctype + " *")
        ffi.memmove(target, value, min(len(value), ffi.sizeof(ctype)))
        return target
    kind = ffi.typeof(value).kind
    if kind == "struct":
        target = ffi.new(ctype + " *")
        ffi.memmove(target, ffi.addressof(value), ffi.sizeof(ctype))
        return target
    return value


def _assign(target: Any, key: str, value: Any) -> None:
    if isinstance(value, Mapping):
        sub = getattr(target, key)
        for k, v in value.items():
            _assign(sub, k, v)
    else:
        setattr(target, key, value)


class Vcpu(KvmFd, Attributes, VcpuBase):
    """A vCPU (from `Vm.create_vcpu(id)`).

    Register state is read and written through properties that return owning cffi pointers
    (`vcpu.regs.rip`); assign back a pointer, a struct, or a dict of fields to change it:
    ``vcpu.regs = {"rip": 0x1000, "rflags": 2}``.
    """

    fd_kind = "vcpu"

    def __init__(self, vm: Any, fd: int, id: int) -> None:
        super().__init__(fd, vm._binding, vm)
        self.vm = vm
        self.id = id
        binding = vm._binding
        ffi = self._ffi = binding.ffi
        mapping = _sys.FileMapping(fd, vm.system.vcpu_mmap_size)
        self._mapping: _sys.FileMapping | None = mapping
        self._run = ffi.from_buffer("struct kvm_run *", mapping.view)
        self._kicked = False
        # `run()` (of VcpuBase) calls it: no Python frame between `vcpu.run()` and KVM_RUN
        self._runner = Runner(fd, self._ioctls["KVM_RUN"].number, mapping.view, self,
                              dispatch_table(binding), self._run_failed, self._unknown_exit,
                              self._raise_unusable, ffi.offsetof("struct kvm_run", "exit_reason"))
        self._stats: Any = None
        self._dirty_ring: _sys.FileMapping | None = None
        self._dirty_index = 0
        self._cpuid_set = False
        if threading.current_thread() is threading.main_thread():
            install_kick_handler()

    def _cap_owner(self) -> KvmFd:
        return self.vm._cap_owner()  # type: ignore[no-any-return]

    def _release(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            runner.close()
            del runner
        if self._stats is not None:
            self._stats.close()
            self._stats = None
        run, self._run = self._run, None
        if run is not None:
            self._ffi.release(run)
        # Exits and their data views may outlive the vCPU: detaching leaves them a private copy of the
        # pages, so that closing the fd frees the vCPU (and, with its VM's fd, the VM) right now.
        for mapping in (self._mapping, self._dirty_ring):
            if mapping is not None:
                mapping.detach()
        self._mapping = self._dirty_ring = None

    # -- running ----------------------------------------------------------------------------------

    def _run_failed(self, err: int) -> Any:
        """The Runner's answer to a failed KVM_RUN: an IntrExit for EINTR, else KvmError."""
        if err == _EINTR:
            if self._kicked:
                self._kicked = False
                self._run.immediate_exit = 0
            return IntrExit(self)
        raise KvmError("KVM_RUN", "vcpu", err)

    def _unknown_exit(self, reason: int) -> UnknownExit:
        return UnknownExit(self, reason, reason_names(self._binding).get(reason, "?"))

    def kick(self) -> None:
        """Make a running (or the next) `run()` return an `IntrExit` promptly. Thread-safe."""
        run, runner = self._run, self._runner
        if run is None or runner is None:
            return
        self._kicked = True
        run.immediate_exit = 1
        tid = runner.tid
        if tid and _kick_handler_installed:
            _sys.tgkill(tid, KICK_SIGNAL)

    @property
    def immediate_exit(self) -> bool:
        return bool(self._checked_run().immediate_exit)

    @immediate_exit.setter
    def immediate_exit(self, value: bool) -> None:
        self._checked_run().immediate_exit = 1 if value else 0

    def _checked_run(self) -> Any:
        self._check_open()
        return self._run

    @property
    def kvm_run(self) -> Any:
        """The shared `struct kvm_run *` (valid until close)."""
        return self._checked_run()

    # -- sync regs --------------------------------------------------------------------------------

    @property
    def sync_regs(self) -> int:
        """kvm_valid_regs: which register sets (SyncRegsFlag) KVM copies into kvm_run.s on every exit."""
        return int(self._checked_run().kvm_valid_regs)

    @sync_regs.setter
    def sync_regs(self, flags: int) -> None:
        self._checked_run().kvm_valid_regs = int(flags)

    @property
    def synced(self) -> Any:
        """kvm_run.s.regs: the synced `struct kvm_sync_regs` (live view: .regs, .sregs, .events)."""
        return self._checked_run().s.regs

    def mark_synced_dirty(self, flags: int) -> None:
        """kvm_dirty_regs: KVM loads these sets from kvm_run.s on the next run()."""
        self._checked_run().kvm_dirty_regs = int(flags)

    # -- register state ---------------------------------------------------------------------------

    def _get(self, ioctl: str, ctype: str) -> Any:
        buf = self._ffi.new(ctype + " *")
        self._ioctl(ioctl, buf)
        return buf

    def _set(self, ioctl: str, get_ioctl: str, ctype: str, value: Any) -> None:
        current = self._get(get_ioctl, ctype) if isinstance(value, Mapping) else None
        self._ioctl(ioctl, _struct_arg(self._ffi, ctype, value, current))

    regs = property(
        lambda self: self._get("KVM_GET_REGS", "struct kvm_regs"),
        lambda self, v: self._set("KVM_SET_REGS", "KVM_GET_REGS", "struct kvm_regs", v),
        doc="General purpose registers (`struct kvm_regs`).",
    )
    sregs = property(
        lambda self: self._get("KVM_GET_SREGS", "struct kvm_sregs"),
        lambda self, v: self._set("KVM_SET_SREGS", "KVM_GET_SREGS", "struct kvm_sregs", v),
        doc="Special registers: segments, control registers, EFER, APIC base (`struct kvm_sregs`).",
    )
    sregs2 = property(
        lambda self: self._get("KVM_GET_SREGS2", "struct kvm_sregs2"),
        lambda self, v: self._set("KVM_SET_SREGS2", "KVM_GET_SREGS2", "struct kvm_sregs2", v),
        doc="`struct kvm_sregs2` (KVM_CAP_SREGS2): sregs plus the PDPTRs.",
    )
    fpu = property(
        lambda self: self._get("KVM_GET_FPU", "struct kvm_fpu"),
        lambda self, v: self._set("KVM_SET_FPU", "KVM_GET_FPU", "struct kvm_fpu", v),
        doc="FPU/SSE state (`struct kvm_fpu`).",
    )
    lapic = property(
        lambda self: self._get("KVM_GET_LAPIC", "struct kvm_lapic_state"),
        lambda self, v: self._set("KVM_SET_LAPIC", "KVM_GET_LAPIC", "struct kvm_lapic_state", v),
        doc="Local APIC registers (`struct kvm_lapic_state`, needs an in-kernel irqchip).",
    )
    xcrs = property(
        lambda self: self._get("KVM_GET_XCRS", "struct kvm_xcrs"),
        lambda self, v: self._set("KVM_SET_XCRS", "KVM_GET_XCRS", "struct kvm_xcrs", v),
        doc="Extended control registers (`struct kvm_xcrs`).",
    )
    debugregs = property(
        lambda self: self._get("KVM_GET_DEBUGREGS", "struct kvm_debugregs"),
        lambda self, v: self._set("KVM_SET_DEBUGREGS", "KVM_GET_DEBUGREGS", "struct kvm_debugregs", v),
        doc="Debug registers dr0-3, dr6, dr7 (`struct kvm_debugregs`).",
    )
    vcpu_events = property(
        lambda self: self._get("KVM_GET_VCPU_EVENTS", "struct kvm_vcpu_events"),
        lambda self, v: self._set("KVM_SET_VCPU_EVENTS", "KVM_GET_VCPU_EVENTS", "struct kvm_vcpu_events", v),
        doc="Pending exceptions, interrupts, NMIs, SMM state (`struct kvm_vcpu_events`).",
    )

    @property
    def mp_state(self) -> int:
        """The multiprocessing state (an `MpState` number)."""
        state = self._get("KVM_GET_MP_STATE", "struct kvm_mp_state")
        value = int(state.mp_state)
        try:
            return self._binding.MpState(value)  # type: ignore[no-any-return]
        except Exception:
            return value

    @mp_state.setter
    def mp_state(self, value: int) -> None:
        state = self._ffi.new("struct kvm_mp_state *")
        state.mp_state = int(value)
        self._ioctl("KVM_SET_MP_STATE", state)

    @property
    def xsave(self) -> Any:
        """`struct kvm_xsave` (KVM_GET_XSAVE2 with the size KVM_CAP_XSAVE2 reports, else KVM_GET_XSAVE)."""
        ffi = self._ffi
        size = self.vm.check_extension("KVM_CAP_XSAVE2")
        base = ffi.sizeof("struct kvm_xsave")
        if size > base:
            extra = (size - base + 3) // 4
            buf = ffi.new("struct kvm_xsave *", {"extra": extra})
            self._ioctl("KVM_GET_XSAVE2", buf)
            return buf
        return self._get("KVM_GET_XSAVE", "struct kvm_xsave")

    @xsave.setter
    def xsave(self, value: Any) -> None:
        if isinstance(value, (bytes, bytearray)):
            ffi = self._ffi
            base = ffi.sizeof("struct kvm_xsave")
            extra = max(0, (len(value) - base + 3) // 4)
            buf = ffi.new("struct kvm_xsave *", {"extra": extra})
            ffi.memmove(buf, value, len(value))
            value = buf
        self._ioctl("KVM_SET_XSAVE", value)

    def get_msrs(self, indices: Iterable[int]) -> dict[int, int]:
        """KVM_GET_MSRS: index -> value (KvmError naming the first MSR KVM refused)."""
        return _read_msrs(self, list(indices))

    def set_msrs(self, values: Mapping[int, int]) -> None:
        """KVM_SET_MSRS: all or nothing (KvmError naming the first MSR KVM refused)."""
        ffi = self._ffi
        items = list(values.items())
        n = len(items)
        buf = ffi.new("struct kvm_msrs *", {"nmsrs": n, "entries": max(n, 1)})
        buf.nmsrs = n
        for i, (index, value) in enumerate(items):
            buf.entries[i].index = index
            buf.entries[i].data = value
        done = self._ioctl("KVM_SET_MSRS", buf)
        if done < n:
            raise KvmError("KVM_SET_MSRS", self.fd_kind, _errno.EINVAL,
                           f"wrote {done} of {n} MSRs; MSR {items[done][0]:#x} was refused")

    @property
    def msrs(self) -> dict[int, int]:
        """Every MSR of KVM_GET_MSR_INDEX_LIST that this vCPU lets read (set: a dict, via set_msrs)."""
        out: dict[int, int] = {}
        for index in self.vm.system.msr_index_list():
            try:
                out.update(_read_msrs(self, [index]))
            except KvmError:
                continue
        return out

    @msrs.setter
    def msrs(self, values: Mapping[int, int]) -> None:
        self.set_msrs(values)

    def get_cpuid(self, max_entries: int | None = None) -> list[CpuidEntry]:
        """KVM_GET_CPUID2 with room for `max_entries` (KvmError E2BIG if too few); None grows as needed."""

        def get(n: int) -> Any:
            buf = self._ffi.new("struct kvm_cpuid2 *", {"nent": n, "entries": max(n, 1)})
            buf.nent = n
            self._ioctl("KVM_GET_CPUID2", buf)
            return buf

        if max_entries is not None:
            return cpuid_entries(get(max_entries))
        return cpuid_entries(_grow(64, get))

    def set_cpuid(self, entries: Iterable[CpuidEntry | tuple[int, ...]]) -> None:
        """KVM_SET_CPUID2."""
        rows = [CpuidEntry(*e) for e in entries]
        n = len(rows)
        buf = self._ffi.new("struct kvm_cpuid2 *", {"nent": n, "entries": max(n, 1)})
        buf.nent = n
        for i, row in enumerate(rows):
            entry = buf.entries[i]
            entry.function, entry.index, entry.flags = row.function, row.index, row.flags
            entry.eax, entry.ebx, entry.ecx, entry.edx = row.eax, row.ebx, row.ecx, row.edx
        self._ioctl("KVM_SET_CPUID2", buf)
        self._cpuid_set = True

    cpuid = property(get_cpuid, set_cpuid, doc="The vCPU's CPUID table (list of CpuidEntry).")

    # -- debugging --------------------------------------------------------------------------------

    def set_guest_debug(self, enable: bool = True, *, single_step: bool = False,
                        hw_breakpoints: Iterable[int] = (), sw_breakpoints: bool = False,
                        flags: int = 0) -> None:
        """KVM_SET_GUEST_DEBUG: single-step and/or up to 4 hardware execution breakpoints (x86 dr0-3).

        Exits come back as `DebugExit`. `enable=False` turns guest debugging off.
        """
        consts = self._binding.CONSTANTS
        request = self._ffi.new("struct kvm_guest_debug *")
        control = flags
        if enable:
            control |= consts["KVM_GUESTDBG_ENABLE"]
            if single_step:
                control |= consts["KVM_GUESTDBG_SINGLESTEP"]
            if sw_breakpoints:
                control |= consts["KVM_GUESTDBG_USE_SW_BP"]
            addresses = list(hw_breakpoints)
            if len(addresses) > 4:
                raise ValueError("x86 has 4 hardware breakpoints")
            if addresses:
                control |= consts["KVM_GUESTDBG_USE_HW_BP"]
                dr7 = 0x400
                for i, address in enumerate(addresses):
                    request.arch.debugreg[i] = address
                    dr7 |= 1 << (2 * i)  # Li: local enable; R/W=00 (execute), LEN=00
                request.arch.debugreg[7] = dr7
        request.control = control
        self._ioctl("KVM_SET_GUEST_DEBUG", request)

    def translate(self, gva: int) -> Translation:
        """KVM_TRANSLATE: the guest-physical address of virtual address `gva` in the current mode."""
        request = self._ffi.new("struct kvm_translation *")
        request.linear_address = gva
        self._ioctl("KVM_TRANSLATE", request)
        return Translation(int(request.physical_address), bool(request.valid), bool(request.writeable),
                           bool(request.usermode))

    def interrupt(self, vector: int) -> None:
        """KVM_INTERRUPT: queue an external interrupt (no in-kernel irqchip)."""
        request = self._ffi.new("struct kvm_interrupt *")
        request.irq = vector
        self._ioctl("KVM_INTERRUPT", request)

    def nmi(self) -> None:
        self._ioctl("KVM_NMI")

    def enable_cap(self, cap: Any, *args: int, flags: int = 0) -> int:
        """KVM_ENABLE_CAP on the vCPU."""
        request = self._ffi.new("struct kvm_enable_cap *")
        request.cap = self._cap_value(cap)
        request.flags = flags
        for i, value in enumerate(args):
            request.args[i] = value
        return self._ioctl("KVM_ENABLE_CAP", request)

    # -- stats, attributes ------------------------------------------------------------------------

    def stats(self) -> dict[str, int | tuple[int, ...]]:
        """The vCPU's binary stats (KVM_GET_STATS_FD): name -> value."""
        if self._stats is None:
            from .stats import StatsFd

            fd = self._ioctl("KVM_GET_STATS_FD")
            os.set_inheritable(fd, False)
            self._stats = StatsFd(fd, self._ffi, self._binding.CONSTANTS)
        return self._stats.read()  # type: ignore[no-any-return]

    # -- dirty ring, coalesced ring ---------------------------------------------------------------

    def _dirty_ring_map(self) -> memoryview:
        if self._dirty_ring is None:
            size = self.vm._dirty_ring_bytes
            if not size:
                raise RuntimeError("the dirty ring is not enabled: call vm.enable_dirty_ring() before create_vcpu()")
            offset = self._binding.CONSTANTS["KVM_DIRTY_LOG_PAGE_OFFSET"] * PAGE_SIZE
            self._dirty_ring = _sys.FileMapping(self.fileno(), size, offset)
        return self._dirty_ring.view

    def harvest_dirty_ring(self) -> list[DirtyGfn]:
        """Collect the dirty-ring entries KVM published and mark them for reset (then call
        `vm.reset_dirty_rings()` to re-protect those pages)."""
        ring = self._dirty_ring_map()
        ffi = self._ffi
        entries = ffi.from_buffer("struct kvm_dirty_gfn[]", ring)
        count = len(entries)
        consts = self._binding.CONSTANTS
        dirty, reset = consts["KVM_DIRTY_GFN_F_DIRTY"], consts["KVM_DIRTY_GFN_F_RESET"]
        out = []
        try:
            while True:
                entry = entries[self._dirty_index % count]
                if not (entry.flags & dirty):
                    break
                out.append(DirtyGfn(int(entry.slot), int(entry.offset)))
                entry.flags = reset
                self._dirty_index += 1
        finally:
            ffi.release(entries)
        return out

    def _drain_coalesced(self) -> list[Any]:
        from .vm import CoalescedAccess

        ffi = self._ffi
        self._check_open()
        offset = self._binding.CONSTANTS["KVM_COALESCED_MMIO_PAGE_OFFSET"] * PAGE_SIZE
        mapping = self._mapping
        assert mapping is not None  # (open)
        page = mapping.view[offset : offset + PAGE_SIZE]
        ring = ffi.from_buffer("struct kvm_coalesced_mmio_ring *", page)
        header = ffi.sizeof("struct kvm_coalesced_mmio_ring")
        capacity = (PAGE_SIZE - header) // ffi.sizeof("struct kvm_coalesced_mmio")
        out = []
        try:
            while ring.first != ring.last:
                entry = ring.coalesced_mmio[ring.first]
                length = int(entry.len)
                out.append(CoalescedAccess(int(entry.phys_addr), length, bool(entry.pio),
                                           bytes(entry.data)[:length]))
                ring.first = (ring.first + 1) % capacity
        finally:
            ffi.release(ring)
            page.release()
        return out

    def __repr__(self) -> str:
        return f"<Vcpu id={self.id} {'closed' if self.closed else f'fd={self._fd}'}>"


VcpuBase.bind_run(Vcpu)  # `vcpu.run()` as a specialised call of the compiled run (see kvm/_speedups.c)
