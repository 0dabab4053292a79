"""Hello world from a real-mode guest: the guest writes a string to port 0xE9, one byte per exit.

Run: python examples/hello_real_mode.py
"""

import kvm

CODE = bytes([
    0xBE, 0x00, 0x20,  # mov si, 0x2000     ; the string
    # loop:
    0xAC,              # lodsb              ; al = [si], si += 1
    0x84, 0xC0,        # test al, al
    0x74, 0x04,        # jz done
    0xE6, 0xE9,        # out 0xe9, al
    0xEB, 0xF7,        # jmp loop
    # done:
    0xF4,              # hlt
])


def main() -> str:
    out = bytearray()
    with kvm.Kvm() as system, system.create_vm() as vm:
        memory = vm.add_memory(0x0, 0x10000)  # 64 KiB of guest RAM at guest-physical 0
        memory.write(0x1000, CODE)
        memory.write(0x2000, b"Hello, KVM!\n\0")
        vcpu = vm.create_vcpu(0)
        kvm.x86.setup_real_mode(vcpu, entry=0x1000)
        while True:
            exit = vcpu.run()
            if isinstance(exit, kvm.IoExit) and exit.port == 0xE9 and exit.is_out:
                out += exit.data
            elif isinstance(exit, kvm.HltExit):
                break
            else:
                raise RuntimeError(f"unexpected exit: {exit!r}")
    return out.decode()


if __name__ == "__main__":
    print(main(), end="")
