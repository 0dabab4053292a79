"""What api.rst does not say cleanly about capabilities: the one reviewed table `codegen/caps.py` applies.

api.rst chapters 6 to 8 give most capabilities a section whose `:Parameters:` line, `#define` blocks and
prose codegen/caps.py reads. A row here replaces, for one capability and every bundled kernel:

- `check`: what KVM_CHECK_EXTENSION answers ("bool", "int" for counts and sizes, "flags" for a set of
  bits), where the text is silent (most counts are described in chapter 4) or says it loosely;
- `flags`: the header constants that name those bits (and the bits of a "flags" parameter);
- `params`: enable()'s keyword arguments, where `:Parameters:` is missing, wrong or reads badly;
- `enable_on`: where KVM_ENABLE_CAP takes it ("vm", "vcpu", "" for nowhere), where the chapter placing
  it is wrong in some bundled api.rst (several moved between chapters 7 and 8 over the versions);
- `arches`: in api.rst's notation, for capabilities that have no section.

Each row says why. Sources: the headers' comments and what KVM's kvm_vm_ioctl_check_extension /
kvm_vm_ioctl_enable_cap / kvm_vcpu_ioctl_enable_cap handle, read for the bundled kernels.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Flags:
    """The constants naming a set of bits: those starting with one of `prefixes` (and ending with
    `suffix`) whose value is one bit; `bit_index`: the constant is a bit number, the member is 1 << it.
    Members are named without the prefix."""

    prefixes: tuple[str, ...]
    suffix: str = ""
    bit_index: bool = False
    only: tuple[str, ...] = ()  # these constants and no others (a prefix other constants share)


@dataclasses.dataclass(frozen=True)
class Param:
    name: str
    kind: str  # "flags", "int", "bool", "fd"
    index: int = 0
    shift: int = 0
    width: int = 64
    at_most_check: bool = False


@dataclasses.dataclass(frozen=True)
class Row:
    reason: str
    check: str | None = None
    flags: Flags | None = None
    params: tuple[Param, ...] | None = None
    enable_on: str | None = None
    arches: str | None = None


_COUNT = "a count KVM documents under the ioctl it limits (chapter 4), not in a capability section"
_SIZE = "a size in bytes, documented in chapter 4 with the ioctl that uses it"
_X2APIC = Flags(("KVM_X2APIC_API_", "KVM_X2APIC_"))
_QUIRKS = Flags(("KVM_X86_QUIRK_",))
_HYPERV_VCPU = "enabled on vCPUs (kvm_vcpu_ioctl_enable_cap); api.rst before 7.2 lists it in chapter 8"
_DIRTY_RING = (Param("size", "int", at_most_check=True),)

TABLE: dict[str, Row] = {
    # KVM_CHECK_EXTENSION answers a count or a size
    "KVM_CAP_NR_VCPUS": Row(_COUNT + ": the recommended number of vCPUs", check="int"),
    "KVM_CAP_MAX_VCPUS": Row(_COUNT + ": the most vCPUs a VM may have", check="int"),
    "KVM_CAP_NR_MEMSLOTS": Row(_COUNT + ": memory slots per address space", check="int"),
    "KVM_CAP_MULTI_ADDRESS_SPACE": Row(_COUNT + ": address spaces (x86: 2 with SMM)", check="int"),
    "KVM_CAP_IRQ_ROUTING": Row(_COUNT + ": the most GSI routes", check="int"),
    "KVM_CAP_MCE": Row(_COUNT + ": machine-check banks (KVM_X86_SETUP_MCE)", check="int"),
    "KVM_CAP_COALESCED_MMIO": Row("the page offset of the coalesced ring in the vCPU mapping", check="int"),
    "KVM_CAP_XSAVE2": Row(_SIZE + ": struct kvm_xsave for KVM_GET_XSAVE2", check="int"),
    "KVM_CAP_NESTED_STATE": Row(_SIZE + ": the most KVM_GET_NESTED_STATE needs", check="int"),
    "KVM_CAP_S390_MEM_OP": Row(_SIZE + ": the largest KVM_S390_MEM_OP transfer", check="int"),
    "KVM_CAP_ARM_VM_IPA_SIZE": Row("the widest guest physical address, in bits (KVM_CREATE_VM)", check="int"),
    "KVM_CAP_ARM_SUPPORTED_BLOCK_SIZES": Row("a bitmap of block sizes, which the headers do not name", check="int"),
    "KVM_CAP_PPC_SMT": Row("the VM's threads per virtual core", check="int"),
    "KVM_CAP_GUEST_DEBUG_HW_BPS": Row(_COUNT + ": hardware breakpoints a guest debugger may set", check="int"),
    "KVM_CAP_GUEST_DEBUG_HW_WPS": Row(_COUNT + ": hardware watchpoints a guest debugger may set", check="int"),
    "KVM_CAP_VM_GPA_BITS": Row("the width of guest physical addresses, in bits", check="int"),
    "KVM_CAP_ARM_SUPPORTED_REG_MASK_RANGES": Row("a bitmap of writable ID-register ranges, which the headers "
                                                 "do not name as bits", check="int"),
    "KVM_CAP_PPC_SMT_POSSIBLE": Row("a bitmap of SMT modes, which the headers do not name", check="int"),
    "KVM_CAP_MAX_VCPU_ID": Row("the largest vCPU id; the enabled value may not exceed it", check="int",
                               params=(Param("max_id", "int", at_most_check=True),)),
    "KVM_CAP_DIRTY_LOG_RING": Row("the largest ring size in bytes; enable takes a size up to it", check="int",
                                  params=_DIRTY_RING, enable_on="vm"),
    "KVM_CAP_DIRTY_LOG_RING_ACQ_REL": Row("as KVM_CAP_DIRTY_LOG_RING", check="int", params=_DIRTY_RING,
                                          enable_on="vm"),
    "KVM_CAP_DIRTY_LOG_RING_WITH_BITMAP": Row("enabled on VMs after the ring; api.rst before 7.2 in chapter 8",
                                              enable_on="vm"),
    # KVM_CHECK_EXTENSION answers a set of named bits
    "KVM_CAP_X2APIC_API": Row("check answers the valid bits; 7.2 adds KVM_X2APIC_* names beside KVM_X2APIC_API_*",
                              check="flags", flags=_X2APIC, params=(Param("features", "flags", at_most_check=True),)),
    "KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2": Row(
        "args[0] is a set of the #defines the section lists, not a bool; check answers the valid ones",
        check="flags", flags=Flags(("KVM_DIRTY_LOG_",), only=("KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE",
                                                                "KVM_DIRTY_LOG_INITIALLY_SET")),
        params=(Param("flags", "flags", at_most_check=True),), enable_on="vm"),
    "KVM_CAP_X86_NOTIFY_VMEXIT": Row(
        "args[0] packs flags (bits 31:0) and the notify window (bits 63:32); check answers the valid flags",
        check="flags", params=(Param("flags", "flags", width=32, at_most_check=True),
                               Param("window", "int", shift=32, width=32))),
    "KVM_CAP_SYNC_REGS": Row("check answers the register sets kvm_run can carry; not taken by KVM_ENABLE_CAP "
                             "(chosen per run in kvm_run.kvm_valid_regs)",
                             check="flags", flags=Flags(("KVM_SYNC_X86_", "KVM_SYNC_")), enable_on=""),
    "KVM_CAP_SET_GUEST_DEBUG2": Row("check answers the KVM_GUESTDBG_* flags KVM_SET_GUEST_DEBUG accepts",
                                    check="flags", flags=Flags(("KVM_GUESTDBG_",))),
    "KVM_CAP_ADJUST_CLOCK": Row("check answers the KVM_CLOCK_* flags KVM_GET_CLOCK reports", check="flags",
                                flags=Flags(("KVM_CLOCK_",))),
    "KVM_CAP_XEN_HVM": Row("check answers the KVM_XEN_HVM_CONFIG_* features", check="flags",
                           flags=Flags(("KVM_XEN_HVM_CONFIG_",))),
    "KVM_CAP_MEMORY_ATTRIBUTES": Row("check answers the KVM_MEMORY_ATTRIBUTE_* bits", check="flags",
                                     flags=Flags(("KVM_MEMORY_ATTRIBUTE_",))),
    "KVM_CAP_GUEST_MEMFD_FLAGS": Row("check answers the flags KVM_CREATE_GUEST_MEMFD accepts", check="flags",
                                     flags=Flags(("GUEST_MEMFD_FLAG_",))),
    "KVM_CAP_VM_TYPES": Row("check answers a bit per VM type, the bit number being the KVM_X86_*_VM value",
                            check="flags", flags=Flags(("KVM_X86_",), suffix="_VM", bit_index=True)),
    "KVM_CAP_S390_MEM_OP_EXTENSION": Row("check answers KVM_S390_MEMOP_EXTENSION_CAP_* bits", check="flags",
                                         flags=Flags(("KVM_S390_MEMOP_EXTENSION_CAP_",))),
    "KVM_CAP_EXIT_HYPERCALL": Row("a bit per hypercall number (KVM_HC_*, in linux/kvm_para.h, which the binding "
                                  "does not read): a flag set without names", flags=Flags(()),
                                  params=(Param("hypercalls", "flags", at_most_check=True),), enable_on="vm"),
    "KVM_CAP_PMU_CAPABILITY": Row("the section names KVM_PMU_CAP_DISABLE only in prose; api.rst before 7.2 "
                                  "in chapter 8", flags=Flags(("KVM_PMU_CAP_",)), enable_on="vm"),
    "KVM_CAP_DISABLE_QUIRKS": Row("the first quirks interface: args[0] quirks to disable; check answers 1",
                                  flags=_QUIRKS, params=(Param("quirks", "flags"),), enable_on="vm"),
    "KVM_CAP_X86_USER_SPACE_MSR": Row("the KVM_MSR_EXIT_REASON_* bits; api.rst before 6.12 does not list them",
                                      flags=Flags(("KVM_MSR_EXIT_REASON_",))),
    # enable()'s arguments read badly, or are not in a :Parameters: line
    "KVM_CAP_SPLIT_IRQCHIP": Row("args[0] counts the routes kept for the user-space IOAPIC",
                                 params=(Param("routes", "int"),)),
    "KVM_CAP_HYPERV_SYNIC": Row(_HYPERV_VCPU, enable_on="vcpu"),
    "KVM_CAP_HYPERV_SYNIC2": Row(_HYPERV_VCPU + "; args[0] must be 0", enable_on="vcpu"),
    "KVM_CAP_HYPERV_DIRECT_TLBFLUSH": Row(_HYPERV_VCPU, enable_on="vcpu"),
    "KVM_CAP_HYPERV_ENFORCE_CPUID": Row(_HYPERV_VCPU + "; args[0] turns it on or off",
                                        params=(Param("enable", "bool"),), enable_on="vcpu"),
    "KVM_CAP_ENFORCE_PV_FEATURE_CPUID": Row(_HYPERV_VCPU + "; args[0] turns it on or off",
                                            params=(Param("enable", "bool"),), enable_on="vcpu"),
    "KVM_CAP_HYPERV_ENLIGHTENED_VMCS": Row("enabled on vCPUs; args[0] is where KVM writes the eVMCS version "
                                           "(a __u16); no section", params=(Param("address", "int"),),
                                           enable_on="vcpu", arches="x86"),
    "KVM_CAP_X86_TRIPLE_FAULT_EVENT": Row("enabled on VMs, args[0] turns it on or off; documented under "
                                          "KVM_GET_VCPU_EVENTS only", params=(Param("enable", "bool"),),
                                          enable_on="vm", arches="x86"),
    "KVM_CAP_VM_DISABLE_NX_HUGE_PAGES": Row("api.rst before 7.2 lists it in chapter 8", enable_on="vm"),
    "KVM_CAP_ARM_EAGER_SPLIT_CHUNK_SIZE": Row("check answers the chunk size in bytes; api.rst before 7.2 lists "
                                              "it in chapter 8", check="int", enable_on="vm"),
    "KVM_CAP_ARM_SYSTEM_SUSPEND": Row("api.rst before 7.2 lists it in chapter 8", enable_on="vm"),
    "KVM_CAP_ARM_NISV_TO_USER": Row("enabled on VMs; documented under KVM_EXIT_ARM_NISV only", enable_on="vm",
                                    arches="arm64"),
    "KVM_CAP_S390_CPU_TOPOLOGY": Row("enabled on VMs (kvm_vm_ioctl_enable_cap), listed in chapter 8",
                                     enable_on="vm"),
    # listed in chapter 7 of some bundled api.rst, but informational
    "KVM_CAP_MEMORY_FAULT_INFO": Row("KVM_ENABLE_CAP does not take it (6.12's api.rst has it in chapter 7)",
                                     enable_on=""),
    "KVM_CAP_X86_GUEST_MODE": Row("KVM_ENABLE_CAP does not take it (6.12's api.rst has it in chapter 7)",
                                  enable_on=""),
    "KVM_CAP_PPC_AIL_MODE_3": Row("KVM_ENABLE_CAP does not take it (chapter 7 before 7.2)", enable_on=""),
    "KVM_CAP_PPC_RPT_INVALIDATE": Row("KVM_ENABLE_CAP does not take it (chapter 7 before 7.2)", enable_on=""),
    "KVM_CAP_ARM_CACHEABLE_PFNMAP_SUPPORTED": Row("KVM_ENABLE_CAP does not take it, though listed in chapter 7",
                                                  enable_on=""),
}

# Arches of the capabilities without a section (and without a row above), by the prefix of their name.
ARCH_PREFIXES: dict[str, str] = {
    "KVM_CAP_PPC_": "ppc", "KVM_CAP_SPAPR_": "ppc", "KVM_CAP_S390_": "s390", "KVM_CAP_ARM_": "arm64",
    "KVM_CAP_MIPS_": "mips", "KVM_CAP_RISCV_": "riscv", "KVM_CAP_LOONGARCH_": "loongarch",
    "KVM_CAP_X86_": "x86", "KVM_CAP_HYPERV": "x86", "KVM_CAP_XEN_": "x86", "KVM_CAP_SGX_": "x86",
}
