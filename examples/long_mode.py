"""A 64-bit guest: identity-mapped long mode, computing the sum of i*i for i = 1..100 in 64-bit
registers, reporting it through a 32-bit port write (twice: low and high half) and halting.

Run: python examples/long_mode.py
"""

import kvm

CODE = bytes([
    0x31, 0xC0,                    # xor eax, eax        ; sum = 0
    0xB9, 0x64, 0x00, 0x00, 0x00,  # mov ecx, 100        ; i = 100
    # loop:
    0x48, 0x89, 0xCA,              # mov rdx, rcx
    0x48, 0x0F, 0xAF, 0xD1,        # imul rdx, rcx       ; rdx = i * i
    0x48, 0x01, 0xD0,              # add rax, rdx
    0xFF, 0xC9,                    # dec ecx
    0x75, 0xF2,                    # jnz loop
    0xE7, 0x10,                    # out 0x10, eax       ; low 32 bits
    0x48, 0xC1, 0xE8, 0x20,        # shr rax, 32
    0xE7, 0x10,                    # out 0x10, eax       ; high 32 bits
    0xF4,                          # hlt
])


def main() -> int:
    with kvm.Kvm() as system, system.create_vm() as vm:
        memory = vm.add_memory(0x0, 0x40000)
        memory.write(0x1000, CODE)
        vcpu = vm.create_vcpu(0)
        # page tables at 0x10000 identity-map the first GiB; CPUID is set so KVM accepts EFER.LME
        kvm.x86.setup_long_mode(vcpu, entry=0x1000, memory=memory, page_table_addr=0x10000, stack=0x40000)
        halves = []
        while True:
            exit = vcpu.run()
            if isinstance(exit, kvm.IoExit) and exit.port == 0x10:
                halves.append(exit.value)
            elif isinstance(exit, kvm.HltExit):
                break
            else:
                raise RuntimeError(f"unexpected exit: {exit!r}")
        return halves[0] | halves[1] << 32


if __name__ == "__main__":
    print(f"sum of squares 1..100 = {main()}")
