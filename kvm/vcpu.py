"""`Vcpu`: a virtual CPU fd, its shared `struct kvm_run` page, the run loop, and what every arch's vCPU has.

The arch's own methods (x86 register sets, arm64 `init()`, ...) come from the mixin kvm/arches.py puts
in front of this class for the binding in use.
"""

from __future__ import annotations

import _thread
import errno as _errno
import os
import signal
import sys
import time
import warnings
import weakref
from collections.abc import Iterable

from . import _sys, marshal
from ._accel import Runner, VcpuBase
from ._fd import KvmFd, RecordProperty, holding_fd, needs
from ._namedtuple import NamedTuple
from .device import Attributes
from .errors import KvmError, StateError
from .exits import Exit, IntrExit, MemoryFaultExit, UnknownExit, dispatch_table, reason_names
from .memory import PAGE_SIZE
from .stats import StatsFd

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

_EINTR = _errno.EINTR
_STOP_TIMEOUT = 5.0  # seconds close() waits for a kicked run() to return
# KVM_RUN fails with these and sets exit_reason to KVM_EXIT_MEMORY_FAULT when it reports a memory fault
# (Python's errno module lacks EHWPOISON: Linux numbers it 133, and 168 on mips)
EHWPOISON: int = getattr(_errno, "EHWPOISON", 168 if os.uname().machine.startswith("mips") else 133)
_MEMORY_FAULT_ERRNOS = (_errno.EFAULT, EHWPOISON)

# -- kick: a no-op handler on a real-time signal, so that a signal interrupts KVM_RUN with EINTR ------

KICK_SIGNAL: int = int(signal.SIGRTMIN) + 2 if hasattr(signal, "SIGRTMIN") else int(signal.SIGUSR1)


def _noop_handler(signum: int, frame: Any) -> None:
    pass


# the signals each vCPU blocks while its guest runs (KVM_SET_SIGNAL_MASK), for install_kick_handler()
_SIGNAL_MASKS: weakref.WeakKeyDictionary[Any, frozenset[int]] = weakref.WeakKeyDictionary()


def _kick_signals() -> frozenset[int]:
    """The signals fit to kick with: those with no other meaning (SIGUSR1, SIGUSR2, the real-time ones)."""
    signals = {int(signal.SIGUSR1), int(signal.SIGUSR2)}
    if hasattr(signal, "SIGRTMIN"):
        signals.update(range(int(signal.SIGRTMIN), int(signal.SIGRTMAX) + 1))
    return frozenset(signals)


def install_kick_handler(signum: int | None = None) -> bool:
    """Make `signum` (default: the current `KICK_SIGNAL`) the signal `Vcpu.kick()` sends, with a handler
    that does nothing, so that it interrupts KVM_RUN. Works from any thread; returns True.

    A Python handler someone else installed on the signal is kept. `signum` must be SIGUSR1, SIGUSR2 or a
    real-time signal (a signal with another meaning would change what the process does on it).
    """
    global KICK_SIGNAL
    if signum is not None:
        if signum.__class__ is not int and not isinstance(signum, signal.Signals):
            raise TypeError(f"signum must be an int, not {type(signum).__name__}")
        if int(signum) not in _kick_signals():
            raise ValueError(f"signum {signum} cannot be the kick signal: use SIGUSR1, SIGUSR2 or a real-time "
                             f"signal (SIGRTMIN..SIGRTMAX)")
        masked = [vcpu for vcpu, signals in list(_SIGNAL_MASKS.items()) if int(signum) in signals and not vcpu.closed]
        if masked:
            raise ValueError(f"signum {signum} is blocked while the guest runs by the signal mask of {masked[0]!r} "
                             "(set_signal_mask): it could not interrupt run()")
        KICK_SIGNAL = int(signum)
    _ensure_kick_handler(KICK_SIGNAL)
    return True


def _ensure_kick_handler(signum: int) -> None:
    if callable(signal.getsignal(signum)):
        return
    try:
        signal.signal(signum, _noop_handler)
    except ValueError:  # (signal.signal() is for the main thread only: signum was checked)
        _sys.set_noop_handler(signum)


