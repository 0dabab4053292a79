"""x86: the objects' x86-only methods, and helpers that put a vCPU in real, protected or long mode.

`X86System`, `X86Vm` and `X86Vcpu` are mixed into `Kvm`, `Vm` and `Vcpu` for x86_64 bindings (see
kvm/arches.py): CPUID, MSRs, the x86 register sets (sregs, FPU, LAPIC, XSAVE, XCRs, debug registers),
the in-kernel PIC/IOAPIC and PIT, the TSS and identity-map pages, kvmclock, MSR filtering, guest
debugging with DR7 and address translation.

The mode helpers set the segment caches directly through KVM_SET_SREGS (no descriptor-table walk is
needed to start running) and, when given guest memory, also write a matching GDT so the guest can
reload segments. Long mode additionally builds identity-mapped page tables (2 MiB pages).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping

from . import marshal
from ._fd import KvmFd, RecordProperty, needs
from ._namedtuple import NamedTuple

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

CR0_PE = 1 << 0
CR0_MP = 1 << 1
CR0_ET = 1 << 4
CR0_NE = 1 << 5
CR0_WP = 1 << 16
CR0_PG = 1 << 31
CR4_PAE = 1 << 5
CR4_OSFXSR = 1 << 9
EFER_LME = 1 << 8
EFER_LMA = 1 << 10
RFLAGS_RESERVED = 1 << 1  # bit 1 of RFLAGS always reads 1

PTE_PRESENT = 1 << 0
PTE_WRITE = 1 << 1
PTE_USER = 1 << 2
PTE_PS = 1 << 7  # 2 MiB page in a page directory entry

CODE_SELECTOR = 0x08
DATA_SELECTOR = 0x10


MAX_HW_BREAKPOINTS = 4  # dr0-dr3
DR7_FIXED = 0x400  # bit 10 of DR7 always reads 1


class CpuidEntry(NamedTuple):
    """One `struct kvm_cpuid_entry2`."""

    function: int
    index: int = 0  # type: ignore[assignment]  # the kernel's field name, shadowing tuple.index
    flags: int = 0
    eax: int = 0
    ebx: int = 0
    ecx: int = 0
    edx: int = 0


def cpuid_entries(cpuid2: Any) -> list[CpuidEntry]:
    """The entries of a `struct kvm_cpuid2 *` the kernel filled."""
    return [
        CpuidEntry(int(e.function), int(e.index), int(e.flags), int(e.eax), int(e.ebx), int(e.ecx), int(e.edx))
        for e in (cpuid2.entries[i] for i in range(int(cpuid2.nent)))
    ]


class Translation(NamedTuple):
    physical_address: int
    valid: bool
    writeable: bool
    usermode: bool


class MsrFilterRange(NamedTuple):
    """A range of an MSR filter: `flags` KVM_MSR_FILTER_READ|WRITE, `bitmap` bit i set = MSR base+i allowed."""

    flags: int
    base: int
    nmsrs: int
    bitmap: bytes


class X86System(KvmFd):
    """/dev/kvm on x86: the CPUID and MSRs KVM supports."""

    @needs("KVM_GET_SUPPORTED_CPUID")
    def supported_cpuid(self) -> list[CpuidEntry]:
        """KVM_GET_SUPPORTED_CPUID: what KVM and the host CPU can expose to a guest."""
        return cpuid_entries(marshal.grow(self._ioctl, self.ffi, "KVM_GET_SUPPORTED_CPUID", "struct kvm_cpuid2", None, 64))

    @needs("KVM_GET_EMULATED_CPUID")
    def emulated_cpuid(self) -> list[CpuidEntry]:
        """KVM_GET_EMULATED_CPUID: what KVM can emulate beyond the host CPU."""
        return cpuid_entries(marshal.grow(self._ioctl, self.ffi, "KVM_GET_EMULATED_CPUID", "struct kvm_cpuid2", None, 64))

    @needs("KVM_GET_MSR_INDEX_LIST")
    def msr_index_list(self) -> list[int]:
        """KVM_GET_MSR_INDEX_LIST: the MSRs KVM_GET_MSRS/KVM_SET_MSRS accept on a vCPU."""
        return marshal.index_list(self._ioctl, self.ffi, "KVM_GET_MSR_INDEX_LIST", "struct kvm_msr_list",
                                  "nmsrs", "indices", 256)

    @needs("KVM_GET_MSR_FEATURE_INDEX_LIST")
    def msr_feature_index_list(self) -> list[int]:
        """KVM_GET_MSR_FEATURE_INDEX_LIST: the feature MSRs readable on /dev/kvm."""
        return marshal.index_list(self._ioctl, self.ffi, "KVM_GET_MSR_FEATURE_INDEX_LIST", "struct kvm_msr_list",
                                  "nmsrs", "indices", 64)

    @needs("KVM_GET_MSRS")
    def get_msr_features(self, indices: Iterable[int]) -> dict[int, int]:
        """KVM_GET_MSRS on /dev/kvm: values of feature MSRs, as `Vcpu.get_msrs` (a prefix when one is refused)."""
        return marshal.msrs_get(self._ioctl, self.ffi, "KVM_GET_MSRS", indices)


class X86Vm(KvmFd):
    """A VM on x86: TSS and identity-map pages, the PIC/IOAPIC and PIT, kvmclock, MSR filtering."""

    @needs("KVM_SET_TSS_ADDR")
    def set_tss_addr(self, address: int) -> None:
        """KVM_SET_TSS_ADDR: three pages of guest-physical space KVM may use (Intel)."""
        marshal.by_value(self._ioctl, "KVM_SET_TSS_ADDR", address, "address")

    @needs("KVM_SET_IDENTITY_MAP_ADDR")
    def set_identity_map_addr(self, address: int) -> None:
        """KVM_SET_IDENTITY_MAP_ADDR: one page for the real-mode identity map (Intel)."""
        marshal.scalar_in(self._ioctl, self.ffi, "KVM_SET_IDENTITY_MAP_ADDR", "__u64", address, "address")

    @needs("KVM_SET_BOOT_CPU_ID")
    def set_boot_cpu_id(self, id: int) -> None:
        """KVM_SET_BOOT_CPU_ID: which vCPU is the bootstrap processor (before creating vCPUs)."""
        marshal.by_value(self._ioctl, "KVM_SET_BOOT_CPU_ID", id, "id")

    # -- kvmclock -------------------------------------------------------------------------------

    @needs("KVM_GET_CLOCK")
    def get_clock(self) -> Any:
        """KVM_GET_CLOCK: the `struct kvm_clock_data` (clock in ns, flags, realtime, host_tsc)."""
        return marshal.struct_out(self._ioctl, self.ffi, "KVM_GET_CLOCK", "struct kvm_clock_data")

    @needs("KVM_SET_CLOCK")
    def set_clock(self, clock_ns: int, flags: int = 0, realtime: int = 0) -> None:
        """KVM_SET_CLOCK: set kvmclock to `clock_ns` (with KVM_CLOCK_REALTIME in `flags`, as of `realtime`)."""
        marshal.struct_in(self._ioctl, self.ffi, "KVM_SET_CLOCK", "struct kvm_clock_data", None,
                          {"clock": marshal.integer(clock_ns, "clock_ns", 0, (1 << 64) - 1),
                           "flags": marshal.integer(flags, "flags", 0, 0xFFFFFFFF),
                           "realtime": marshal.integer(realtime, "realtime", 0, (1 << 64) - 1)})

    @property
    @needs("KVM_GET_CLOCK", "KVM_SET_CLOCK")
    def clock(self) -> int:
        """kvmclock in nanoseconds (get and set)."""
        return int(self.get_clock().clock)

    @clock.setter
    def clock(self, value: int) -> None:
        self.set_clock(value)

    # -- PIC, IOAPIC, PIT -------------------------------------------------------------------------

    @needs("KVM_CREATE_PIT2")
    def create_pit2(self, flags: int = 0) -> None:
        """KVM_CREATE_PIT2: the in-kernel i8254 (after create_irqchip)."""
        marshal.struct_in(self._ioctl, self.ffi, "KVM_CREATE_PIT2", "struct kvm_pit_config", None,
                          marshal.required({"flags": flags}))

    @needs("KVM_GET_IRQCHIP")
    def get_irqchip(self, chip_id: int) -> Any:
        """KVM_GET_IRQCHIP: `struct kvm_irqchip` of chip 0 (PIC master), 1 (PIC slave) or 2 (IOAPIC)."""
        return marshal.struct_inout(self._ioctl, self.ffi, "KVM_GET_IRQCHIP", "struct kvm_irqchip", None,
                                    marshal.required({"chip_id": chip_id}))

    @needs("KVM_SET_IRQCHIP")
    def set_irqchip(self, chip: Any) -> None:
        """KVM_SET_IRQCHIP: a `struct kvm_irqchip` (as get_irqchip returns it, changed)."""
        marshal.struct_in(self._ioctl, self.ffi, "KVM_SET_IRQCHIP", "struct kvm_irqchip",
                          marshal.record_pointer(self.ffi, "struct kvm_irqchip", chip, "chip"))

    pit2 = RecordProperty("KVM_GET_PIT2", "KVM_SET_PIT2", "struct kvm_pit_state2",
                          "The PIT's `struct kvm_pit_state2` (get and set).")

    # -- MSR exits and filtering ------------------------------------------------------------------

    def set_user_space_msr(self, reasons: int) -> None:
        """KVM_CAP_X86_USER_SPACE_MSR: exit to user space on MSR accesses failing for `reasons`
        (KVM_MSR_EXIT_REASON_INVAL | UNKNOWN | FILTER)."""
        self.enable_cap("KVM_CAP_X86_USER_SPACE_MSR", marshal.integer(reasons, "reasons", 0, (1 << 64) - 1))

    @needs("KVM_X86_SET_MSR_FILTER")
    def set_msr_filter(self, ranges: Iterable[MsrFilterRange], *, default_allow: bool = True) -> None:
        """KVM_X86_SET_MSR_FILTER: up to KVM_MSR_FILTER_MAX_RANGES ranges; an MSR outside all ranges follows
        `default_allow`. Each range's bitmap must hold at least `nmsrs` bits."""
        ffi = self.ffi
        consts = self._binding.CONSTANTS
        default_allow = marshal.boolean(default_allow, "default_allow")
        rows = marshal.items(ranges, "ranges", consts["KVM_MSR_FILTER_MAX_RANGES"])
        request = ffi.new("struct kvm_msr_filter *")
        request.flags = consts["KVM_MSR_FILTER_DEFAULT_ALLOW" if default_allow else "KVM_MSR_FILTER_DEFAULT_DENY"]
        bitmaps = []  # alive until the ioctl has read them
        for i, row in enumerate(rows):
            what = f"ranges[{i}]"
            if not isinstance(row, MsrFilterRange):
                raise TypeError(f"{what} must be an MsrFilterRange, not {type(row).__name__}")
            nmsrs = marshal.count(row.nmsrs, f"{what}.nmsrs", consts["KVM_MSR_FILTER_MAX_BITMAP_SIZE"] * 8)
            if not isinstance(row.bitmap, (bytes, bytearray)):
                raise TypeError(f"{what}.bitmap must be bytes, not {type(row.bitmap).__name__}")
            if len(row.bitmap) * 8 < nmsrs:
                raise ValueError(f"{what}.bitmap has {len(row.bitmap)} bytes; {nmsrs} MSRs need {(nmsrs + 7) // 8}")
            bitmap = ffi.new("__u8[]", bytes(row.bitmap))
            bitmaps.append(bitmap)
            entry = ffi.addressof(request.ranges[i])
            marshal.assign(ffi, entry, "flags", row.flags, what)
            marshal.assign(ffi, entry, "base", row.base, what)
            entry.nmsrs = nmsrs
            entry.bitmap = bitmap
        marshal.struct_in(self._ioctl, ffi, "KVM_X86_SET_MSR_FILTER", "struct kvm_msr_filter", request)


