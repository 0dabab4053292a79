"""`Vm`: a virtual machine fd, with its memory slots, vCPUs, devices, interrupts, dirty logging and stats."""

from __future__ import annotations

import mmap as _mmap
import os
import sys
from typing import Any, Iterable, NamedTuple, Sequence

from . import _sys
from ._fd import KvmFd
from .device import Attributes, Device
from .errors import CapabilityError, ClosedError, KvmError
from .memory import PAGE_SIZE, GuestMemory
from .stats import StatsFd
from .vcpu import Vcpu


class IrqchipRoute(NamedTuple):
    """A GSI routed to pin `pin` of in-kernel irqchip `irqchip` (0 PIC master, 1 PIC slave, 2 IOAPIC)."""

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


class CoalescedAccess(NamedTuple):
    """One entry of the coalesced MMIO/PIO ring."""

    phys_addr: int
    len: int
    pio: bool
    data: bytes


class MsrFilterRange(NamedTuple):
    """A range of an MSR filter: `flags` KVM_MSR_FILTER_READ|WRITE, `bitmap` bit i set = MSR base+i allowed."""

    flags: int
    base: int
    nmsrs: int
    bitmap: bytes


class EventFd:
    """An eventfd (close-on-exec) as used by irqfd and ioeventfd."""

    def __init__(self, fd: int | None = None, *, nonblocking: bool = True) -> None:
        if fd is None:
            flags = _sys.EFD_CLOEXEC | (_sys.EFD_NONBLOCK if nonblocking else 0)
            fd = _sys.eventfd(0, flags)
        self._fd = fd

    def fileno(self) -> int:
        if self._fd < 0:
            raise ClosedError("eventfd is closed")
        return self._fd

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def notify(self, value: int = 1) -> None:
        """Add `value` to the counter (what a guest-visible irqfd reacts to)."""
        os.write(self.fileno(), value.to_bytes(8, sys.byteorder))

    def read(self) -> int:
        """Read and reset the counter (0 when nothing was signalled on a non-blocking eventfd)."""
        try:
            return int.from_bytes(os.read(self.fileno(), 8), sys.byteorder)
        except BlockingIOError:
            return 0

    def close(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)

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
        super().__init__(fd, vm._binding, vm)
        self.vm = vm
        self.size = size
        self.flags = flags
        self._owned_by_memory = False

    def _cap_owner(self) -> KvmFd:
        return self.vm._cap_owner()

    def mmap(self, length: int | None = None, offset: int = 0) -> _mmap.mmap:
        """Map it into the host (only with GUEST_MEMFD_FLAG_MMAP)."""
        return _mmap.mmap(self.fileno(), length or self.size, _mmap.MAP_SHARED, offset=offset)


