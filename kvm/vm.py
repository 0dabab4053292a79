"""`Vm`: a virtual machine fd, with its memory slots, vCPUs, devices, interrupts, dirty logging and stats.

What every arch's VM has; the arch's own methods come from the mixin kvm/arches.py puts in front.
"""

from __future__ import annotations

import errno
import fcntl
import mmap as _mmap
import os
import select
import stat
import _thread
import sys
import weakref
from collections.abc import Sequence

from . import _sys, marshal
from ._fd import FdHolders, KvmFd, adopt_fd, holding_fd, needs
from ._namedtuple import NamedTuple
from .arches import for_binding
from .device import Attributes, Device
from .errors import CapabilityError, ClosedError, ForkedError, KvmError, ResourceError, StateError
from .memory import PAGE_SIZE, GuestMemory
from .stats import StatsFd
from .vcpu import CoalescedAccess, Vcpu

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def _check_backing_file(fd: int, end: int, name: object) -> None:
    """Guest RAM backed by a file must be a regular file (or a memfd) covering [file_offset, end):
    anything else, or a file too short, would fault (SIGBUS) on the guest's or our first access."""
    try:
        info = os.fstat(fd)
    except OSError as exc:
        raise ValueError(f"file {name!r} is not an open file descriptor ({exc.strerror})") from None
    if not stat.S_ISREG(info.st_mode):
        raise ValueError(f"file {name!r} is not a regular file or a memfd (mode {stat.filemode(info.st_mode)})")
    if info.st_size < end:
        raise ValueError(f"file {name!r} holds {info.st_size} bytes; the slot needs {end} (file_offset + size)")


def _seal_against_shrinking(fd: int) -> None:
    """Seal a memfd (a user's too) so that it cannot shrink under the guest: an access past its end would be
    a SIGBUS. A regular file, or a memfd made without MFD_ALLOW_SEALING, cannot be sealed: whoever
    truncates it while it backs guest RAM crashes the process (docs/guide.md says so)."""
    try:
        seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
    except OSError:
        return  # not a memfd
    if not seals & (fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_SEAL):
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK)


# what the host answers when it has not the memory or file descriptors a slot needs
_HOST_REFUSALS = (errno.ENOMEM, errno.ENFILE, errno.EMFILE, errno.ENOSPC, errno.EAGAIN)

# KVM_MEM_MAX_NR_PAGES (include/linux/kvm_host.h, kernel-internal, so not in any binding): a slot holds at
# most 2**31 - 1 pages
_MAX_SLOT_BYTES = ((1 << 31) - 1) * PAGE_SIZE


class IrqchipRoute(NamedTuple):
    """A GSI routed to pin `pin` of in-kernel irqchip `irqchip` (x86: 0 PIC master, 1 PIC slave, 2 IOAPIC)."""

    gsi: int
    irqchip: int
    pin: int


class MsiRoute(NamedTuple):
    """A GSI routed to an MSI message."""

    gsi: int
    address: int
    data: int
    flags: int = 0
    devid: int = 0


_EVENTFD_MAX = 2**64 - 2  # the largest value an eventfd counter holds


def _is_eventfd(fd: int) -> bool:
    try:
        return os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:[eventfd]"
    except OSError:
        return False