class X86Vcpu(KvmFd):
    """A vCPU on x86: the x86 register sets, MSRs, CPUID, guest debugging with DR7, translation, NMI,
    and the mode set-up helpers."""

    vm: Any

    sregs = RecordProperty("KVM_GET_SREGS", "KVM_SET_SREGS", "struct kvm_sregs",
                           "Special registers: segments, control registers, EFER, APIC base (`struct kvm_sregs`).")
    sregs2 = RecordProperty("KVM_GET_SREGS2", "KVM_SET_SREGS2", "struct kvm_sregs2",
                            "`struct kvm_sregs2` (KVM_CAP_SREGS2): sregs plus the PDPTRs.")
    lapic = RecordProperty("KVM_GET_LAPIC", "KVM_SET_LAPIC", "struct kvm_lapic_state",
                           "Local APIC registers (`struct kvm_lapic_state`, needs an in-kernel irqchip).")
    xcrs = RecordProperty("KVM_GET_XCRS", "KVM_SET_XCRS", "struct kvm_xcrs",
                          "Extended control registers (`struct kvm_xcrs`).")
    debugregs = RecordProperty("KVM_GET_DEBUGREGS", "KVM_SET_DEBUGREGS", "struct kvm_debugregs",
                               "Debug registers dr0-3, dr6, dr7 (`struct kvm_debugregs`).")

    @property
    @needs("KVM_GET_XSAVE", "KVM_SET_XSAVE")
    def xsave(self) -> Any:
        """`struct kvm_xsave` (KVM_GET_XSAVE2 of the size KVM_CAP_XSAVE2 reports, else KVM_GET_XSAVE).
        Assign a `struct kvm_xsave` cdata (as read) or its bytes."""
        ffi = self.ffi
        size = self.vm.check_extension("KVM_CAP_XSAVE2")
        if size > ffi.sizeof("struct kvm_xsave"):
            return marshal.xsave2(self._ioctl, ffi, "KVM_GET_XSAVE2", size)
        return marshal.struct_out(self._ioctl, ffi, "KVM_GET_XSAVE", "struct kvm_xsave")

    @xsave.setter
    def xsave(self, value: Any) -> None:
        marshal.xsave_set(self._ioctl, self.ffi, "KVM_SET_XSAVE", value,
                          max(self.vm.check_extension("KVM_CAP_XSAVE2"), self.ffi.sizeof("struct kvm_xsave")))

    # -- MSRs ---------------------------------------------------------------------------------------

    @needs("KVM_GET_MSRS")
    def get_msrs(self, indices: Iterable[int]) -> dict[int, int]:
        """KVM_GET_MSRS: {index: value}. The kernel stops at the first MSR it cannot read, so the result
        holds a prefix of `indices`; `len(result) < len(indices)` says the next one was refused."""
        return marshal.msrs_get(self._ioctl, self.ffi, "KVM_GET_MSRS", indices)

    @needs("KVM_SET_MSRS")
    def set_msrs(self, msrs: Mapping[int, int]) -> int:
        """KVM_SET_MSRS: writes {index: value} in order and returns how many were written; the kernel stops
        at the first it refuses, and the ones before it stay written."""
        return marshal.msrs_set(self._ioctl, self.ffi, "KVM_SET_MSRS", msrs)

    @property
    @needs("KVM_GET_MSRS")
    def msrs(self) -> dict[int, int]:
        """Every MSR of KVM_GET_MSR_INDEX_LIST this vCPU lets read (assign a dict: set_msrs, all or ValueError)."""
        out: dict[int, int] = {}
        for index in self.vm.system.msr_index_list():
            out.update(self.get_msrs([index]))
        return out

    @msrs.setter
    def msrs(self, values: Mapping[int, int]) -> None:
        written = self.set_msrs(values)
        if written < len(values):
            refused = list(values)[written]
            raise ValueError(f"KVM_SET_MSRS wrote {written} of {len(values)} MSRs: MSR {refused:#x} was refused "
                             "(the ones before it are written)")

    # -- CPUID --------------------------------------------------------------------------------------

    @needs("KVM_GET_CPUID2")
    def get_cpuid(self, max_entries: int | None = None) -> list[CpuidEntry]:
        """KVM_GET_CPUID2 with room for `max_entries` (KvmError E2BIG if too few); None grows as needed."""
        return cpuid_entries(marshal.grow(self._ioctl, self.ffi, "KVM_GET_CPUID2", "struct kvm_cpuid2", max_entries, 64))

    @needs("KVM_SET_CPUID2")
    def set_cpuid(self, entries: Iterable[CpuidEntry | tuple[int, ...]]) -> None:
        """KVM_SET_CPUID2: `entries` are CpuidEntry tuples (or tuples in its order)."""
        if isinstance(entries, (str, bytes)) or not isinstance(entries, Iterable):
            raise TypeError(f"entries must be an iterable of CpuidEntry, not {type(entries).__name__}")
        rows = []
        for i, entry in enumerate(marshal.items(entries, "entries")):
            if not isinstance(entry, tuple) or not 1 <= len(entry) <= len(CpuidEntry._fields):
                raise TypeError(f"entries[{i}] must be a CpuidEntry (or a tuple in its order), not {entry!r}")
            rows.append(CpuidEntry(*entry)._asdict())
        marshal.flex_set(self._ioctl, self.ffi, "KVM_SET_CPUID2", "struct kvm_cpuid2", "nent", "entries", rows)
        self.cpuid_set = True

    cpuid_set = False  # whether set_cpuid was called (long mode needs a CPUID that reports it)
    cpuid = property(get_cpuid, set_cpuid, doc="The vCPU's CPUID table (list of CpuidEntry).")

    # -- debugging, translation, NMI ----------------------------------------------------------------

    @needs("KVM_SET_GUEST_DEBUG")
    def set_guest_debug(self, enable: bool = True, *, single_step: bool = False,
                        hw_breakpoints: Iterable[int] = (), sw_breakpoints: bool = False,
                        flags: int = 0) -> None:
        """KVM_SET_GUEST_DEBUG: single-step and/or up to 4 hardware execution breakpoints (dr0-3, DR7
        local enables). Exits come back as `DebugExit`. `enable=False` turns guest debugging off."""
        consts = self._binding.CONSTANTS
        control = marshal.integer(flags, "flags", 0, 0xFFFFFFFF)
        enable = marshal.boolean(enable, "enable")
        single_step = marshal.boolean(single_step, "single_step")
        sw_breakpoints = marshal.boolean(sw_breakpoints, "sw_breakpoints")
        debugreg = [0] * 8
        if enable:
            control |= consts["KVM_GUESTDBG_ENABLE"]
            if single_step:
                control |= consts["KVM_GUESTDBG_SINGLESTEP"]
            if sw_breakpoints:
                control |= consts["KVM_GUESTDBG_USE_SW_BP"]
            addresses = marshal.items(hw_breakpoints, "hw_breakpoints", MAX_HW_BREAKPOINTS + 1)
            if len(addresses) > MAX_HW_BREAKPOINTS:
                raise ValueError(f"hw_breakpoints: x86 has {MAX_HW_BREAKPOINTS} hardware breakpoints, not {len(addresses)}")
            if addresses:
                control |= consts["KVM_GUESTDBG_USE_HW_BP"]
                dr7 = DR7_FIXED
                for i, address in enumerate(addresses):
                    debugreg[i] = marshal.integer(address, f"hw_breakpoints[{i}]", 0, (1 << 64) - 1)
                    dr7 |= 1 << (2 * i)  # Li: local enable; R/W=00 (execute), LEN=00
                debugreg[7] = dr7
        marshal.struct_in(self._ioctl, self.ffi, "KVM_SET_GUEST_DEBUG", "struct kvm_guest_debug", None,
                          {"control": control, "arch": {"debugreg": debugreg}})

    @needs("KVM_TRANSLATE")
    def translate(self, gva: int) -> Translation:
        """KVM_TRANSLATE: the guest-physical address of virtual address `gva` in the current mode."""
        gva = marshal.integer(gva, "gva", 0, (1 << 64) - 1)
        result = marshal.struct_inout(self._ioctl, self.ffi, "KVM_TRANSLATE", "struct kvm_translation", None,
                                      {"linear_address": gva})
        return Translation(int(result.physical_address), bool(result.valid), bool(result.writeable),
                           bool(result.usermode))

    @needs("KVM_NMI")
    def nmi(self) -> None:
        """KVM_NMI: queue an NMI (without an in-kernel LAPIC)."""
        self._ioctl("KVM_NMI")

    @needs("KVM_SMI")
    def smi(self) -> None:
        """KVM_SMI: queue an SMI."""
        self._ioctl("KVM_SMI")

    # -- mode set-up --------------------------------------------------------------------------------

    def _get_sregs(self) -> Any:
        return marshal.struct_out(self._ioctl, self.ffi, "KVM_GET_SREGS", "struct kvm_sregs")

    def _own_memory(self, memory: Any, what: str = "memory") -> Any:
        """`memory` when it is a slot of this vCPU's VM (the helpers write page tables and GDTs into it)."""
        slots: list[Any] = self.vm.memory
        if not any(memory is slot for slot in slots):
            raise ValueError(f"{what} must be a GuestMemory of this vCPU's VM, not {memory!r}")
        return memory

    def _start(self, sregs: Any, entry: int, stack: int | None) -> None:
        """Load `sregs` (a `struct kvm_sregs *` of _get_sregs), then the general registers with rip `entry`
        (checked by the caller) and rsp `stack`, and a clean RFLAGS. (The records are the binding's own, made
        here: issued as they are, on the way to every VM's first exit.)"""
        if stack is not None:  # (checked before anything is changed)
            stack = marshal.integer(stack, "stack", 0, (1 << 64) - 1)
        self._ioctl("KVM_SET_SREGS", sregs)
        regs = marshal.struct_out(self._ioctl, self.ffi, "KVM_GET_REGS", "struct kvm_regs")
        regs.rip = entry
        regs.rflags = RFLAGS_RESERVED
        if stack is not None:
            regs.rsp = stack
        self._ioctl("KVM_SET_REGS", regs)

    def setup_real_mode(self, entry: int, *, cs: int = 0, stack: int | None = None) -> None:
        """Real mode, CS = `cs` (base cs*16), IP = entry - base; DS/ES/SS = 0."""
        entry = marshal.integer(entry, "entry", 0, 0xFFFFF)
        sregs = self._get_sregs()
        base = marshal.integer(cs, "cs", 0, 0xFFFF) << 4
        for seg in (sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss):
            seg.base = 0
            seg.selector = 0
        sregs.cs.base = base
        sregs.cs.selector = cs
        if not base <= entry < base + 0x10000:
            raise ValueError(f"entry {entry:#x} is outside the 64 KiB real-mode segment at {base:#x}")
        self._start(sregs, entry - base, stack)

    def setup_protected_mode(self, entry: int, *, stack: int = 0, memory: Any = None, gdt_addr: int = 0x500) -> None:
        """Flat 32-bit protected mode, ring 0, paging off: CS 0x08 (code, 4 GiB), the others 0x10 (data).

        With `memory` (a GuestMemory), a 3-entry GDT is written at `gdt_addr` and loaded.
        """
        sregs = self._get_sregs()
        _segment(sregs.cs, base=0, limit=0xFFFFFFFF, selector=CODE_SELECTOR, type=0xB, db=1, g=1)
        for seg in (sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss):
            _segment(seg, base=0, limit=0xFFFFFFFF, selector=DATA_SELECTOR, type=0x3, db=1, g=1)
        entry = marshal.integer(entry, "entry", 0, 0xFFFFFFFF)
        if memory is not None:
            self._own_memory(memory)
            table = bytes(8) + gdt_entry(0, 0xFFFFF, 0x9B, 0xC) + gdt_entry(0, 0xFFFFF, 0x93, 0xC)
            memory.write(gdt_addr, table)
            sregs.gdt.base = gdt_addr
            sregs.gdt.limit = len(table) - 1
        sregs.cr0 = (sregs.cr0 | CR0_PE) & ~CR0_PG
        self._start(sregs, entry, stack)

    def setup_long_mode(self, entry: int, *, memory: Any, page_table_addr: int = 0x10000, stack: int = 0,
                        identity_size: int = 1 << 30, gdt_addr: int = 0x500, set_cpuid: bool = True) -> None:
        """64-bit long mode, ring 0, with [0, identity_size) identity-mapped (page tables written into
        `memory` at `page_table_addr`, a GDT at `gdt_addr`).

        KVM only accepts EFER.LME when the vCPU's CPUID reports long mode, so unless `set_cpuid` is False
        the vCPU gets the host's supported CPUID first (if it has none yet).
        """
        self._own_memory(memory)
        entry = marshal.integer(entry, "entry", 0, (1 << 64) - 1)
        identity_size = marshal.integer(identity_size, "identity_size", 1, 512 << 30)
        page_table_addr = marshal.integer(page_table_addr, "page_table_addr", 0, (1 << 52) - 1)
        if page_table_addr % 0x1000:
            raise ValueError(f"page_table_addr must be 4 KiB aligned (CR3 points at a page), not {page_table_addr:#x}")
        gdt_addr = marshal.integer(gdt_addr, "gdt_addr", 0, (1 << 64) - 1)
        if marshal.boolean(set_cpuid, "set_cpuid") and not self.cpuid_set:
            self.set_cpuid(self.vm.system.supported_cpuid())
        cr3 = build_identity_page_tables(memory, page_table_addr, identity_size)
        table = bytes(8) + gdt_entry(0, 0xFFFFF, 0x9B, 0xA) + gdt_entry(0, 0xFFFFF, 0x93, 0xC)
        memory.write(gdt_addr, table)
        sregs = self._get_sregs()
        _segment(sregs.cs, base=0, limit=0xFFFFFFFF, selector=CODE_SELECTOR, type=0xB, l=1, g=1)
        for seg in (sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss):
            _segment(seg, base=0, limit=0xFFFFFFFF, selector=DATA_SELECTOR, type=0x3, db=1, g=1)
        sregs.gdt.base = gdt_addr
        sregs.gdt.limit = len(table) - 1
        sregs.cr3 = cr3
        sregs.cr4 = sregs.cr4 | CR4_PAE
        sregs.cr0 = sregs.cr0 | CR0_PE | CR0_PG | CR0_ET | CR0_NE
        sregs.efer = sregs.efer | EFER_LME | EFER_LMA
        self._start(sregs, entry, stack)