class Vm(KvmFd, Attributes):
    """A VM (from `Kvm.create_vm()`). Closing it closes its vCPUs, devices and memory."""

    fd_kind = "vm"

    def __init__(self, system: Any, fd: int, vm_type: int = 0) -> None:
        super().__init__(fd, system._binding, system)
        self.system = system
        self.type = vm_type
        self._ffi = system._binding.ffi
        self._memory: dict[int, GuestMemory] = {}
        self._vcpus: dict[int, Any] = {}
        self._stats: Any = None
        self._dirty_ring_bytes = 0
        self._cap_target: KvmFd | None = None  # found on first use, by _cap_owner()

    def _cap_owner(self) -> KvmFd:
        """The VM fd when the host answers KVM_CHECK_EXTENSION on VM fds, else /dev/kvm."""
        target = self._cap_target
        if target is None:
            system = self.system
            target = self._cap_target = self if system._vm_fds_answer_caps() else system
        return target

    def check_extension(self, cap: Any) -> int:
        """KVM_CHECK_EXTENSION (issued on every call) on the VM fd when the host supports it, else on /dev/kvm."""
        return self._cap_owner()._ioctl("KVM_CHECK_EXTENSION", self._cap_value(cap))

    def enable_cap(self, cap: Any, *args: int, flags: int = 0) -> int:
        """KVM_ENABLE_CAP on the VM: `args` fill `args[0..3]`."""
        request = self._ffi.new("struct kvm_enable_cap *")
        request.cap = self._cap_value(cap)
        request.flags = flags
        for i, value in enumerate(args):
            request.args[i] = value
        return self._ioctl("KVM_ENABLE_CAP", request)

    def _release(self) -> None:
        if self._stats is not None:
            self._stats.close()
            self._stats = None
        # vCPUs and devices are children (closed by KvmFd.close before this); the memory goes after the fd.
        memory = list(self._memory.values())
        self._memory.clear()
        self._pending_unmap = memory

    def close(self) -> None:
        if self.closed:
            return
        super().close()
        for mem in getattr(self, "_pending_unmap", ()):
            mem._unmap()
        self._pending_unmap = []

    # -- memory -----------------------------------------------------------------------------------

    @property
    def memory(self) -> list[GuestMemory]:
        """The registered slots, by slot number."""
        return [self._memory[k] for k in sorted(self._memory)]

    def memory_at(self, guest_addr: int) -> GuestMemory:
        for mem in self._memory.values():
            if guest_addr in mem:
                return mem
        raise LookupError(f"no memory slot covers guest address {guest_addr:#x}")

    def _free_slot(self) -> int:
        slot = 0
        while slot in self._memory:
            slot += 1
        return slot

    def _set_region(self, slot: int, flags: int, guest_addr: int, size: int, host_addr: int,
                    guest_memfd: int = -1, guest_memfd_offset: int = 0) -> None:
        ffi = self._ffi
        if guest_memfd >= 0:
            region = ffi.new("struct kvm_userspace_memory_region2 *")
            region.guest_memfd = guest_memfd
            region.guest_memfd_offset = guest_memfd_offset
            name = "KVM_SET_USER_MEMORY_REGION2"
        else:
            region = ffi.new("struct kvm_userspace_memory_region *")
            name = "KVM_SET_USER_MEMORY_REGION"
        region.slot = slot
        region.flags = flags
        region.guest_phys_addr = guest_addr
        region.memory_size = size
        region.userspace_addr = host_addr
        self._ioctl(name, region)

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
        self._check_open()
        if slot is None:
            slot = self._free_slot()
        elif slot in self._memory:
            raise ValueError(f"slot {slot} is already in use by {self._memory[slot]!r}")
        if size <= 0:
            raise ValueError("memory size must be positive")
        fd, owns_fd = -1, False
        if memfd:
            fd, owns_fd = _sys.memfd_create(f"kvm-slot-{slot}"), True
            os.ftruncate(fd, size)
        elif file is not None:
            if isinstance(file, int):
                fd = file
            else:
                fd, owns_fd = os.open(file, os.O_RDWR | os.O_CLOEXEC), True
        try:
            if fd >= 0:
                mapping = _mmap.mmap(fd, size, _mmap.MAP_SHARED, offset=file_offset)
            else:
                mapping = _mmap.mmap(-1, size, _mmap.MAP_PRIVATE | _mmap.MAP_ANONYMOUS)
        except BaseException:
            if owns_fd:
                os.close(fd)
            raise
        gmem: GuestMemfd | None = None
        if guest_memfd:
            flags |= self._binding.CONSTANTS["KVM_MEM_GUEST_MEMFD"]
            if isinstance(guest_memfd, GuestMemfd):
                gmem = guest_memfd
            else:
                gmem = self.create_guest_memfd(size)
                gmem._owned_by_memory = True
        mem = GuestMemory(self, slot, guest_addr, size, flags, mapping, fd=fd, owns_fd=owns_fd,
                          guest_memfd=gmem, guest_memfd_offset=guest_memfd_offset)
        try:
            self._set_region(slot, flags, guest_addr, size, mem.host_addr,
                             gmem.fileno() if gmem is not None else -1, guest_memfd_offset)
        except BaseException:
            mem._unmap()
            raise
        self._memory[slot] = mem
        return mem

    def remove_memory(self, memory: GuestMemory | int) -> None:
        """Delete a slot (by `GuestMemory` or slot number) and unmap it."""
        slot = memory if isinstance(memory, int) else memory.slot
        mem = self._memory.get(slot)
        if mem is None:
            raise LookupError(f"slot {slot} is not registered")
        gmem = mem.guest_memfd
        self._set_region(slot, mem.flags & ~self._binding.CONSTANTS["KVM_MEM_GUEST_MEMFD"] if gmem is None else mem.flags,
                         mem.guest_addr, 0, mem.host_addr,
                         gmem.fileno() if gmem is not None and not gmem.closed else -1, mem.guest_memfd_offset)
        del self._memory[slot]
        mem._unmap()

    def set_memory_flags(self, memory: GuestMemory, flags: int) -> None:
        """Change a slot's flags in place (e.g. turn KVM_MEM_LOG_DIRTY_PAGES on or off)."""
        gmem = memory.guest_memfd
        self._set_region(memory.slot, flags, memory.guest_addr, memory.size, memory.host_addr,
                         gmem.fileno() if gmem is not None else -1, memory.guest_memfd_offset)
        memory.flags = flags

    def read(self, guest_addr: int, length: int) -> bytes:
        return self.memory_at(guest_addr).read(guest_addr, length)

    def write(self, guest_addr: int, data: bytes) -> None:
        self.memory_at(guest_addr).write(guest_addr, data)

    def create_guest_memfd(self, size: int, flags: int = 0) -> GuestMemfd:
        """KVM_CREATE_GUEST_MEMFD."""
        request = self._ffi.new("struct kvm_create_guest_memfd *")
        request.size = size
        request.flags = flags
        fd = self._ioctl("KVM_CREATE_GUEST_MEMFD", request)
        os.set_inheritable(fd, False)
        return GuestMemfd(self, fd, size, flags)

    # -- vCPUs and devices ------------------------------------------------------------------------

    def create_vcpu(self, id: int = 0) -> Vcpu:
        """KVM_CREATE_VCPU: a new `Vcpu` with APIC id `id`."""
        id = int(id)
        vcpu = self._vcpus[id] = Vcpu(self, self._ioctl("KVM_CREATE_VCPU", id), id)
        return vcpu

    @property
    def vcpus(self) -> list[Any]:
        return [v for _, v in sorted(self._vcpus.items()) if not v.closed]

    def create_device(self, type: int, *, test: bool = False) -> Device | None:
        """KVM_CREATE_DEVICE: a `Device` (with `test=True`, only check it could be created; returns None)."""
        request = self._ffi.new("struct kvm_create_device *")
        request.type = int(type)
        request.flags = self._binding.CONSTANTS["KVM_CREATE_DEVICE_TEST"] if test else 0
        self._ioctl("KVM_CREATE_DEVICE", request)
        if test:
            return None
        fd = int(request.fd)
        os.set_inheritable(fd, False)
        return Device(self, fd, int(type))

    # -- x86 platform set-up ----------------------------------------------------------------------

    def set_tss_addr(self, address: int) -> None:
        """KVM_SET_TSS_ADDR: three pages of guest-physical space KVM may use (x86, Intel)."""
        self._ioctl("KVM_SET_TSS_ADDR", address)

    def set_identity_map_addr(self, address: int) -> None:
        """KVM_SET_IDENTITY_MAP_ADDR: one page for the real-mode identity map (x86, Intel)."""
        value = self._ffi.new("__u64 *", address)
        self._ioctl("KVM_SET_IDENTITY_MAP_ADDR", value)

    def set_boot_cpu_id(self, id: int) -> None:
        self._ioctl("KVM_SET_BOOT_CPU_ID", id)

    # -- clock ------------------------------------------------------------------------------------

    def get_clock(self) -> Any:
        """KVM_GET_CLOCK: the `struct kvm_clock_data` (clock in ns, flags, realtime, host_tsc)."""
        data = self._ffi.new("struct kvm_clock_data *")
        self._ioctl("KVM_GET_CLOCK", data)
        return data

    def set_clock(self, clock_ns: int, flags: int = 0, realtime: int = 0) -> None:
        data = self._ffi.new("struct kvm_clock_data *")
        data.clock = clock_ns
        data.flags = flags
        data.realtime = realtime
        self._ioctl("KVM_SET_CLOCK", data)

    @property
    def clock(self) -> int:
        """kvmclock in nanoseconds (get and set)."""
        return int(self.get_clock().clock)

    @clock.setter
    def clock(self, value: int) -> None:
        self.set_clock(value)

    # -- interrupts -------------------------------------------------------------------------------

    def create_irqchip(self) -> None:
        """KVM_CREATE_IRQCHIP: in-kernel PIC, IOAPIC and local APICs (create vCPUs afterwards)."""
        self._ioctl("KVM_CREATE_IRQCHIP")

    def create_pit2(self, flags: int = 0) -> None:
        """KVM_CREATE_PIT2: the in-kernel i8254 (after create_irqchip)."""
        config = self._ffi.new("struct kvm_pit_config *")
        config.flags = flags
        self._ioctl("KVM_CREATE_PIT2", config)

    def get_irqchip(self, chip_id: int) -> Any:
        """KVM_GET_IRQCHIP: `struct kvm_irqchip` of chip 0 (PIC master), 1 (PIC slave) or 2 (IOAPIC)."""
        chip = self._ffi.new("struct kvm_irqchip *")
        chip.chip_id = chip_id
        self._ioctl("KVM_GET_IRQCHIP", chip)
        return chip

    def set_irqchip(self, chip: Any) -> None:
        self._ioctl("KVM_SET_IRQCHIP", chip)

    @property
    def pit2(self) -> Any:
        """The PIT's `struct kvm_pit_state2` (get and set)."""
        state = self._ffi.new("struct kvm_pit_state2 *")
        self._ioctl("KVM_GET_PIT2", state)
        return state

    @pit2.setter
    def pit2(self, state: Any) -> None:
        self._ioctl("KVM_SET_PIT2", state)

    def irq_line(self, irq: int, level: int) -> None:
        """KVM_IRQ_LINE: drive GSI `irq` to `level` (0/1)."""
        request = self._ffi.new("struct kvm_irq_level *")
        request.irq = irq
        request.level = level
        self._ioctl("KVM_IRQ_LINE", request)

    def signal_msi(self, address: int, data: int, flags: int = 0, devid: int = 0) -> int:
        """KVM_SIGNAL_MSI: >0 delivered, 0 blocked by the guest."""
        msi = self._ffi.new("struct kvm_msi *")
        msi.address_lo = address & 0xFFFFFFFF
        msi.address_hi = address >> 32
        msi.data = data
        msi.flags = flags
        msi.devid = devid
        return self._ioctl("KVM_SIGNAL_MSI", msi)

    def set_gsi_routing(self, routes: Sequence[IrqchipRoute | MsiRoute]) -> None:
        """KVM_SET_GSI_ROUTING: replace the whole GSI routing table."""
        ffi = self._ffi
        consts = self._binding.CONSTANTS
        table = ffi.new("struct kvm_irq_routing *", {"nr": len(routes), "entries": max(len(routes), 1)})
        table.nr = len(routes)
        for i, route in enumerate(routes):
            entry = table.entries[i]
            entry.gsi = route.gsi
            if isinstance(route, IrqchipRoute):
                entry.type = consts["KVM_IRQ_ROUTING_IRQCHIP"]
                entry.u.irqchip.irqchip = route.irqchip
                entry.u.irqchip.pin = route.pin
            else:
                entry.type = consts["KVM_IRQ_ROUTING_MSI"]
                entry.flags = route.flags
                entry.u.msi.address_lo = route.address & 0xFFFFFFFF
                entry.u.msi.address_hi = route.address >> 32
                entry.u.msi.data = route.data
                entry.u.msi.devid = route.devid
        self._ioctl("KVM_SET_GSI_ROUTING", table)

    def irqfd(self, gsi: int, eventfd: EventFd | None = None, *, resample: EventFd | None = None) -> EventFd:
        """KVM_IRQFD: signalling the returned eventfd raises GSI `gsi` in the guest."""
        eventfd = eventfd or EventFd()
        request = self._ffi.new("struct kvm_irqfd *")
        request.fd = eventfd.fileno()
        request.gsi = gsi
        if resample is not None:
            request.flags = self._binding.CONSTANTS["KVM_IRQFD_FLAG_RESAMPLE"]
            request.resamplefd = resample.fileno()
        self._ioctl("KVM_IRQFD", request)
        return eventfd

    def irqfd_remove(self, eventfd: EventFd, gsi: int) -> None:
        request = self._ffi.new("struct kvm_irqfd *")
        request.fd = eventfd.fileno()
        request.gsi = gsi
        request.flags = self._binding.CONSTANTS["KVM_IRQFD_FLAG_DEASSIGN"]
        self._ioctl("KVM_IRQFD", request)

    def _ioeventfd(self, address: int, length: int, datamatch: int | None, pio: bool, fd: int, deassign: bool) -> None:
        consts = self._binding.CONSTANTS
        request = self._ffi.new("struct kvm_ioeventfd *")
        request.addr = address
        request.len = length
        request.fd = fd
        flags = 0
        if datamatch is not None:
            flags |= consts["KVM_IOEVENTFD_FLAG_DATAMATCH"]
            request.datamatch = datamatch
        if pio:
            flags |= consts["KVM_IOEVENTFD_FLAG_PIO"]
        if deassign:
            flags |= consts["KVM_IOEVENTFD_FLAG_DEASSIGN"]
        request.flags = flags
        self._ioctl("KVM_IOEVENTFD", request)

    def ioeventfd(self, address: int, length: int = 4, *, datamatch: int | None = None, pio: bool = False,
                  eventfd: EventFd | None = None) -> EventFd:
        """KVM_IOEVENTFD: a guest write of `length` bytes to `address` (port if `pio`) signals the eventfd
        instead of exiting to user space."""
        eventfd = eventfd or EventFd()
        self._ioeventfd(address, length, datamatch, pio, eventfd.fileno(), False)
        return eventfd

    def ioeventfd_remove(self, eventfd: EventFd, address: int, length: int = 4, *, datamatch: int | None = None,
                         pio: bool = False) -> None:
        self._ioeventfd(address, length, datamatch, pio, eventfd.fileno(), True)

    # -- dirty logging ----------------------------------------------------------------------------

    def get_dirty_log(self, memory: GuestMemory) -> bytes:
        """KVM_GET_DIRTY_LOG: the slot's bitmap (bit i = page i written since the last call/clear)."""
        npages = (memory.size + PAGE_SIZE - 1) // PAGE_SIZE
        nbytes = ((npages + 63) // 64) * 8
        ffi = self._ffi
        bitmap = ffi.new("unsigned char[]", nbytes)
        request = ffi.new("struct kvm_dirty_log *")
        request.slot = memory.slot
        request.dirty_bitmap = bitmap
        self._ioctl("KVM_GET_DIRTY_LOG", request)
        return bytes(ffi.buffer(bitmap))

    def dirty_pages(self, memory: GuestMemory) -> list[int]:
        """The guest-physical addresses of the pages KVM_GET_DIRTY_LOG reports dirty."""
        return _bitmap_pages(self.get_dirty_log(memory), memory)

    def enable_manual_dirty_log_protect(self, initially_set: bool = False) -> None:
        """KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2: KVM_GET_DIRTY_LOG stops re-protecting; use clear_dirty_log."""
        consts = self._binding.CONSTANTS
        flags = consts["KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE"]
        if initially_set:
            flags |= consts["KVM_DIRTY_LOG_INITIALLY_SET"]
        self.enable_cap("KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2", flags)

    def clear_dirty_log(self, memory: GuestMemory, first_page: int = 0, num_pages: int | None = None,
                        bitmap: bytes | None = None) -> None:
        """KVM_CLEAR_DIRTY_LOG: clear (and re-protect) the pages set in `bitmap` (default: all) of the range."""
        npages = (memory.size + PAGE_SIZE - 1) // PAGE_SIZE
        if num_pages is None:
            num_pages = npages - first_page
        nbytes = ((num_pages + 63) // 64) * 8
        ffi = self._ffi
        buf = ffi.new("unsigned char[]", nbytes)
        if bitmap is None:
            for i in range(num_pages):
                buf[i // 8] |= 1 << (i % 8)
        else:
            ffi.memmove(buf, bitmap[:nbytes], min(nbytes, len(bitmap)))
        request = ffi.new("struct kvm_clear_dirty_log *")
        request.slot = memory.slot
        request.first_page = first_page
        request.num_pages = num_pages
        request.dirty_bitmap = buf
        self._ioctl("KVM_CLEAR_DIRTY_LOG", request)

    def enable_dirty_ring(self, size_bytes: int, *, acq_rel: bool = False) -> None:
        """Enable the per-vCPU dirty ring of `size_bytes` (before creating vCPUs)."""
        cap = "KVM_CAP_DIRTY_LOG_RING_ACQ_REL" if acq_rel else "KVM_CAP_DIRTY_LOG_RING"
        self.enable_cap(cap, size_bytes)
        self._dirty_ring_bytes = size_bytes

    def reset_dirty_rings(self) -> int:
        """KVM_RESET_DIRTY_RINGS: re-protect the harvested entries; returns how many were reset."""
        return self._ioctl("KVM_RESET_DIRTY_RINGS")

    # -- coalesced MMIO / PIO ---------------------------------------------------------------------

    def _coalesced(self, ioctl: str, address: int, size: int, pio: bool) -> None:
        zone = self._ffi.new("struct kvm_coalesced_mmio_zone *")
        zone.addr = address
        zone.size = size
        zone.pio = 1 if pio else 0
        if pio and self.check_extension("KVM_CAP_COALESCED_PIO") <= 0:
            raise CapabilityError(ioctl, self.fd_kind, "KVM_CAP_COALESCED_PIO", self._cap_owner().fd_kind)
        self._ioctl(ioctl, zone)

    def register_coalesced_mmio(self, address: int, size: int) -> None:
        """Guest writes into [address, address+size) are queued in the coalesced ring, not exited."""
        self._coalesced("KVM_REGISTER_COALESCED_MMIO", address, size, False)

    def unregister_coalesced_mmio(self, address: int, size: int) -> None:
        self._coalesced("KVM_UNREGISTER_COALESCED_MMIO", address, size, False)

    def register_coalesced_pio(self, port: int, size: int) -> None:
        self._coalesced("KVM_REGISTER_COALESCED_MMIO", port, size, True)

    def unregister_coalesced_pio(self, port: int, size: int) -> None:
        self._coalesced("KVM_UNREGISTER_COALESCED_MMIO", port, size, True)

    def coalesced_entries(self) -> list[CoalescedAccess]:
        """Drain the coalesced MMIO/PIO ring (shared by the VM, mapped through a vCPU's mmap)."""
        vcpu = next((v for v in self.vcpus), None)
        if vcpu is None:
            raise RuntimeError("the coalesced ring is reached through a vCPU's mmap: create a vCPU first")
        return vcpu._drain_coalesced()

    # -- MSRs -------------------------------------------------------------------------------------

    def set_user_space_msr(self, reasons: int) -> None:
        """KVM_CAP_X86_USER_SPACE_MSR: exit to user space on MSR accesses failing for `reasons`
        (KVM_MSR_EXIT_REASON_INVAL | UNKNOWN | FILTER)."""
        self.enable_cap("KVM_CAP_X86_USER_SPACE_MSR", reasons)

    def set_msr_filter(self, ranges: Iterable[MsrFilterRange], *, default_allow: bool = True) -> None:
        """KVM_X86_SET_MSR_FILTER: up to 16 ranges; an MSR outside all ranges follows `default_allow`."""
        ffi = self._ffi
        consts = self._binding.CONSTANTS
        request = ffi.new("struct kvm_msr_filter *")
        request.flags = consts["KVM_MSR_FILTER_DEFAULT_ALLOW"] if default_allow else consts["KVM_MSR_FILTER_DEFAULT_DENY"]
        keep = []
        for i, r in enumerate(ranges):
            bitmap = ffi.new("unsigned char[]", bytes(r.bitmap))
            keep.append(bitmap)
            entry = request.ranges[i]
            entry.flags = r.flags
            entry.base = r.base
            entry.nmsrs = r.nmsrs
            entry.bitmap = ffi.cast("__u8 *", bitmap)
        self._ioctl("KVM_X86_SET_MSR_FILTER", request)

    # -- stats ------------------------------------------------------------------------------------

    def stats(self) -> dict[str, int | tuple[int, ...]]:
        """The VM's binary stats (KVM_GET_STATS_FD): name -> value."""
        if self._stats is None:
            fd = self._ioctl("KVM_GET_STATS_FD")
            os.set_inheritable(fd, False)
            self._stats = StatsFd(fd, self._ffi, self._binding.CONSTANTS)
        return self._stats.read()


def _bitmap_pages(bitmap: bytes, memory: GuestMemory) -> list[int]:
    pages = []
    npages = (memory.size + PAGE_SIZE - 1) // PAGE_SIZE
    for byte_index, byte in enumerate(bitmap):
        if byte:
            for bit in range(8):
                page = byte_index * 8 + bit
                if byte & (1 << bit) and page < npages:
                    pages.append(memory.guest_addr + page * PAGE_SIZE)
    return pages


__all__ = ["Vm", "GuestMemfd", "EventFd", "IrqchipRoute", "MsiRoute", "CoalescedAccess", "MsrFilterRange", "KvmError"]
