"""arm64: the objects' arm64-only methods, and the ids of arm64 registers.

`Arm64Vm` and `Arm64Vcpu` are mixed into `Vm` and `Vcpu` for arm64 bindings (see kvm/arches.py): vCPU
init with the preferred target and named features, SVE finalization, the PMU and vGICv3 set-up, and the
core registers by name. Every other register goes through `vcpu.get_one_reg(id)` / `set_one_reg(id, v)`
with an id from the functions here, which take the binding (`vcpu.binding`) and compute the id from its
constants and its `struct kvm_regs` layout, as the kernel's KVM_REG_ARM_CORE_REG and ARM64_SYS_REG do:

    vcpu.set_one_reg(kvm.arm64.x(vcpu.binding, 0), 42)
    mpidr = vcpu.get_one_reg(kvm.arm64.sys_reg_id(vcpu.binding, 3, 0, 0, 0, 5))
"""

from __future__ import annotations

from collections.abc import Iterable
from types import ModuleType

from . import marshal
from ._fd import KvmFd, needs

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

# init()'s named features -> the KVM_ARM_VCPU_* feature bits each sets
NAMED_FEATURES = {
    "psci_0_2": ("KVM_ARM_VCPU_PSCI_0_2",),
    "pmu": ("KVM_ARM_VCPU_PMU_V3",),
    "sve": ("KVM_ARM_VCPU_SVE",),
    "ptrauth": ("KVM_ARM_VCPU_PTRAUTH_ADDRESS", "KVM_ARM_VCPU_PTRAUTH_GENERIC"),
}
SYS_REG_FIELDS = ("op0", "op1", "crn", "crm", "op2")

