"""Corrections to api.rst: the one reviewed table that `apidoc.annotate` applies over what it parsed.

A row replaces what api.rst says (or fails to say) about some ioctls, in api.rst's own notation so
the same parsers read it: `fds` like a `:Type:` field, `arches` like `:Architectures:`, `capability`
a KVM_CAP_* name or "basic". A field left as None keeps api.rst's value. The rows hold for every
bundled kernel; sources are the kernel headers' comments and where KVM's code handles each ioctl.
Keep the table small: fix api.rst's reading in `apidoc` when a rule would cover several rows.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Fix:
    ioctls: tuple[str, ...]
    reason: str
    fds: str | None = None
    capability: str | None = None
    arches: str | None = None


FIXES: tuple[Fix, ...] = (
    # api.rst has a section, but gets something wrong.
    Fix(("KVM_GET_DEBUGREGS", "KVM_SET_DEBUGREGS"), fds="vcpu",
        reason="documented as vm ioctls; x86 handles them in kvm_arch_vcpu_ioctl"),
    Fix(("KVM_MEMORY_ENCRYPT_REG_REGION", "KVM_MEMORY_ENCRYPT_UNREG_REGION"), fds="vm",
        reason="documented as system ioctls; x86 handles them in kvm_arch_vm_ioctl"),
    Fix(("KVM_GET_STATS_FD",), capability="KVM_CAP_BINARY_STATS_FD",
        reason="api.rst misspells the capability as KVM_CAP_STATS_BINARY_FD"),
    Fix(("KVM_PPC_CONFIGURE_V3_MMU", "KVM_PPC_GET_RMMU_INFO"), capability="KVM_CAP_PPC_MMU_RADIX",
        reason="api.rst before 6.12 names it KVM_CAP_PPC_RADIX_MMU"),
    Fix(("KVM_X86_SET_MSR_FILTER",), capability="KVM_CAP_X86_MSR_FILTER",
        reason="api.rst 5.10 gives the ioctl's own name as its capability"),
    Fix(("KVM_HAS_DEVICE_ATTR", "KVM_GET_DEVICE_ATTR", "KVM_SET_DEVICE_ATTR"), arches="all",
        reason="documented for x86, arm64 and s390, but generic on device fds (kvm_device_ioctl; riscv's AIA "
               "and loongarch's irqchips are set up through them); on vm and vcpu fds the per-fd capability "
               "(KVM_CAP_VM_ATTRIBUTES, KVM_CAP_VCPU_ATTRIBUTES) says whether the arch has them"),
    Fix(("KVM_IRQFD", "KVM_SET_GSI_ROUTING", "KVM_SIGNAL_MSI"), arches="all",
        reason="documented for x86, arm64 and s390 (SIGNAL_MSI: x86, arm64), but generic code "
               "(virt/kvm/eventfd.c, irqchip.c) that riscv and loongarch also build; their capabilities "
               "(KVM_CAP_IRQFD, KVM_CAP_IRQ_ROUTING, KVM_CAP_SIGNAL_MSI) say whether a host has them"),
    # No section in api.rst (in some or all bundled kernels).
    Fix(("KVM_SET_CPUID2", "KVM_GET_CPUID2"), fds="vcpu", capability="KVM_CAP_EXT_CPUID", arches="x86",
        reason="only mentioned under KVM_SET_CPUID and KVM_GET_SUPPORTED_CPUID"),
    Fix(("KVM_CREATE_PIT", "KVM_GET_PIT", "KVM_SET_PIT"), fds="vm", capability="KVM_CAP_PIT", arches="x86",
        reason="the first PIT interface, superseded by the documented KVM_CREATE_PIT2/KVM_GET_PIT2/KVM_SET_PIT2"),
    Fix(("KVM_IRQ_LINE_STATUS",), fds="vm", capability="KVM_CAP_IRQ_INJECT_STATUS", arches="x86, arm64, ppc, riscv",
        reason="KVM_IRQ_LINE plus a delivery status; arches whose asm/kvm.h define __KVM_HAVE_IRQ_LINE"),
    Fix(("KVM_SET_NR_MMU_PAGES", "KVM_GET_NR_MMU_PAGES"), fds="vm",
        capability="KVM_CAP_MMU_SHADOW_CACHE_CONTROL", arches="x86",
        reason="undocumented x86 shadow-MMU size control"),
    Fix(("KVM_SET_VAPIC_ADDR", "KVM_TPR_ACCESS_REPORTING"), fds="vcpu", capability="KVM_CAP_VAPIC", arches="x86",
        reason="the header says: Available with KVM_CAP_VAPIC"),
    Fix(("KVM_S390_ENABLE_SIE",), fds="system", capability="basic", arches="s390",
        reason="undocumented; s390 handles it in kvm_arch_dev_ioctl"),
    Fix(("KVM_S390_SET_INITIAL_PSW", "KVM_S390_STORE_STATUS"), fds="vcpu", capability="basic", arches="s390",
        reason="undocumented; s390 handles them in kvm_arch_vcpu_ioctl"),
    Fix(("KVM_RESET_DIRTY_RINGS",), fds="vm", capability="KVM_CAP_DIRTY_LOG_RING",
        reason="only mentioned under KVM_CAP_DIRTY_LOG_RING; generic code, so all arches that have the ring"),
    Fix(("KVM_ALLOCATE_RMA",), fds="vm", capability="KVM_CAP_PPC_RMA", arches="ppc",
        reason="api.rst 7.2 dropped its section; the header still defines it"),
    Fix(("KVM_ASSIGN_PCI_DEVICE", "KVM_DEASSIGN_PCI_DEVICE", "KVM_ASSIGN_DEV_IRQ", "KVM_DEASSIGN_DEV_IRQ",
         "KVM_ASSIGN_SET_MSIX_NR", "KVM_ASSIGN_SET_MSIX_ENTRY"), fds="vm", capability="KVM_CAP_ASSIGN_DEV_IRQ",
        arches="x86", reason="legacy device assignment, removed in 4.12; of its capabilities only this one "
                             "is left in the headers, and no kernel since reports it"),
    Fix(("KVM_ASSIGN_SET_INTX_MASK",), fds="vm", capability="KVM_CAP_PCI_2_3", arches="x86",
        reason="legacy device assignment, removed in 4.12; the header says: Available with KVM_CAP_PCI_2_3"),
)


def table_size() -> tuple[int, int]:
    """(rows, ioctls covered) of the corrections table."""
    return len(FIXES), sum(len(fix.ioctls) for fix in FIXES)


def fixes_by_ioctl() -> dict[str, Fix]:
    by_ioctl: dict[str, Fix] = {}
    for fix in FIXES:
        for name in fix.ioctls:
            if name in by_ioctl:
                raise ValueError(f"apidoc_fixes: {name} is corrected by two rows")
            by_ioctl[name] = fix
    return by_ioctl