MIXINS: dict[str, type] = {"system": X86System, "vm": X86Vm, "vcpu": X86Vcpu}


def _x86_vcpu(vcpu: Any) -> X86Vcpu:
    if not isinstance(vcpu, X86Vcpu):
        raise TypeError(f"an x86 vCPU is needed, not {vcpu!r}")
    return vcpu


def setup_real_mode(vcpu: Any, entry: int, *, cs: int = 0, stack: int | None = None) -> None:
    """`vcpu.setup_real_mode(...)`: real mode, CS = `cs` (base cs*16), IP = entry - base."""
    _x86_vcpu(vcpu).setup_real_mode(entry, cs=cs, stack=stack)


def setup_protected_mode(vcpu: Any, entry: int, *, stack: int = 0, memory: Any = None, gdt_addr: int = 0x500) -> None:
    """`vcpu.setup_protected_mode(...)`: flat 32-bit protected mode, ring 0, paging off."""
    _x86_vcpu(vcpu).setup_protected_mode(entry, stack=stack, memory=memory, gdt_addr=gdt_addr)


def setup_long_mode(vcpu: Any, entry: int, *, memory: Any, page_table_addr: int = 0x10000, stack: int = 0,
                    identity_size: int = 1 << 30, gdt_addr: int = 0x500, set_cpuid: bool = True) -> None:
    """`vcpu.setup_long_mode(...)`: 64-bit long mode, ring 0, [0, identity_size) identity-mapped."""
    _x86_vcpu(vcpu).setup_long_mode(entry, memory=memory, page_table_addr=page_table_addr, stack=stack,
                                    identity_size=identity_size, gdt_addr=gdt_addr, set_cpuid=set_cpuid)


