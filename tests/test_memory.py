"""Guest memory: slots (add, remove, reuse, limits, flags), reads, writes and views, read_into,
memfd- and file-backed memory, guest_memfd."""

from __future__ import annotations

import array
import ctypes
import errno
import os
import sys

import pytest

import kvm
from guests import WRITE_PAGE_3, require_cap

C = kvm.generated.CONSTANTS
PAGE = 4096


def test_guest_memory_bounds_and_views(vm):
    mem = vm.add_memory(0x100000, 0x4000)
    assert (mem.slot, mem.guest_addr, mem.size, mem.end) == (0, 0x100000, 0x4000, 0x104000)
    mem.write(0x100010, b"hello")
    assert mem.read(0x100010, 5) == b"hello"
    view = mem.view(0x100000, 0x20)
    view[0:2] = b"hi"
    assert mem.read(0x100000, 2) == b"hi"
    mem.write_int(0x100100, 0x1122334455667788)
    assert mem.read_int(0x100100, 8) == 0x1122334455667788
    for addr, length in [(0xFFFFF, 1), (0x103FFF, 2), (0x104000, 1), (0x100000, -1)]:
        with pytest.raises(kvm.GuestMemoryError):
            mem.read(addr, length)
    with pytest.raises(kvm.GuestMemoryError):
        mem.write(0x103FFE, b"abc")
    with pytest.raises(kvm.GuestMemoryError):
        mem.view(0x103000, 0x2000)
    assert mem.read(0x103FFE, 2) == b"\0\0"  # the failed write wrote nothing
    del view


def test_memfd_and_file_backed_memory(vm, tmp_path):
    mem = vm.add_memory(0, 0x10000, memfd=True)
    assert mem.fd >= 0
    mem.write(0x1000, WRITE_PAGE_3)
    os.pwrite(mem.fd, b"\xAA", 0x3001)  # the memfd is the guest's memory
    vcpu = vm.create_vcpu(0)
    kvm.x86.setup_real_mode(vcpu, entry=0x1000)
    assert isinstance(vcpu.run(), kvm.HltExit)
    assert os.pread(mem.fd, 2, 0x3000) == b"\x55\xAA"
    path = tmp_path / "ram.img"
    path.write_bytes(b"\x5A" * 0x2000)
    fmem = vm.add_memory(0x20000, 0x2000, file=str(path))
    assert fmem.read(0x20000, 2) == b"\x5A\x5A"
    fmem.write(0x20001, b"\x01")
    fmem.close()
    assert path.read_bytes()[:2] == b"\x5A\x01"
    assert [m.slot for m in vm.memory] == [0]


def test_remove_memory_and_slot_reuse(vm):
    a = vm.add_memory(0, 0x1000)
    b = vm.add_memory(0x1000, 0x1000)
    assert (a.slot, b.slot) == (0, 1)
    vm.remove_memory(a)
    assert a.closed and [m.slot for m in vm.memory] == [1]
    c = vm.add_memory(0x8000, 0x1000)
    assert c.slot == 0
    with pytest.raises(kvm.ClosedError):
        a.read(0, 1)


def test_memory_slot_limits_and_invalid_flags(vm):
    nr = vm.check_extension("KVM_CAP_NR_MEMSLOTS")
    assert nr > 0
    with pytest.raises(kvm.KvmError) as info:
        vm.add_memory(0, PAGE, slot=nr)  # slot numbers are 0 .. nr-1
    assert info.value.errno == errno.EINVAL and info.value.ioctl == "KVM_SET_USER_MEMORY_REGION"
    top = vm.add_memory(0, PAGE, slot=nr - 1)
    assert top.slot == nr - 1
    with pytest.raises(kvm.KvmError) as info:
        vm.add_memory(0, PAGE)  # overlaps slot nr-1
    assert info.value.errno == errno.EEXIST
    with pytest.raises(kvm.KvmError) as info:
        vm.add_memory(0x10000, PAGE, flags=1 << 7)  # no such KVM_MEM_* flag
    assert info.value.errno == errno.EINVAL
    with pytest.raises(kvm.KvmError) as info:
        vm.add_memory(0x10000, PAGE + 1)  # not a whole number of pages
    assert info.value.errno == errno.EINVAL
    with pytest.raises(kvm.KvmError) as info:
        vm.add_memory(0x10800, PAGE)  # guest address not page aligned
    assert info.value.errno == errno.EINVAL
    assert [m.slot for m in vm.memory] == [nr - 1]


def test_set_memory_flags_checks_the_flags_by_name(vm):
    mem = vm.add_memory(0, PAGE)
    for bad, error in ((True, TypeError), (1.0, TypeError), ("1", TypeError), (-1, ValueError), (1 << 32, ValueError)):
        with pytest.raises(error, match="flags"):
            vm.set_memory_flags(mem, bad)
    assert mem.flags == 0
    log_dirty = vm.binding.CONSTANTS["KVM_MEM_LOG_DIRTY_PAGES"]
    vm.set_memory_flags(mem, log_dirty)
    assert mem.flags == log_dirty
    assert len(vm.get_dirty_log(mem)) == 8  # (the kernel now keeps a bitmap for the slot: one word)


def test_guest_memfd_basics(vm):
    require_cap(vm, "GUEST_MEMFD")
    try:
        gmem = vm.create_guest_memfd(0x10000)
    except kvm.KvmError as exc:
        if exc.errno == errno.EINVAL:
            pytest.skip("KVM_CAP_GUEST_MEMFD is reported but this VM type refuses guest_memfd (EINVAL)")
        raise
    assert os.fstat(gmem.fileno()).st_size == 0x10000
    with pytest.raises(kvm.KvmError) as info:
        vm.create_guest_memfd(0x10000, flags=1 << 40)  # unknown flag
    assert info.value.errno == errno.EINVAL
    mem = vm.add_memory(0, 0x10000, guest_memfd=gmem)
    assert mem.flags & C["KVM_MEM_GUEST_MEMFD"]
    assert mem.guest_memfd is gmem
    vm.remove_memory(mem)
    gmem.close()
    assert gmem.closed


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


def test_read_into_fills_a_buffer_with_bounds_checks(vm):
    mem = vm.add_memory(0x10000, 0x4000)
    mem.write(0x10100, b"guest bytes")
    buffer = bytearray(11)
    assert mem.read_into(0x10100, buffer) == 11 and buffer == b"guest bytes"
    words = memoryview(bytearray(8)).cast("I")
    assert mem.read_into(0x10100, words) == 8 and bytes(words) == b"guest by"
    with pytest.raises(kvm.GuestMemoryError, match="outside slot"):
        mem.read_into(0x13FF8, bytearray(16))
    with pytest.raises(TypeError, match="read-only"):
        mem.read_into(0x10100, b"immutable")
    with pytest.raises(TypeError, match="contiguous"):
        mem.read_into(0x10100, memoryview(bytearray(16))[::2])