class EventFd(FdHolders):
    """An eventfd (close-on-exec) as used by irqfd and ioeventfd. `EventFd(fd)` takes a duplicate of an
    eventfd the caller made (the caller's own fd stays theirs); anything else is refused.

    The fd itself is always non-blocking: a blocking EventFd waits in poll() in short steps, so that
    close() from another thread ends the wait (with ClosedError) rather than hanging on it.
    """

    def __init__(self, fd: int | None = None, *, nonblocking: bool = True) -> None:
        super().__init__()
        self._fd = -1
        self._pid = _sys.pid()
        self._blocking = not marshal.boolean(nonblocking, "nonblocking")
        if fd is None:
            self._fd = _sys.eventfd(0, _sys.EFD_CLOEXEC | _sys.EFD_NONBLOCK)
            return
        fd = marshal.integer(fd, "fd", 0, (1 << 31) - 1)
        if not _is_eventfd(fd):
            raise ValueError(f"fd {fd} is not an open eventfd")
        own = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 0)
        os.set_blocking(own, False)  # (the flag is the open file's: the caller's fd turns non-blocking too)
        self._fd = own

    def fileno(self) -> int:
        """The eventfd's fd (ClosedError once closed, ForkedError in a forked child)."""
        if self._pid != _sys.pid():
            raise ForkedError("this eventfd was made before fork(): the child shares it with the parent's VM; "
                              "make a new one in the child")
        if self._fd < 0:
            raise ClosedError("eventfd is closed")
        return self._fd

    @property
    def closed(self) -> bool:
        """Whether close() was called."""
        return self._fd < 0

    def _wait(self, fd: int, event: int) -> None:
        """Wait (blocking EventFd) until the eventfd is ready for `event`, or closed."""
        poller = select.poll()
        poller.register(fd, event)
        while not poller.poll(50):
            if self._fd < 0:
                raise ClosedError("eventfd was closed while waiting on it")

    def notify(self, value: int = 1) -> None:
        """Add `value` to the counter (what a guest-visible irqfd reacts to). When the counter would pass its
        maximum, a non-blocking EventFd raises StateError (nothing is added), a blocking one waits for a read()."""
        value = marshal.integer(value, "value", 1, _EVENTFD_MAX)
        data = value.to_bytes(8, sys.byteorder)
        with self.hold_fd() as fd:
            while True:
                try:
                    os.write(fd, data)
                    return
                except BlockingIOError:
                    if not self._blocking:
                        raise StateError(f"the eventfd's counter would pass its maximum ({_EVENTFD_MAX}) if {value} "
                                         "were added to it: read() it first") from None
                    self._wait(fd, select.POLLOUT)

    def read(self) -> int:
        """Read and reset the counter: 0 when nothing was signalled on a non-blocking EventFd, while a
        blocking one waits for a signal."""
        with self.hold_fd() as fd:
            while True:
                try:
                    return int.from_bytes(os.read(fd, 8), sys.byteorder)
                except BlockingIOError:
                    if not self._blocking:
                        return 0
                    self._wait(fd, select.POLLIN)

    def close(self) -> None:
        """Close the eventfd (after a notify() or read() in progress in another thread). Idempotent."""
        if self._pid != _sys.pid():  # a forked child's copy (the lock may be held by a thread of the parent)
            fd, self._fd = self._fd, -1
            if fd >= 0:
                os.close(fd)
            return
        with self._lock:
            fd, self._fd = self._fd, -1
        if fd >= 0:
            self._close_number(fd)

    def __enter__(self) -> EventFd:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


class GuestMemfd(KvmFd):
    """A guest_memfd (KVM_CREATE_GUEST_MEMFD): guest memory the host need not map."""

    fd_kind = "guest_memfd"

    def __init__(self, vm: Vm, fd: int, size: int, flags: int) -> None:
        self.vm = vm
        self.size = size
        self.flags = flags
        super().__init__(fd, vm.binding, vm)  # (last: from here on a close() of the VM may close it)

    def _cap_owner(self) -> KvmFd:
        return self.vm.capability_fd()

    def mmap(self, length: int | None = None, offset: int = 0) -> _mmap.mmap:
        """Map it into the host: only a guest_memfd created with GUEST_MEMFD_FLAG_MMAP and
        GUEST_MEMFD_FLAG_INIT_SHARED, since touching a private page of the mapping is a SIGBUS."""
        constants = self._binding.CONSTANTS
        needed = constants.get("GUEST_MEMFD_FLAG_MMAP", 0) | constants.get("GUEST_MEMFD_FLAG_INIT_SHARED", 0)
        if not needed or self.flags & needed != needed:
            raise StateError("only a guest_memfd created with GUEST_MEMFD_FLAG_MMAP | GUEST_MEMFD_FLAG_INIT_SHARED "
                             "can be mapped: its pages would be private, and touching one is a SIGBUS")
        offset = marshal.integer(offset, "offset", 0, self.size)
        length = self.size - offset if length is None else marshal.integer(length, "length", 1, self.size - offset)
        with self.hold_fd() as fd:
            return _mmap.mmap(fd, length, _mmap.MAP_SHARED, offset=offset)