def _segment(seg: Any, *, base: int, limit: int, selector: int, type: int, s: int = 1, dpl: int = 0,
             db: int = 0, l: int = 0, g: int = 0) -> None:
    seg.base = base
    seg.limit = limit
    seg.selector = selector
    seg.type = type
    seg.present = 1
    seg.dpl = dpl
    seg.db = db
    seg.s = s
    seg.l = l
    seg.g = g
    seg.avl = 0
    seg.unusable = 0


def gdt_entry(base: int, limit: int, access: int, flags: int) -> bytes:
    """An 8-byte GDT descriptor (access byte, flags nibble: G, D/B, L, AVL)."""
    value = (limit & 0xFFFF) | ((base & 0xFFFFFF) << 16) | ((access & 0xFF) << 40)
    value |= ((limit >> 16) & 0xF) << 48 | (flags & 0xF) << 52 | ((base >> 24) & 0xFF) << 56
    return struct.pack("<Q", value)


def build_identity_page_tables(memory: Any, page_table_addr: int, size: int = 1 << 30) -> int:
    """Write PML4, PDPT and page directories mapping [0, size) to itself with 2 MiB pages
    (size up to 512 GiB; one page directory per GiB) at `page_table_addr`; returns the CR3 value."""
    gib = max(1, (size + (1 << 30) - 1) >> 30)
    if gib > 512:
        raise ValueError("identity maps up to 512 GiB")
    pml4 = page_table_addr
    pdpt = pml4 + 0x1000
    pd = pdpt + 0x1000
    flags = PTE_PRESENT | PTE_WRITE
    memory.write(pml4, struct.pack("<Q", pdpt | flags) + bytes(0x1000 - 8))
    memory.write(pdpt, b"".join(struct.pack("<Q", (pd + i * 0x1000) | flags) for i in range(gib)).ljust(0x1000, b"\0"))
    for i in range(gib):
        entries = b"".join(struct.pack("<Q", (((i << 30) + (j << 21)) | flags | PTE_PS)) for j in range(512))
        memory.write(pd + i * 0x1000, entries)
    return pml4


def page_table_bytes(size: int = 1 << 30) -> int:
    """Guest memory build_identity_page_tables needs for `size` bytes mapped."""
    return 0x2000 + 0x1000 * max(1, (size + (1 << 30) - 1) >> 30)