def _kick_thread(tid: int) -> None:
    """Interrupt KVM_RUN in thread `tid` (a kernel thread id) with KICK_SIGNAL, making sure first that
    the signal has a handler (someone may have set SIG_IGN or SIG_DFL on it since)."""
    _ensure_kick_handler(KICK_SIGNAL)
    _sys.tgkill(tid, KICK_SIGNAL)


class CoalescedAccess(NamedTuple):
    """One entry of the coalesced MMIO/PIO ring."""

    phys_addr: int
    len: int
    pio: bool
    data: bytes


class DirtyGfn(NamedTuple):
    """A harvested dirty-ring entry: page `offset` (in pages) of memory slot `slot`."""

    slot: int
    offset: int


class Vcpu(Attributes, VcpuBase):
    """A vCPU (from `Vm.create_vcpu(id)`).

    Register state is read and written through properties that return owning cffi pointers
    (`vcpu.regs.rip`); assign back a pointer, its bytes, or a dict of fields to change some:
    ``vcpu.regs = {"rip": 0x1000, "rflags": 2}``.
    """

    fd_kind = "vcpu"
    # (what a vCPU starts with and may change later: class attributes, not set by every __init__)
    _kicked = False
    _stats: StatsFd | None = None
    _dirty_ring: _sys.FileMapping | None = None
    _dirty_index = 0
    _routed_ioctls = {"KVM_RUN": "_run_raw", "KVM_SET_SIGNAL_MASK": "_signal_mask_set"}

    if TYPE_CHECKING:
        def run(self) -> Exit:
            """KVM_RUN until the next exit to user space: the typed exit (compiled, see VcpuBase.run)."""

    def __init__(self, vm: Any, fd: int, id: int, mmap_size: int) -> None:
        binding = vm.binding
        ffi = self._ffi = binding.ffi
        # Everything that can fail comes before KvmFd.__init__ registers the vCPU with its VM: a failed
        # construction leaves nothing behind (the caller closes `fd`).
        mapping = _sys.FileMapping(fd, mmap_size)
        self._mapping: _sys.FileMapping | None = mapping
        self._run = mapping.record(ffi, "struct kvm_run")
        # `run()` (of VcpuBase) calls it: no Python frame between `vcpu.run()` and KVM_RUN
        # (the callbacks are the class's functions, called with the vCPU: the Runner holds no reference
        # to it, so that a dropped vCPU is freed, and closed, at once)
        cls = type(self)
        self._runner = Runner(fd, binding.IOCTLS["KVM_RUN"].number, mapping.view, dispatch_table(binding),
                              cls._run_failed, cls._unknown_exit, cls._run_refused,
                              ffi.offsetof("struct kvm_run", "exit_reason"))
        self.vm = vm
        self.id = id
        # (the gates of a vCPU's ioctls depend on what its VM's kind of fd answers: see Vm.__init__)
        super().__init__(fd, binding, vm, ("vcpu", binding.__name__, vm.system.path, vm.type))

    def _cap_owner(self) -> KvmFd:
        return self.vm.capability_fd()  # type: ignore[no-any-return]

    def _stop(self) -> None:
        runner = self._runner
        if runner is not None:
            runner.close()  # first: a run() called from now on raises ClosedError without entering KVM_RUN
            self._stop_runner(runner)

    def _release(self) -> None:
        # Exits, views and the `kvm_run` pointer may outlive the vCPU: detaching leaves them a private copy
        # of the pages (unmapped when the last of them goes), so that closing the fd frees the vCPU (and,
        # with its VM's fd, the VM) right now, and nothing a user holds points into unmapped memory.
        for mapping in (self._mapping, self._dirty_ring):
            if mapping is not None:
                mapping.detach()
        self._release_in_child()

    def _release_in_child(self) -> None:
        # (in a forked child the mappings are private copies already: see kvm/_sys.py)
        self._runner = None
        if self._stats is not None:
            self._stats.close()
            self._stats = None
        self._run = None
        self._mapping = self._dirty_ring = None

    # -- running ----------------------------------------------------------------------------------

    def _stop_runner(self, runner: Any) -> None:
        """Before the fd closes (and after the Runner was closed): make a `run()` in progress in another
        thread return (it then raises ClosedError), and wait until it has left KVM_RUN. A thread that
        does not leave (it blocks KICK_SIGNAL) is warned about, and the fd closed under it anyway: it
        holds the vCPU until KVM_RUN returns, and its run() then raises ClosedError."""
        if not runner.tid or runner.tid == _thread.get_native_id():
            return
        self._run.immediate_exit = 1
        deadline = time.monotonic() + _STOP_TIMEOUT
        while runner.tid:
            tid = runner.tid
            if tid:
                _kick_thread(tid)  # again each round: a signal can land just before the thread enters KVM_RUN
            time.sleep(0.001)  # (releases the GIL, which the running thread needs to return)
            if time.monotonic() > deadline:
                warnings.warn(f"vCPU {self.id}: the thread in run() did not leave KVM_RUN within {_STOP_TIMEOUT} s "
                              f"of being kicked (does it block signal {KICK_SIGNAL}?); closing the vCPU anyway",
                              RuntimeWarning, stacklevel=4)
                return

    def _run_refused(self, busy_tid: int | None = None) -> Any:
        """The Runner's answer when it cannot enter KVM_RUN: closed, forked, or already running."""
        if busy_tid is None:
            self._raise_unusable()
        raise StateError(f"vCPU {self.id} is in run() in another thread (kernel thread id {busy_tid}): a vCPU runs "
                         "in one thread at a time")

    def _run_raw(self, arg: Any = 0) -> int:
        """KVM_RUN as `vcpu.ioctls.run()` issues it: through the Runner, so that kick() and close() reach it."""
        runner = self._runner
        if runner is None:
            self._raise_unusable()
        result: int = runner.raw(self)
        if result < 0:
            if -result == _EINTR and self._run is not None:
                self._consume_kick(self._run)
            raise KvmError("KVM_RUN", "vcpu", -result)
        return result

    def _signal_mask_set(self, arg: Any) -> int:
        """KVM_SET_SIGNAL_MASK, whichever way it is issued: a mask that blocks KICK_SIGNAL is refused (kick()
        and close() could no longer interrupt run()); the mask is noted for install_kick_handler()."""
        ffi = self._ffi
        signals: frozenset[int] = frozenset()
        if isinstance(arg, ffi.CData) and arg != ffi.NULL and ffi.typeof(arg) is ffi.typeof("struct kvm_signal_mask *"):
            length = min(int(arg.len), len(ffi.buffer(arg)) - ffi.offsetof("struct kvm_signal_mask", "sigset"))
            bits = int.from_bytes(ffi.buffer(arg.sigset, max(length, 0))[:], sys.byteorder)
            signals = frozenset(n + 1 for n in range(bits.bit_length()) if bits >> n & 1)
        if KICK_SIGNAL in signals:
            raise ValueError(f"signals: {KICK_SIGNAL} is KICK_SIGNAL, which kick() and close() interrupt run() "
                             "with: it cannot be blocked while the guest runs")
        result = self._ioctl("KVM_SET_SIGNAL_MASK", arg)
        _SIGNAL_MASKS[self] = signals
        return result

    def _consume_kick(self, run: Any) -> None:
        """After KVM_RUN returned EINTR: the immediate_exit a kick() set has done its work (one the user
        set stays)."""
        if self._kicked:
            self._kicked = False
            run.immediate_exit = 0

    def _run_failed(self, err: int) -> Any:
        """The Runner's answer to a failed KVM_RUN: an IntrExit for EINTR, a MemoryFaultExit when KVM
        reports a memory fault (EFAULT or EHWPOISON with exit reason KVM_EXIT_MEMORY_FAULT), else KvmError."""
        run = self._run
        if run is None:  # closed by another thread since KVM_RUN returned
            self._raise_unusable()
        if err == _EINTR:
            self._consume_kick(run)
            return IntrExit(self)
        if err in _MEMORY_FAULT_ERRNOS:
            if int(run.exit_reason) == self._binding.CONSTANTS.get("KVM_EXIT_MEMORY_FAULT", -1):
                return MemoryFaultExit(self)
        raise KvmError("KVM_RUN", "vcpu", err)

    def _unknown_exit(self, reason: int) -> UnknownExit:
        return UnknownExit(self, reason, reason_names(self._binding).get(reason, "?"))

    def kick(self) -> None:
        """Make a running (or the next) `run()` return an `IntrExit` promptly, from any thread.

        Sets kvm_run.immediate_exit and signals the thread inside KVM_RUN with KICK_SIGNAL, whose no-op
        handler kvm installs (from the main thread: at import, or at the first kick made there). A kick
        of a closed vCPU does nothing; in a forked child it raises ForkedError.
        """
        run, runner = self._run, self._runner
        if run is None or runner is None:
            if self._fd < 0 and self._pid != _sys.pid():
                self._raise_unusable()
            return
        self._check_open()  # a forked child shares kvm_run with the parent: never write it
        self._kicked = True
        run.immediate_exit = 1
        tid = runner.tid
        if tid:
            _kick_thread(tid)

    @property
    def immediate_exit(self) -> bool:
        """kvm_run.immediate_exit: when set, the next run() returns an IntrExit without entering the guest."""
        return bool(self.kvm_run.immediate_exit)

    @immediate_exit.setter
    def immediate_exit(self, value: bool) -> None:
        run = self.kvm_run
        run.immediate_exit = 1 if marshal.boolean(value, "immediate_exit") else 0

    @property
    def kvm_run(self) -> Any:
        """The shared `struct kvm_run *` (valid until close)."""
        self._check_open()
        return self._run

    # -- sync regs --------------------------------------------------------------------------------

    @property
    def sync_regs(self) -> int:
        """kvm_valid_regs: which register sets (SyncRegsFlag) KVM copies into kvm_run.s on every exit."""
        return int(self.kvm_run.kvm_valid_regs)

    @sync_regs.setter
    def sync_regs(self, flags: int) -> None:
        self.kvm_run.kvm_valid_regs = marshal.integer(flags, "sync_regs", 0, (1 << 64) - 1)

    @property
    def synced(self) -> Any:
        """kvm_run.s.regs: the synced `struct kvm_sync_regs` (live view: .regs, .sregs, .events). It keeps
        the page mapped while it lives (after close, a copy of its last contents)."""
        mapping = self._mapping
        if mapping is None or self._fd < 0:
            self._raise_unusable()
        ffi = self._ffi
        return mapping.record(ffi, "struct kvm_sync_regs", ffi.offsetof("struct kvm_run", "s", "regs"))

    def mark_synced_dirty(self, flags: int) -> None:
        """kvm_dirty_regs: KVM loads these sets from kvm_run.s on the next run()."""
        self.kvm_run.kvm_dirty_regs = marshal.integer(flags, "flags", 0, (1 << 64) - 1)

    # -- register state common to several arches --------------------------------------------------

    regs = RecordProperty("KVM_GET_REGS", "KVM_SET_REGS", "struct kvm_regs",
                          "General purpose registers (`struct kvm_regs`).")
    fpu = RecordProperty("KVM_GET_FPU", "KVM_SET_FPU", "struct kvm_fpu", "FPU state (`struct kvm_fpu`).")
    vcpu_events = RecordProperty("KVM_GET_VCPU_EVENTS", "KVM_SET_VCPU_EVENTS", "struct kvm_vcpu_events",
                                 "Pending exceptions, interrupts, NMIs, SMM state (`struct kvm_vcpu_events`).")

    @property
    @needs("KVM_GET_MP_STATE", "KVM_SET_MP_STATE")
    def mp_state(self) -> int:
        """The multiprocessing state (an `MpState` member when the binding knows the number)."""
        value = marshal.struct_out(self._ioctl, self._ffi, "KVM_GET_MP_STATE", "struct kvm_mp_state").mp_state
        try:
            return self._binding.MpState(int(value))  # type: ignore[no-any-return]
        except ValueError:
            return int(value)

    @mp_state.setter
    def mp_state(self, value: int) -> None:
        marshal.struct_in(self._ioctl, self._ffi, "KVM_SET_MP_STATE", "struct kvm_mp_state", None,
                          marshal.required({"mp_state": value}))

    @needs("KVM_GET_ONE_REG")
    def get_one_reg(self, reg_id: int) -> int:
        """KVM_GET_ONE_REG: register `reg_id` (an arch's register id), an unsigned int of its size."""
        return marshal.one_reg_get(self._ioctl, self._ffi, self._binding.CONSTANTS, "KVM_GET_ONE_REG", reg_id)

    @needs("KVM_SET_ONE_REG")
    def set_one_reg(self, reg_id: int, value: int) -> None:
        """KVM_SET_ONE_REG: set register `reg_id` to `value` (an unsigned int that fits its size)."""
        marshal.one_reg_set(self._ioctl, self._ffi, self._binding.CONSTANTS, "KVM_SET_ONE_REG", reg_id, value)

    @needs("KVM_GET_REG_LIST")
    def reg_list(self) -> list[int]:
        """KVM_GET_REG_LIST: the ids of every register KVM_GET/SET_ONE_REG accepts on this vCPU."""
        return marshal.index_list(self._ioctl, self._ffi, "KVM_GET_REG_LIST", "struct kvm_reg_list", "n", "reg", 256)

    @needs("KVM_INTERRUPT")
    def interrupt(self, vector: int) -> None:
        """KVM_INTERRUPT: queue an external interrupt (no in-kernel irqchip)."""
        vector = marshal.integer(vector, "vector", 0, 0xFFFFFFFF)
        marshal.struct_in(self._ioctl, self._ffi, "KVM_INTERRUPT", "struct kvm_interrupt", None, {"irq": vector})

    @needs("KVM_SET_SIGNAL_MASK")
    def set_signal_mask(self, signals: Iterable[int] | None) -> None:
        """KVM_SET_SIGNAL_MASK: the signals blocked while the guest runs (None: no mask). KICK_SIGNAL is
        refused: blocked, it could no longer interrupt run() for kick() and close()."""
        self.ioctls.set_signal_mask(signals)  # the generated wrapper knows the arch's sizeof(sigset_t)


    # -- stats ------------------------------------------------------------------------------------

    @needs("KVM_GET_STATS_FD")
    @holding_fd
    def stats(self) -> dict[str, int | tuple[int, ...]]:
        """The vCPU's binary stats (KVM_GET_STATS_FD): name -> value."""
        if self._stats is None:
            self._stats = StatsFd.of(self._ioctl, self._ffi, self._binding.CONSTANTS)
        return self._stats.read()

    # -- dirty ring, coalesced ring ---------------------------------------------------------------

    @holding_fd
    def _dirty_ring_map(self) -> memoryview:
        if self._dirty_ring is None:
            size = self.vm.dirty_ring_bytes
            if not size:
                raise StateError("the dirty ring is not enabled: call vm.enable_dirty_ring() before create_vcpu()")
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

    def coalesced_entries(self) -> list[CoalescedAccess]:
        """Drain the VM's coalesced MMIO/PIO ring, which KVM maps through every vCPU's fd."""
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
                entry = ring.coalesced_mmio[ring.first % capacity]
                length = min(int(entry.len), len(entry.data))
                out.append(CoalescedAccess(int(entry.phys_addr), length, bool(entry.pio),
                                           bytes(entry.data)[:length]))
                ring.first = (ring.first + 1) % capacity
        finally:
            ffi.release(ring)
            page.release()
        return out

    def __repr__(self) -> str:
        return f"<Vcpu id={self.id} {'closed' if self.closed else f'fd={self._fd}'}>"