def core_reg_id(binding: ModuleType, name: str) -> int:
    """The id of core register `name`, a member of `struct kvm_regs` ("regs.pc", "regs.regs[3]", "sp_el1",
    "spsr[0]", "fp_regs.vregs[31]", "fp_regs.fpsr"; "pc", "sp", "pstate", "regs[3]": the members of
    `struct user_pt_regs` by their own name). Its size is the member's (64 bits, 128 for a V register,
    32 for FPSR and FPCR)."""
    ffi = binding.ffi
    head = name.split("[")[0] if isinstance(name, str) and "." not in name else ""
    if head in dict(ffi.typeof("struct user_pt_regs").fields):
        name = "regs." + name
    offset, size = marshal.member_layout(ffi, "struct kvm_regs", name)
    c = binding.CONSTANTS
    return int(c["KVM_REG_ARM64"] | marshal.reg_size_bits(binding.CONSTANTS, size) | c["KVM_REG_ARM_CORE"]
               | offset // ffi.sizeof("__u32"))


def x(binding: ModuleType, n: int) -> int:
    """The id of general-purpose register Xn (`regs.regs[n]`)."""
    last = dict(binding.ffi.typeof("struct user_pt_regs").fields)["regs"].type.length - 1
    return core_reg_id(binding, f"regs.regs[{marshal.integer(n, 'n', 0, last)}]")


def vreg(binding: ModuleType, n: int) -> int:
    """The id of FP/SIMD register Vn (`fp_regs.vregs[n]`, 128 bits)."""
    last = dict(binding.ffi.typeof("struct user_fpsimd_state").fields)["vregs"].type.length - 1
    return core_reg_id(binding, f"fp_regs.vregs[{marshal.integer(n, 'n', 0, last)}]")


def sys_reg_id(binding: ModuleType, op0: int, op1: int, crn: int, crm: int, op2: int) -> int:
    """The id of the 64-bit system register of encoding op0, op1, CRn, CRm, op2 (ARM64_SYS_REG)."""
    c = binding.CONSTANTS
    reg_id = c["KVM_REG_ARM64"] | c["KVM_REG_SIZE_U64"] | c["KVM_REG_ARM64_SYSREG"]
    for field, value in zip(SYS_REG_FIELDS, (op0, op1, crn, crm, op2)):
        shift, mask = c[f"KVM_REG_ARM64_SYSREG_{field.upper()}_SHIFT"], c[f"KVM_REG_ARM64_SYSREG_{field.upper()}_MASK"]
        reg_id |= marshal.integer(value, field, 0, mask >> shift) << shift
    return reg_id  # type: ignore[no-any-return]


def feature_bits(binding: ModuleType, features: Iterable[int] = (), *, psci_0_2: bool = True, pmu: bool = False,
                 sve: bool = False, ptrauth: bool = False) -> list[int]:
    """The sorted KVM_ARM_VCPU_* bit numbers of `features` plus those of the named features that are True."""
    if isinstance(features, (str, bytes)) or not isinstance(features, Iterable):
        raise TypeError(f"features must be an iterable of feature bit numbers, not {type(features).__name__}")
    ffi = binding.ffi
    last = 8 * ffi.sizeof(dict(ffi.typeof("struct kvm_vcpu_init").fields)["features"].type) - 1
    bits = {marshal.integer(bit, f"features[{i}]", 0, last) for i, bit in enumerate(features)}
    for name, wanted in (("psci_0_2", psci_0_2), ("pmu", pmu), ("sve", sve), ("ptrauth", ptrauth)):
        if not isinstance(wanted, bool):
            raise TypeError(f"{name} must be a bool, not {type(wanted).__name__} ({wanted!r})")
        if wanted:
            bits.update(binding.CONSTANTS[constant] for constant in NAMED_FEATURES[name])
    return sorted(bits)


def vcpu_init_record(binding: ModuleType, target: int, features: Iterable[int] = (), *, psci_0_2: bool = True,
                     pmu: bool = False, sve: bool = False, ptrauth: bool = False) -> Any:
    """The `struct kvm_vcpu_init *` KVM_ARM_VCPU_INIT reads: `target`, and the feature bits of
    `feature_bits(binding, features, ...)` set in its `features` words (bit n in word n // 32)."""
    target = marshal.integer(target, "target", 0, 0xFFFFFFFF)
    record = binding.ffi.new("struct kvm_vcpu_init *", {"target": target})
    for bit in feature_bits(binding, features, psci_0_2=psci_0_2, pmu=pmu, sve=sve, ptrauth=ptrauth):
        record.features[bit // 32] |= 1 << (bit % 32)
    return record


class Arm64Vm(KvmFd):
    """A VM on arm64: the preferred vCPU target, the vGICv3."""

    create_device: Any  # Vm's

    @needs("KVM_ARM_PREFERRED_TARGET")
    def preferred_target(self) -> Any:
        """KVM_ARM_PREFERRED_TARGET: the `struct kvm_vcpu_init` (target, no features) this host prefers."""
        return marshal.struct_out(self._ioctl, self.ffi, "KVM_ARM_PREFERRED_TARGET", "struct kvm_vcpu_init")

    @needs("KVM_CREATE_DEVICE")
    def create_vgic_v3(self, dist_addr: int, redist_addr: int, nr_irqs: int | None = None) -> Any:
        """A vGICv3 (KVM_CREATE_DEVICE), its distributor at guest-physical `dist_addr` and its
        redistributors (two 64 KiB frames per vCPU) from `redist_addr` (both 64 KiB-aligned), with `nr_irqs`
        interrupt lines when given (KVM_DEV_ARM_VGIC_GRP_NR_IRQS: 64 to 1024, a multiple of 32), initialized
        (KVM_DEV_ARM_VGIC_CTRL_INIT). Call it once every vCPU exists: KVM sizes the vGIC for the vCPUs of the
        VM at init and refuses to create more afterwards. Returns the `Device`."""
        c = self._binding.CONSTANTS
        dist_addr = marshal.integer(dist_addr, "dist_addr", 0, (1 << 64) - 1)
        redist_addr = marshal.integer(redist_addr, "redist_addr", 0, (1 << 64) - 1)
        if nr_irqs is not None:
            nr_irqs = marshal.integer(nr_irqs, "nr_irqs", 0, 0xFFFFFFFF)
        device = self.create_device(c["KVM_DEV_TYPE_ARM_VGIC_V3"])
        try:
            device.set_attr(c["KVM_DEV_ARM_VGIC_GRP_ADDR"], c["KVM_VGIC_V3_ADDR_TYPE_DIST"], dist_addr)
            device.set_attr(c["KVM_DEV_ARM_VGIC_GRP_ADDR"], c["KVM_VGIC_V3_ADDR_TYPE_REDIST"], redist_addr)
            if nr_irqs is not None:
                device.set_attr(c["KVM_DEV_ARM_VGIC_GRP_NR_IRQS"], 0, nr_irqs, size=4)
            device.set_attr(c["KVM_DEV_ARM_VGIC_GRP_CTRL"], c["KVM_DEV_ARM_VGIC_CTRL_INIT"])
        except BaseException:
            device.close()
            raise
        return device


class Arm64Vcpu(KvmFd):
    """A vCPU on arm64: `init()` before anything else; the core registers by name (`pc`, `pstate`)."""

    vm: Any

    @needs("KVM_ARM_VCPU_INIT")
    def init(self, features: Iterable[int] = (), *, target: int | None = None, psci_0_2: bool = True,
             pmu: bool = False, sve: bool = False, ptrauth: bool = False) -> None:
        """KVM_ARM_VCPU_INIT with the VM's preferred target (or `target`), the feature bits numbered in
        `features` (KVM_ARM_VCPU_POWER_OFF, ...) and the named features: PSCI 0.2 (default), PMUv3, SVE
        (then `finalize()` before running), pointer authentication (address and generic)."""
        if target is None:
            target = int(self.vm.preferred_target().target)
        record = vcpu_init_record(self._binding, target, features, psci_0_2=psci_0_2, pmu=pmu, sve=sve,
                                  ptrauth=ptrauth)
        marshal.struct_in(self._ioctl, self.ffi, "KVM_ARM_VCPU_INIT", "struct kvm_vcpu_init", record)

    @needs("KVM_ARM_VCPU_FINALIZE")
    def finalize(self, feature: int | None = None) -> None:
        """KVM_ARM_VCPU_FINALIZE of `feature` (default KVM_ARM_VCPU_SVE: after `init(sve=True)` and setting
        the vector lengths register KVM_REG_ARM64_SVE_VLS, before the SVE registers are accessed or the vCPU runs)."""
        if feature is None:
            feature = self._binding.CONSTANTS["KVM_ARM_VCPU_SVE"]
        marshal.scalar_in(self._ioctl, self.ffi, "KVM_ARM_VCPU_FINALIZE", "int", feature, "feature")

    @needs("KVM_SET_DEVICE_ATTR")
    def pmu_init(self, irq: int) -> None:
        """Set up the vCPU's PMUv3 (after `init(pmu=True)`, and after the vGIC's init when there is one):
        its overflow interrupt `irq` (a PPI, KVM_ARM_VCPU_PMU_V3_IRQ), then KVM_ARM_VCPU_PMU_V3_INIT."""
        c = self._binding.CONSTANTS
        irq = marshal.integer(irq, "irq", 0, 0x7FFFFFFF)
        marshal.attr_set(self._ioctl, self.ffi, "KVM_SET_DEVICE_ATTR", c["KVM_ARM_VCPU_PMU_V3_CTRL"],
                         c["KVM_ARM_VCPU_PMU_V3_IRQ"], irq, 0, self.ffi.sizeof("int"))
        marshal.attr_set(self._ioctl, self.ffi, "KVM_SET_DEVICE_ATTR", c["KVM_ARM_VCPU_PMU_V3_CTRL"],
                         c["KVM_ARM_VCPU_PMU_V3_INIT"])

    @needs("KVM_GET_ONE_REG")
    def get_core_reg(self, name: str) -> int:
        """KVM_GET_ONE_REG of core register `name` (see `core_reg_id`)."""
        return marshal.one_reg_get(self._ioctl, self.ffi, self._binding.CONSTANTS, "KVM_GET_ONE_REG", core_reg_id(self._binding, name))

    @needs("KVM_SET_ONE_REG")
    def set_core_reg(self, name: str, value: int) -> None:
        """KVM_SET_ONE_REG of core register `name` (see `core_reg_id`) to `value`."""
        marshal.one_reg_set(self._ioctl, self.ffi, self._binding.CONSTANTS, "KVM_SET_ONE_REG", core_reg_id(self._binding, name), value)

    @property
    @needs("KVM_GET_ONE_REG", "KVM_SET_ONE_REG")
    def pc(self) -> int:
        """The program counter (core register `regs.pc`)."""
        return self.get_core_reg("regs.pc")

    @pc.setter
    def pc(self, value: int) -> None:
        self.set_core_reg("regs.pc", value)

    @property
    @needs("KVM_GET_ONE_REG", "KVM_SET_ONE_REG")
    def pstate(self) -> int:
        """PSTATE (core register `regs.pstate`): exception level, stack pointer choice, DAIF masks, flags."""
        return self.get_core_reg("regs.pstate")

    @pstate.setter
    def pstate(self, value: int) -> None:
        self.set_core_reg("regs.pstate", value)


MIXINS: dict[str, type] = {"vm": Arm64Vm, "vcpu": Arm64Vcpu}