class Vm(Attributes):
    """A VM (from `Kvm.create_vm()`). Closing it closes its vCPUs, devices and memory."""

    fd_kind = "vm"
    _routed_ioctls = {"KVM_ENABLE_CAP": "_enable_cap_issued"}
    # (what a VM starts with and may change later: class attributes, not set by every __init__)
    _stats: StatsFd | None = None
    _dirty_ring_bytes = 0
    _caps_on_vm_fd: bool | None = None  # found on first use, by capability_fd()
    _lowest_free_slot = 0  # no slot below it is free

    def __init__(self, system: Any, fd: int, vm_type: int = 0) -> None:
        binding = system.binding
        self.system = system
        self.type = vm_type
        self._ffi = binding.ffi
        self._memory: dict[int, GuestMemory] = {}
        self._pending_unmap: list[GuestMemory] = []
        self._slots_lock = _thread.RLock()
        # last: from here on the VM is its system's child, which a close() there in another thread may close
        # (what KVM_CHECK_EXTENSION answers on a VM fd depends on the device and the VM type alone)
        super().__init__(fd, binding, system, ("vm", binding.__name__, system.path, vm_type))

    def capability_fd(self) -> KvmFd:
        """The fd that answers KVM_CHECK_EXTENSION for this VM: the VM's own when the host supports that
        (KVM_CAP_CHECK_EXTENSION_VM), else /dev/kvm's."""
        on_vm_fd = self._caps_on_vm_fd
        if on_vm_fd is None:
            on_vm_fd = self._caps_on_vm_fd = self.system.vm_fds_answer_caps()
        return self if on_vm_fd else self.system  # (not stored: a VM holding itself would need the GC)

    _cap_owner = capability_fd

    def _enable_cap_issued(self, arg: Any) -> int:
        """KVM_ENABLE_CAP on the VM, whichever way it is issued (enable_cap, vm.caps.*.enable, vm.ioctls): a
        dirty ring it enables is noted, since vCPUs map and harvest theirs by its size."""
        result = self._ioctl("KVM_ENABLE_CAP", arg)
        consts = self._binding.CONSTANTS
        rings = {consts.get("KVM_CAP_DIRTY_LOG_RING"), consts.get("KVM_CAP_DIRTY_LOG_RING_ACQ_REL")} - {None}
        if int(arg.cap) in rings:
            self._dirty_ring_bytes = int(arg.args[0])
        return result

    def _release(self) -> None:
        if self._stats is not None:
            self._stats.close()
            self._stats = None
        # vCPUs and devices are children (closed by KvmFd.close before this); the memory goes after the fd.
        self._pending_unmap = list(self._memory.values())
        self._memory.clear()

    def close(self) -> None:
        """Close the VM: its vCPUs and devices first, then the VM fd, then unmap its memory. Idempotent."""
        if self.closed:
            return
        super().close()
        pending, self._pending_unmap = self._pending_unmap, []
        for mem in pending:
            mem.unmap()

    # -- memory -----------------------------------------------------------------------------------

    @property
    def memory(self) -> list[GuestMemory]:
        """The registered slots, by slot number."""
        return [self._memory[k] for k in sorted(self._memory)]

    def memory_at(self, guest_addr: int) -> GuestMemory:
        """The slot covering guest-physical `guest_addr` (LookupError when none does)."""
        self._check_open()
        guest_addr = marshal.integer(guest_addr, "guest_addr", 0, (1 << 64) - 1)
        for mem in list(self._memory.values()):
            if guest_addr in mem:
                return mem
        self._check_open()  # (closed meanwhile by another thread, which emptied the slot table)
        raise LookupError(f"no memory slot covers guest address {guest_addr:#x}")

    def _free_slot(self) -> int:
        slot = self._lowest_free_slot
        while slot in self._memory:
            slot += 1
        self._lowest_free_slot = slot
        return slot

    def _set_region(self, slot: int, flags: int, guest_addr: int, size: int, host_addr: int,
                    guest_memfd: int = -1, guest_memfd_offset: int = 0) -> None:
        # (every caller checked the values: cffi fills the record in one call)
        fields = {"slot": slot, "flags": flags, "guest_phys_addr": guest_addr, "memory_size": size,
                  "userspace_addr": host_addr}
        name, record = "KVM_SET_USER_MEMORY_REGION", "struct kvm_userspace_memory_region"
        if guest_memfd >= 0:
            fields.update(guest_memfd=guest_memfd, guest_memfd_offset=guest_memfd_offset)
            name, record = "KVM_SET_USER_MEMORY_REGION2", "struct kvm_userspace_memory_region2"
        marshal.memory_region(self._ioctl, self._ffi, name, record, self._ffi.new(record + " *", fields), {},
                              self._slot_pages)

    @holding_fd
    def add_memory(
        self,
        guest_addr: int,
        size: int,
        *,
        flags: int = 0,
        slot: int | None = None,
        file: str | int | None = None,
        file_offset: int = 0,
        memfd: bool = False,
        guest_memfd: bool | GuestMemfd = False,
        guest_memfd_offset: int = 0,
    ) -> GuestMemory:
        """Map `size` bytes of host memory at guest-physical `guest_addr` as a new slot.

        Backing: anonymous memory (default), a `file` (path or fd, mapped shared from `file_offset`), or a
        fresh `memfd`. `guest_memfd=True` (or a `GuestMemfd`) also binds a guest_memfd to the slot
        (KVM_SET_USER_MEMORY_REGION2, flag KVM_MEM_GUEST_MEMFD). `flags`: `MemoryRegionFlag` bits.
        """
        with self._slots_lock:  # (one change of the slot table at a time)
            self._check_open()
            guest_addr = marshal.integer(guest_addr, "guest_addr", 0, (1 << 64) - 1)
            size = marshal.integer(size, "size", 1, _MAX_SLOT_BYTES)
            flags = marshal.integer(flags, "flags", 0, 0xFFFFFFFF)
            if slot is None:
                slot = self._free_slot()
            elif (slot := marshal.integer(slot, "slot", 0, 0xFFFFFFFF)) in self._memory:
                raise ValueError(f"slot {slot} is already in use by {self._memory[slot]!r}")
            file_offset = marshal.integer(file_offset, "file_offset", 0, (1 << 63) - 1 - size)
            if file_offset % PAGE_SIZE:
                raise ValueError(f"file_offset must be a multiple of the page size ({PAGE_SIZE}), not {file_offset}")
            if marshal.boolean(memfd, "memfd") and file is not None:
                raise ValueError("memfd=True makes a new memfd: it cannot be combined with file=")
            if not (isinstance(guest_memfd, (bool, GuestMemfd))):
                raise TypeError(f"guest_memfd must be a bool or a GuestMemfd, not {type(guest_memfd).__name__}")
            guest_memfd_offset = marshal.integer(guest_memfd_offset, "guest_memfd_offset", 0, (1 << 63) - 1)
            if guest_memfd_offset and guest_memfd is False:
                raise ValueError("guest_memfd_offset is an offset in the slot's guest_memfd: give guest_memfd too")
            # The slot's fd is always one of its own (a user's fd is duplicated): the user may close theirs, and
            # a forked child still remaps the slot privately from it (see kvm/memory.py).
            fd = -1
            if memfd:
                fd = _sys.memfd_create(f"kvm-slot-{slot}", _sys.MFD_CLOEXEC | _sys.MFD_ALLOW_SEALING)
            elif isinstance(file, (str, os.PathLike)):
                fd = os.open(file, os.O_RDWR | os.O_CLOEXEC)
            elif file is not None:
                user_fd = marshal.integer(file, "file", 0, (1 << 31) - 1)
                try:
                    fd = fcntl.fcntl(user_fd, fcntl.F_DUPFD_CLOEXEC, 0)
                except OSError as exc:
                    raise ValueError(f"file {file!r} is not an open file descriptor ({exc.strerror})") from None
            try:
                if memfd:
                    os.ftruncate(fd, size)
                elif fd >= 0:
                    _check_backing_file(fd, file_offset + size, file)
                if fd >= 0:
                    _seal_against_shrinking(fd)
                    mapping = _mmap.mmap(fd, size, _mmap.MAP_SHARED, offset=file_offset)
                else:
                    mapping = _mmap.mmap(-1, size, _mmap.MAP_PRIVATE | _mmap.MAP_ANONYMOUS)
            except OSError as exc:
                if fd >= 0:
                    os.close(fd)
                backing = "a memfd" if memfd else f"file {file!r}" if file is not None else "anonymous memory"
                kind = ResourceError if exc.errno in _HOST_REFUSALS else type(exc)
                raise kind(exc.errno, f"add_memory: cannot map size={size:#x} bytes of {backing} for the guest: "
                                      f"{exc.strerror}") from None
            except BaseException:
                if fd >= 0:
                    os.close(fd)
                raise
            gmem: GuestMemfd | None = None
            owns_gmem = False
            if guest_memfd is not False:
                flags |= self._binding.CONSTANTS["KVM_MEM_GUEST_MEMFD"]
                try:
                    if isinstance(guest_memfd, GuestMemfd):
                        if guest_memfd.vm is not self:
                            raise ValueError("guest_memfd belongs to another VM")
                        gmem = guest_memfd
                    else:
                        gmem, owns_gmem = self.create_guest_memfd(size), True
                except BaseException:  # (no guest_memfd to be had: release what was made for the slot)
                    mapping.close()
                    if fd >= 0:
                        os.close(fd)
                    raise
            mem = GuestMemory(self, slot, guest_addr, size, flags, mapping, fd=fd, file_offset=file_offset,
                              guest_memfd=gmem, guest_memfd_offset=guest_memfd_offset, owns_guest_memfd=owns_gmem)
            try:
                if gmem is None:
                    self._set_region(slot, flags, guest_addr, size, mem.host_addr)
                else:
                    with gmem.hold_fd() as gmem_fd:
                        self._set_region(slot, flags, guest_addr, size, mem.host_addr, gmem_fd, guest_memfd_offset)
            except BaseException:
                mem.unmap()
                raise
            self._memory[slot] = mem
            return mem

    @holding_fd
    def remove_memory(self, memory: GuestMemory | int) -> None:
        """Delete a slot (by `GuestMemory` or slot number) and unmap it."""
        with self._slots_lock:  # (one change of the slot table at a time)
            self._check_open()
            if isinstance(memory, GuestMemory):
                mem = self._memory.get(memory.slot)
                if mem is not memory:
                    raise ValueError(f"{memory!r} is not a memory slot of this VM")
            else:
                slot = marshal.integer(memory, "memory", 0, 0xFFFFFFFF)
                found = self._memory.get(slot)
                if found is None:
                    raise LookupError(f"slot {slot} is not registered")
                mem = found
            gmem = mem.guest_memfd
            self._set_region(mem.slot, mem.flags & ~self._binding.CONSTANTS["KVM_MEM_GUEST_MEMFD"] if gmem is None else mem.flags,
                             mem.guest_addr, 0, mem.host_addr,
                             gmem.fileno() if gmem is not None and not gmem.closed else -1, mem.guest_memfd_offset)
            del self._memory[mem.slot]
            self._lowest_free_slot = min(self._lowest_free_slot, mem.slot)
            mem.unmap()

    @holding_fd
    def set_memory_flags(self, memory: GuestMemory, flags: int) -> None:
        """Change a slot's flags in place (e.g. turn KVM_MEM_LOG_DIRTY_PAGES on or off)."""
        flags = marshal.integer(flags, "flags", 0, 0xFFFFFFFF)
        with self._slots_lock:  # (one change of the slot table at a time)
            if self._memory.get(getattr(memory, "slot", -1)) is not memory:
                raise ValueError(f"{memory!r} is not a memory slot of this VM")
            gmem = memory.guest_memfd
            self._set_region(memory.slot, flags, memory.guest_addr, memory.size, memory.host_addr,
                             gmem.fileno() if gmem is not None else -1, memory.guest_memfd_offset)
            memory.flags = flags

    def read(self, guest_addr: int, length: int) -> bytes:
        """`length` bytes at guest-physical `guest_addr`, from the slot covering it."""
        return self.memory_at(guest_addr).read(guest_addr, length)

    def write(self, guest_addr: int, data: bytes) -> None:
        """Copy `data` to guest-physical `guest_addr`, in the slot covering it."""
        self.memory_at(guest_addr).write(guest_addr, data)

    @needs("KVM_CREATE_GUEST_MEMFD")
    @holding_fd
    def create_guest_memfd(self, size: int, flags: int = 0) -> GuestMemfd:
        """KVM_CREATE_GUEST_MEMFD."""
        fd = marshal.struct_in(self._ioctl, self._ffi, "KVM_CREATE_GUEST_MEMFD", "struct kvm_create_guest_memfd",
                               None, marshal.required({"size": size, "flags": flags}))
        return adopt_fd(fd, lambda: GuestMemfd(self, marshal.new_fd(fd), size, flags))

    # -- vCPUs and devices ------------------------------------------------------------------------

    @holding_fd
    def create_vcpu(self, id: int = 0) -> Vcpu:
        """KVM_CREATE_VCPU: a new `Vcpu` with id `id` (on x86, its APIC id)."""
        id = marshal.integer(id, "id", 0, 0xFFFFFFFF)
        mmap_size = self.system.vcpu_mmap_size
        try:
            fd = self._ioctl("KVM_CREATE_VCPU", id)  # (id checked above)
        except KvmError as exc:
            if exc.errno != errno.EEXIST:
                raise
            state = ("is open" if any(v.id == id for v in self.vcpus)
                     else "was closed or dropped (KVM keeps a vCPU until its VM goes)")
            raise KvmError("KVM_CREATE_VCPU", "vm", exc.errno, f"vCPU {id} exists already: its Vcpu {state}") from None
        return adopt_fd(fd, lambda: for_binding(Vcpu, self._binding)(self, fd, id, mmap_size))

    @property
    def vcpus(self) -> list[Vcpu]:
        """The open vCPUs, by id."""
        return sorted((c for c in self._open_children() if isinstance(c, Vcpu) and not c.closed), key=lambda v: v.id)

    @holding_fd
    def create_device(self, type: int, *, test: bool = False) -> Device | None:
        """KVM_CREATE_DEVICE: a `Device` (with `test=True`, only check it could be created; returns None)."""
        flags = self._binding.CONSTANTS["KVM_CREATE_DEVICE_TEST"] if marshal.boolean(test, "test") else 0
        request = marshal.struct_inout(self._ioctl, self._ffi, "KVM_CREATE_DEVICE", "struct kvm_create_device",
                                       None, marshal.required({"type": type, "flags": flags}))
        if test:
            return None
        fd = int(request.fd)
        return adopt_fd(fd, lambda: Device(self, marshal.new_fd(fd), int(type)))

    # -- interrupts -------------------------------------------------------------------------------

    @needs("KVM_CREATE_IRQCHIP")
    def create_irqchip(self) -> None:
        """KVM_CREATE_IRQCHIP: the arch's in-kernel interrupt controller (x86: PIC, IOAPIC and local APICs;
        arm64: a GICv2). Create vCPUs afterwards."""
        self._ioctl("KVM_CREATE_IRQCHIP")

    @needs("KVM_IRQ_LINE")
    def irq_line(self, irq: int, level: int) -> None:
        """KVM_IRQ_LINE: drive interrupt line `irq` to `level` (0/1)."""
        marshal.struct_in(self._ioctl, self._ffi, "KVM_IRQ_LINE", "struct kvm_irq_level", None,
                          marshal.required({"irq": irq, "level": level}))

    @needs("KVM_SIGNAL_MSI")
    def signal_msi(self, address: int, data: int, flags: int = 0, devid: int = 0) -> int:
        """KVM_SIGNAL_MSI: >0 delivered, 0 blocked by the guest."""
        address = marshal.integer(address, "address", 0, (1 << 64) - 1)
        return marshal.struct_in(self._ioctl, self._ffi, "KVM_SIGNAL_MSI", "struct kvm_msi", None, marshal.required({
            "address_lo": address & 0xFFFFFFFF, "address_hi": address >> 32, "data": data, "flags": flags,
            "devid": devid}))

    @needs("KVM_SET_GSI_ROUTING")
    def set_gsi_routing(self, routes: Sequence[IrqchipRoute | MsiRoute]) -> None:
        """KVM_SET_GSI_ROUTING: replace the whole GSI routing table."""
        consts = self._binding.CONSTANTS
        entries: list[dict[str, Any]] = []
        for i, route in enumerate(marshal.items(routes, "routes")):
            if isinstance(route, IrqchipRoute):
                entries.append({"gsi": route.gsi, "type": consts["KVM_IRQ_ROUTING_IRQCHIP"],
                                "u": {"irqchip": {"irqchip": route.irqchip, "pin": route.pin}}})
            elif isinstance(route, MsiRoute):
                address = marshal.integer(route.address, f"routes[{i}].address", 0, (1 << 64) - 1)
                entries.append({"gsi": route.gsi, "type": consts["KVM_IRQ_ROUTING_MSI"], "flags": route.flags,
                                "u": {"msi": {"address_lo": address & 0xFFFFFFFF, "address_hi": address >> 32,
                                              "data": route.data, "devid": route.devid}}})
            else:
                raise TypeError(f"routes[{i}] must be an IrqchipRoute or an MsiRoute, not {type(route).__name__}")
        marshal.flex_set(self._ioctl, self._ffi, "KVM_SET_GSI_ROUTING", "struct kvm_irq_routing", "nr", "entries",
                         entries)

    @staticmethod
    def _eventfd(eventfd: Any, name: str, *, or_new: bool = False) -> EventFd:
        """`eventfd` when it is an EventFd (with `or_new`, None gives a new one), else TypeError naming it."""
        if eventfd is None and or_new:
            return EventFd()
        if not isinstance(eventfd, EventFd):
            hint = " (or None for a new one)" if or_new else ""
            raise TypeError(f"{name} must be a kvm.EventFd{hint}, not {type(eventfd).__name__}")
        return eventfd

    def _irqfd(self, eventfd: EventFd, gsi: int, flags: int, resample: EventFd | None = None) -> None:
        gsi = marshal.integer(gsi, "gsi", 0, 0xFFFFFFFF)
        # (without `resample`, the second block holds `eventfd` once more, and its number goes unused)
        with eventfd.hold_fd() as fd, (eventfd if resample is None else resample).hold_fd() as rfd:
            fields = {"fd": fd, "gsi": gsi, "flags": flags}
            if resample is not None:
                fields["resamplefd"] = rfd
            marshal.struct_in(self._ioctl, self._ffi, "KVM_IRQFD", "struct kvm_irqfd", None, fields)

    @needs("KVM_IRQFD")
    def irqfd(self, gsi: int, eventfd: EventFd | None = None, *, resample: EventFd | None = None) -> EventFd:
        """KVM_IRQFD: signalling the returned eventfd raises GSI `gsi` in the guest."""
        eventfd = self._eventfd(eventfd, "eventfd", or_new=True)
        flags = 0
        if resample is not None:
            resample = self._eventfd(resample, "resample")
            flags = self._binding.CONSTANTS["KVM_IRQFD_FLAG_RESAMPLE"]
        self._irqfd(eventfd, gsi, flags, resample)
        return eventfd

    @needs("KVM_IRQFD")
    def irqfd_remove(self, eventfd: EventFd, gsi: int) -> None:
        """KVM_IRQFD with KVM_IRQFD_FLAG_DEASSIGN: `eventfd` no longer raises GSI `gsi`."""
        self._irqfd(self._eventfd(eventfd, "eventfd"), gsi, self._binding.CONSTANTS["KVM_IRQFD_FLAG_DEASSIGN"])

    def _ioeventfd(self, address: int, length: int, datamatch: int | None, pio: bool, eventfd: EventFd,
                   deassign: bool) -> None:
        consts = self._binding.CONSTANTS
        address = marshal.integer(address, "address", 0, (1 << 64) - 1)
        length = marshal.integer(length, "length", 0, 8)
        if datamatch is not None:
            datamatch = marshal.integer(datamatch, "datamatch", 0, (1 << 64) - 1)
        flags = 0
        if datamatch is not None:
            flags |= consts["KVM_IOEVENTFD_FLAG_DATAMATCH"]
        if marshal.boolean(pio, "pio"):
            flags |= consts["KVM_IOEVENTFD_FLAG_PIO"]
        if deassign:
            flags |= consts["KVM_IOEVENTFD_FLAG_DEASSIGN"]
        with eventfd.hold_fd() as fd:
            marshal.struct_in(self._ioctl, self._ffi, "KVM_IOEVENTFD", "struct kvm_ioeventfd", None, {
                "addr": address, "len": length, "fd": fd, "flags": flags, "datamatch": datamatch})

    def ioeventfd(self, address: int, length: int = 4, *, datamatch: int | None = None, pio: bool = False,
                  eventfd: EventFd | None = None) -> EventFd:
        """KVM_IOEVENTFD: a guest write of `length` bytes to `address` (port if `pio`) signals the eventfd
        instead of exiting to user space."""
        eventfd = self._eventfd(eventfd, "eventfd", or_new=True)
        self._ioeventfd(address, length, datamatch, pio, eventfd, False)
        return eventfd

    def ioeventfd_remove(self, eventfd: EventFd, address: int, length: int = 4, *, datamatch: int | None = None,
                         pio: bool = False) -> None:
        """KVM_IOEVENTFD with KVM_IOEVENTFD_FLAG_DEASSIGN: the same address, length and match as given to
        ioeventfd()."""
        self._ioeventfd(address, length, datamatch, pio, self._eventfd(eventfd, "eventfd"), True)

    # -- dirty logging ----------------------------------------------------------------------------

    def _own_slot(self, memory: GuestMemory) -> GuestMemory:
        self._check_open()
        if not isinstance(memory, GuestMemory):
            raise TypeError(f"memory must be a GuestMemory, not {type(memory).__name__}")
        if self._memory.get(memory.slot) is not memory:
            raise ValueError(f"{memory!r} is not a memory slot of this VM (removed, or another VM's)")
        return memory

    def get_dirty_log(self, memory: GuestMemory) -> bytes:
        """KVM_GET_DIRTY_LOG: the slot's bitmap (bit i = page i written since the last call/clear)."""
        mem = self._own_slot(memory)
        return marshal.dirty_log(self._ioctl, self._ffi, "KVM_GET_DIRTY_LOG", mem.slot, self._slot_pages)

    def dirty_pages(self, memory: GuestMemory) -> list[int]:
        """The guest-physical addresses of the pages KVM_GET_DIRTY_LOG reports dirty."""
        mem = self._own_slot(memory)
        return mem.pages_in_bitmap(self.get_dirty_log(mem))

    def enable_manual_dirty_log_protect(self, initially_set: bool = False) -> None:
        """KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2: KVM_GET_DIRTY_LOG stops re-protecting; use clear_dirty_log."""
        consts = self._binding.CONSTANTS
        flags = consts["KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE"]
        if marshal.boolean(initially_set, "initially_set"):
            flags |= consts["KVM_DIRTY_LOG_INITIALLY_SET"]
        self.enable_cap("KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2", flags)

    def clear_dirty_log(self, memory: GuestMemory, first_page: int = 0, num_pages: int | None = None,
                        bitmap: bytes | None = None) -> None:
        """KVM_CLEAR_DIRTY_LOG: clear (and re-protect) the pages set in `bitmap` (default: all) of the range."""
        mem = self._own_slot(memory)
        first_page = marshal.integer(first_page, "first_page", 0, mem.pages)
        if num_pages is None:
            num_pages = mem.pages - first_page
        num_pages = marshal.integer(num_pages, "num_pages", 0, mem.pages - first_page)
        marshal.clear_dirty_log(self._ioctl, self._ffi, "KVM_CLEAR_DIRTY_LOG", mem.slot, first_page, num_pages, bitmap)

    @property
    def dirty_ring_bytes(self) -> int:
        """The size of each vCPU's dirty ring (0 until enable_dirty_ring)."""
        return self._dirty_ring_bytes

    def enable_dirty_ring(self, size_bytes: int, *, acq_rel: bool = False) -> None:
        """Enable the per-vCPU dirty ring of `size_bytes` (before creating vCPUs)."""
        cap = "KVM_CAP_DIRTY_LOG_RING_ACQ_REL" if marshal.boolean(acq_rel, "acq_rel") else "KVM_CAP_DIRTY_LOG_RING"
        size_bytes = marshal.integer(size_bytes, "size_bytes", 0, (1 << 64) - 1)
        self.enable_cap(cap, size_bytes)  # (noted by _enable_cap_issued)

    def reset_dirty_rings(self) -> int:
        """KVM_RESET_DIRTY_RINGS: re-protect the harvested entries; returns how many were reset."""
        return self._ioctl("KVM_RESET_DIRTY_RINGS")

    # -- coalesced MMIO / PIO ---------------------------------------------------------------------

    def _coalesced(self, ioctl: str, address: int, size: int, pio: bool) -> None:
        address = marshal.integer(address, "port" if pio else "address", 0, (1 << 64) - 1)
        size = marshal.integer(size, "size", 0, 0xFFFFFFFF)
        if pio and self.check_extension("KVM_CAP_COALESCED_PIO") <= 0:
            raise CapabilityError(ioctl, self.fd_kind, "KVM_CAP_COALESCED_PIO", self.capability_fd().fd_kind)
        marshal.struct_in(self._ioctl, self._ffi, ioctl, "struct kvm_coalesced_mmio_zone", None,
                          {"addr": address, "size": size, "pio": 1 if pio else 0})

    def register_coalesced_mmio(self, address: int, size: int) -> None:
        """Guest writes into [address, address+size) are queued in the coalesced ring, not exited."""
        self._coalesced("KVM_REGISTER_COALESCED_MMIO", address, size, False)

    def unregister_coalesced_mmio(self, address: int, size: int) -> None:
        """Guest writes into [address, address+size) exit to user space again."""
        self._coalesced("KVM_UNREGISTER_COALESCED_MMIO", address, size, False)

    def register_coalesced_pio(self, port: int, size: int) -> None:
        """Guest `out`s to ports [port, port+size) are queued in the coalesced ring (KVM_CAP_COALESCED_PIO)."""
        self._coalesced("KVM_REGISTER_COALESCED_MMIO", port, size, True)

    def unregister_coalesced_pio(self, port: int, size: int) -> None:
        """Guest `out`s to ports [port, port+size) exit to user space again."""
        self._coalesced("KVM_UNREGISTER_COALESCED_MMIO", port, size, True)

    def coalesced_entries(self) -> list[CoalescedAccess]:
        """Drain the coalesced MMIO/PIO ring (shared by the VM, mapped through a vCPU's mmap)."""
        self._check_open()
        vcpu = next(iter(self.vcpus), None)
        if vcpu is None:
            raise StateError("the coalesced ring is reached through a vCPU's mmap: create a vCPU first")
        return vcpu.coalesced_entries()

    # -- stats ------------------------------------------------------------------------------------

    @needs("KVM_GET_STATS_FD")
    @holding_fd
    def stats(self) -> dict[str, int | tuple[int, ...]]:
        """The VM's binary stats (KVM_GET_STATS_FD): name -> value."""
        if self._stats is None:
            self._stats = StatsFd.of(self._ioctl, self._ffi, self._binding.CONSTANTS)
        return self._stats.read()


__all__ = ["Vm", "GuestMemfd", "EventFd", "IrqchipRoute", "MsiRoute"]
