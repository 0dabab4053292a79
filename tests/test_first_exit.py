"""The path from nothing to a VM's first exit, what `import kvm` loads for it, check_extension, read_into."""

from __future__ import annotations

import array
import ctypes
import os
import subprocess
import sys

import pytest

import kvm
from guests import KVM_PATH, system, vm  # noqa: F401  (fixtures)

# mov dx, 0x3f8; mov al, 'A'; 1: out dx, al; jmp 1b   (the guest of bench/baseline.c)
SERIAL_OUT = bytes([0xBA, 0xF8, 0x03, 0xB0, 0x41, 0xEE, 0xEB, 0xFD])


def _first_exit() -> tuple[int, int, int]:
    with kvm.Kvm(KVM_PATH) as k, k.create_vm() as vm:
        mem = vm.add_memory(0, 0x10000)
        mem.write(0x1000, SERIAL_OUT)
        vcpu = vm.create_vcpu(0)
        kvm.x86.setup_real_mode(vcpu, entry=0x1000)
        exit = vcpu.run()
        assert isinstance(exit, kvm.IoExit)
        return exit.port, exit.direction, bytes(exit.data)[0]


def test_vms_in_a_row_each_reach_their_first_exit(system):
    assert _first_exit() == (0x3F8, kvm.IoExit.OUT, ord("A"))
    assert _first_exit() == (0x3F8, kvm.IoExit.OUT, ord("A"))


def test_import_loads_what_the_first_vm_needs():
    code = """if True:
        import sys
        import kvm
        binding = kvm.system.DEFAULT_BINDING
        loaded = [name for name in ("kvm.system", "kvm.vm", "kvm.vcpu", "kvm.exits", "kvm.memory", "kvm.x86",
                                    binding.__name__, binding.__name__.replace(".linux_", "._ffi_linux_"))
                  if name in sys.modules]
        print(len(loaded), "ffi" in vars(binding), "STRUCTS" in vars(binding), "CAPS" in vars(binding))
        print(kvm.generated is sys.modules["kvm.generated"], kvm.Vm is kvm.vm.Vm, kvm.IoExit is kvm.exits.IoExit)
    """
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    # The layer, the default binding and its FFI are loaded; the record layouts and capability table are not.
    assert out.split("\n")[:2] == ["8 True False False", "True True True"]


def test_binding_tables_are_built_on_first_use():
    binding = kvm.generated.load("6.1", "arm64")
    structs = binding.STRUCTS
    assert binding.STRUCTS is structs and vars(binding)["STRUCTS"] is structs
    assert binding.CAPS["KVM_CAP_USER_MEMORY"].value == binding.CONSTANTS["KVM_CAP_USER_MEMORY"]
    with pytest.raises(AttributeError, match="NO_SUCH_TABLE"):
        binding.NO_SUCH_TABLE
    from kvm.generated import CAPS, STRUCTS  # the default binding's, through the index module

    default = kvm.system.DEFAULT_BINDING
    assert STRUCTS is default.STRUCTS and CAPS is default.CAPS
    region = "struct kvm_userspace_memory_region"
    assert STRUCTS[region].size == default.ffi.sizeof(region) == 32


def test_check_extension_asks_the_kernel_every_time(system, vm):
    cap = system.binding.Cap.USER_MEMORY
    for obj in (system, vm):
        assert obj.check_extension(cap) == obj.check_extension(int(cap)) == 1
        assert obj.check_extension("USER_MEMORY") == obj.check_extension("KVM_CAP_USER_MEMORY") == 1
    # Put /dev/null under both fds: an answer kept from the calls above would hide it, a new ioctl fails.
    devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    try:
        for obj in (vm, system):
            os.dup2(devnull, obj.fileno(), inheritable=False)
    finally:
        os.close(devnull)
    for obj in (vm, system):
        for form in (cap, int(cap), "USER_MEMORY"):
            with pytest.raises(kvm.KvmError, match="KVM_CHECK_EXTENSION .*ENOTTY"):
                obj.check_extension(form)


def test_read_into_copies_into_any_writable_buffer(vm):
    mem = vm.add_memory(0x10000, 0x4000)
    mem.write(0x10100, bytes(range(16)))
    buffer = bytearray(16)
    assert mem.read_into(0x10100, buffer) == 16 and buffer == bytes(range(16))
    words = array.array("I", [0, 0])
    assert mem.read_into(0x10104, words) == 8 and words.tobytes() == bytes(range(4, 12))
    word = ctypes.c_uint32()  # a buffer whose format is not a byte format
    assert mem.read_into(0x10100, word) == 4 and word.value == int.from_bytes(bytes(range(4)), sys.byteorder)
    window = memoryview(buffer)[4:8]
    assert mem.read_into(0x10100, window) == 4 and buffer[:8] == bytes([0, 1, 2, 3, 0, 1, 2, 3])
    assert mem.read_into(0x13FFC, bytearray(4)) == 4  # up to the last byte of the slot
    assert mem.read_into(0x14000, bytearray()) == 0
    overlapping = mem.view(0x10102, 8)  # guest memory into guest memory
    assert mem.read_into(0x10100, overlapping) == 8 and mem.read(0x10100, 10) == bytes([0, 1, 0, 1, 2, 3, 4, 5, 6, 7])


def test_read_into_refuses_what_it_cannot_fill(vm):
    mem = vm.add_memory(0x10000, 0x4000)
    mem.write(0x13FF0, b"x" * 16)
    too_long = bytearray(17)
    with pytest.raises(kvm.GuestMemoryError, match=r"\[0x13ff0, 0x14001\) is outside slot"):
        mem.read_into(0x13FF0, too_long)
    assert too_long == bytes(17)  # nothing copied
    with pytest.raises(kvm.GuestMemoryError, match="outside slot"):
        mem.read_into(0xFFFF, bytearray(2))
    with pytest.raises(TypeError, match="bytes is read-only"):
        mem.read_into(0x10000, b"read-only")
    with pytest.raises(TypeError, match="C-contiguous"):
        mem.read_into(0x10000, memoryview(bytearray(8))[::2])
    with pytest.raises(TypeError, match="writable buffer, not int"):
        mem.read_into(0x10000, 8)
    buffer = bytearray(4)
    mem.read_into(0x13FF0, buffer)
    buffer.extend(b"more")  # the buffer is released: it can be resized again
    mem.close()
    with pytest.raises(kvm.ClosedError):
        mem.read_into(0x10000, buffer)
