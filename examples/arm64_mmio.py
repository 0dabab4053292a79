"""An arm64 guest that stores a word to an MMIO address: a vGICv3, a vCPU with PSCI 0.2, its PC and
PSTATE set through KVM_SET_ONE_REG, and the store seen as an MmioExit.

Run (on an arm64 host with KVM): python examples/arm64_mmio.py
"""

import sys

import kvm

RAM = 0x0
ENTRY = 0x1000
MMIO = 0x1000_0000  # no memory there: the guest's store exits to us
GIC_DIST = 0x0800_0000  # 64 KiB
GIC_REDIST = 0x080A_0000  # 128 KiB per vCPU

CODE = b"".join(word.to_bytes(4, "little") for word in (
    0xD2A20000,  # movz x0, #0x1000, lsl #16   ; x0 = MMIO
    0xD28ACF01,  # movz x1, #0x5678
    0xF2A24681,  # movk x1, #0x1234, lsl #16   ; x1 = 0x12345678
    0xB9000001,  # str  w1, [x0]
    0x14000000,  # b    .
))

PSTATE_EL1H = 0x5  # EL1, using SP_EL1
PSTATE_DAIF = 0xF << 6  # debug, SError, IRQ and FIQ masked


def main() -> tuple[int, int]:
    """Run the guest to its store: (address, value)."""
    with kvm.Kvm() as system, system.create_vm() as vm:
        memory = vm.add_memory(RAM, 0x10000)
        memory.write(ENTRY, CODE)
        vcpu = vm.create_vcpu(0)
        # an arm64 binding's objects carry the arm64 members; narrowing says so to type checkers
        assert isinstance(vm, kvm.arm64.Arm64Vm) and isinstance(vcpu, kvm.arm64.Arm64Vcpu)
        vcpu.init(psci_0_2=True)
        vm.create_vgic_v3(GIC_DIST, GIC_REDIST)
        vcpu.pc = ENTRY
        vcpu.pstate = PSTATE_EL1H | PSTATE_DAIF
        exit = vcpu.run()
        if not (isinstance(exit, kvm.MmioExit) and exit.is_write):
            raise RuntimeError(f"unexpected exit: {exit!r}")
        return exit.phys_addr, exit.value


if __name__ == "__main__":
    if kvm.generated.ARCH != "arm64":
        sys.exit(f"{sys.argv[0]}: this guest is arm64 code and needs an arm64 host; this one is {kvm.generated.ARCH}")
    address, value = main()
    print(f"the guest stored {value:#x} at {address:#x}")
