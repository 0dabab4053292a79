"""x86 helpers: put a vCPU in real mode, flat 32-bit protected mode, or 64-bit long mode.

Each helper sets the segment caches directly through KVM_SET_SREGS (no descriptor-table walk is needed
to start running) and, when given guest memory, also writes a matching GDT so the guest can reload
segments. Long mode additionally builds identity-mapped page tables (2 MiB pages).
"""

from __future__ import annotations

import struct
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


# The set-up helpers issue KVM_GET/SET_REGS and KVM_GET/SET_SREGS themselves: the vCPU's `regs` and
# `sregs` properties (whose setters also take dicts and structs) would add Python layers to each call.


def _read(vcpu: Any, ioctl: str, ctype: str) -> Any:
    """A new `ctype` filled by `ioctl`: what `vcpu.regs` or `vcpu.sregs` returns."""
    state = vcpu._ffi.new(ctype)
    vcpu._ioctl(ioctl, state)
    return state


def gdt_entry(base: int, limit: int, access: int, flags: int) -> bytes:
    """An 8-byte GDT descriptor (access byte, flags nibble: G, D/B, L, AVL)."""
    value = (limit & 0xFFFF) | ((base & 0xFFFFFF) << 16) | ((access & 0xFF) << 40)
    value |= ((limit >> 16) & 0xF) << 48 | (flags & 0xF) << 52 | ((base >> 24) & 0xFF) << 56
    return struct.pack("<Q", value)


def setup_real_mode(vcpu: Any, entry: int, *, cs: int = 0, stack: int | None = None) -> None:
    """Real mode, CS = `cs` (base cs*16), IP = entry - base; DS/ES/SS = 0."""
    sregs = _read(vcpu, "KVM_GET_SREGS", "struct kvm_sregs *")
    base = cs << 4
    for seg in (sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss):
        seg.base = 0
        seg.selector = 0
    sregs.cs.base = base
    sregs.cs.selector = cs
    vcpu._ioctl("KVM_SET_SREGS", sregs)
    regs = _read(vcpu, "KVM_GET_REGS", "struct kvm_regs *")
    regs.rip = entry - base
    regs.rflags = RFLAGS_RESERVED
    if stack is not None:
        regs.rsp = stack
    vcpu._ioctl("KVM_SET_REGS", regs)


def setup_protected_mode(vcpu: Any, entry: int, *, stack: int = 0, memory: Any = None, gdt_addr: int = 0x500) -> None:
    """Flat 32-bit protected mode, ring 0, paging off: CS 0x08 (code, 4 GiB), the others 0x10 (data).

    With `memory` (a GuestMemory), a 3-entry GDT is written at `gdt_addr` and loaded.
    """
    sregs = _read(vcpu, "KVM_GET_SREGS", "struct kvm_sregs *")
    _segment(sregs.cs, base=0, limit=0xFFFFFFFF, selector=CODE_SELECTOR, type=0xB, db=1, g=1)
    for seg in (sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss):
        _segment(seg, base=0, limit=0xFFFFFFFF, selector=DATA_SELECTOR, type=0x3, db=1, g=1)
    if memory is not None:
        table = bytes(8) + gdt_entry(0, 0xFFFFF, 0x9B, 0xC) + gdt_entry(0, 0xFFFFF, 0x93, 0xC)
        memory.write(gdt_addr, table)
        sregs.gdt.base = gdt_addr
        sregs.gdt.limit = len(table) - 1
    sregs.cr0 = (sregs.cr0 | CR0_PE) & ~CR0_PG
    vcpu._ioctl("KVM_SET_SREGS", sregs)
    regs = _read(vcpu, "KVM_GET_REGS", "struct kvm_regs *")
    regs.rip = entry
    regs.rsp = stack
    regs.rflags = RFLAGS_RESERVED
    vcpu._ioctl("KVM_SET_REGS", regs)


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


def setup_long_mode(vcpu: Any, entry: int, *, memory: Any, page_table_addr: int = 0x10000, stack: int = 0,
                    identity_size: int = 1 << 30, gdt_addr: int = 0x500, set_cpuid: bool = True) -> None:
    """64-bit long mode, ring 0, with [0, identity_size) identity-mapped (page tables written into
    `memory` at `page_table_addr`, a GDT at `gdt_addr`).

    KVM only accepts EFER.LME when the vCPU's CPUID reports long mode, so unless `set_cpuid` is False
    the vCPU gets the host's supported CPUID first (if it has none yet).
    """
    if set_cpuid and not getattr(vcpu, "_cpuid_set", True):
        vcpu.set_cpuid(vcpu.vm.system.supported_cpuid())
    cr3 = build_identity_page_tables(memory, page_table_addr, identity_size)
    table = bytes(8) + gdt_entry(0, 0xFFFFF, 0x9B, 0xA) + gdt_entry(0, 0xFFFFF, 0x93, 0xC)
    memory.write(gdt_addr, table)
    sregs = _read(vcpu, "KVM_GET_SREGS", "struct kvm_sregs *")
    _segment(sregs.cs, base=0, limit=0xFFFFFFFF, selector=CODE_SELECTOR, type=0xB, l=1, g=1)
    for seg in (sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss):
        _segment(seg, base=0, limit=0xFFFFFFFF, selector=DATA_SELECTOR, type=0x3, db=1, g=1)
    sregs.gdt.base = gdt_addr
    sregs.gdt.limit = len(table) - 1
    sregs.cr3 = cr3
    sregs.cr4 = sregs.cr4 | CR4_PAE
    sregs.cr0 = sregs.cr0 | CR0_PE | CR0_PG | CR0_ET | CR0_NE
    sregs.efer = sregs.efer | EFER_LME | EFER_LMA
    vcpu._ioctl("KVM_SET_SREGS", sregs)
    regs = _read(vcpu, "KVM_GET_REGS", "struct kvm_regs *")
    regs.rip = entry
    regs.rsp = stack
    regs.rflags = RFLAGS_RESERVED
    vcpu._ioctl("KVM_SET_REGS", regs)
