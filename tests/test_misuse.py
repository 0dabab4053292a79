"""Ordinary mistakes and hostile calls: a clear exception, never a crash, a hang, a leak or a silent
truncation. One test per item of the list they were reported in (numbers in the test names); the
generator's items are in test_generator_inputs.py. Tests that could crash the process if the library
regressed run their snippet in a subprocess, so that a crash fails one test instead of the run.
"""

from __future__ import annotations

import errno
import gc
import math
import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import kvm
from guests import real_mode_guest

X86 = kvm.generated.ARCH == "x86_64"
SPIN = bytes([0xEB, 0xFE])  # jmp $ (real mode)
OUT_HLT = bytes([0xE6, 0x10, 0xF4])  # out 0x10, al ; hlt
pytestmark = pytest.mark.skipif(not X86, reason="the guests are x86 real-mode code")


def isolated(code: str, timeout: float = 60) -> str:
    """Run `code` (with kvm and the guest helpers imported) in a fresh interpreter; its stdout. A
    signal or a non-zero exit fails the test with the child's output."""
    prelude = "import gc, os, sys, threading, time\nimport kvm\nfrom guests import real_mode_guest\n"
    result = subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)], capture_output=True, text=True,
                            timeout=timeout, cwd=os.path.dirname(__file__),
                            env={**os.environ, "PYTHONPATH": os.path.dirname(__file__)})
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def fds() -> int:
    gc.collect()
    return len(os.listdir("/proc/self/fd"))


# -- crashes ----------------------------------------------------------------------------------------

def test_1_views_of_kvm_run_stay_readable_after_close() -> None:
    out = isolated("""
        with kvm.Kvm() as k:
            vm = k.create_vm()
            mem, vcpu = real_mode_guest(vm, bytes([0xE6, 0x10, 0xF4]))
            exit = vcpu.run()
            run, synced, data = vcpu.kvm_run, vcpu.synced, exit.data
            vm.close()
            gc.collect()
            print(run.exit_reason, synced.regs.rip, bytes(data), exit.port)
            try:
                vcpu.kvm_run
            except kvm.ClosedError:
                print("closed")
    """)
    assert out.split() == [str(kvm.generated.ExitReason.IO.value), "0", "b'\\x00'", "16", "closed"]


def test_2_dirty_log_buffers_come_from_the_slot_not_the_caller(system) -> None:
    flags = int(system.binding.MemoryRegionFlag.LOG_DIRTY_PAGES)
    with system.create_vm() as a, system.create_vm() as b:
        mem_a = a.add_memory(0, 0x10000, flags=flags)
        mem_b = b.add_memory(0, 0x100000, flags=flags)
        with pytest.raises(ValueError, match="not a memory slot of this VM"):
            a.get_dirty_log(mem_b)  # b's slot 0 is 16 times bigger than a's
        a.remove_memory(mem_a)
        a.add_memory(0, 0x100000, flags=flags)  # slot 0 again, bigger
        with pytest.raises(ValueError, match="not a memory slot of this VM"):
            a.get_dirty_log(mem_a)  # the stale GuestMemory
        assert len(a.ioctls.get_dirty_log(0)) == 0x100 // 64 * 8  # 256 pages: the raw path sizes it too
        with pytest.raises(TypeError):
            a.ioctls.get_dirty_log(0, 1)  # no caller-given size any more


def test_2_attribute_and_msr_filter_buffers(system, vm) -> None:
    with pytest.raises(ValueError, match="size must be 1, 2, 4 or 8"):
        system.get_attr(0, 0, size=3)
    ranges = [kvm.MsrFilterRange(flags=1, base=0, nmsrs=64, bitmap=b"\xff")]  # 8 bits for 64 MSRs
    with pytest.raises(ValueError, match=r"ranges\[0\].bitmap has 1 bytes; 64 MSRs need 8"):
        vm.set_msr_filter(ranges)


def test_2_a_buffer_smaller_than_the_ioctl_encodes_is_refused_unissued() -> None:
    """Every ioctl goes through KvmFd._ioctl, which knows the size the ioctl number encodes: a buffer
    holding less (through marshal with the wrong record, or a raw cdata) is refused before the kernel
    writes past it (a heap overflow otherwise)."""
    out = isolated("""
        k = kvm.Kvm(); vm = k.create_vm(); v = vm.create_vcpu(0)
        for call in (lambda: v._ioctl("KVM_GET_XSAVE", v.ffi.new("char[8]")),
                     lambda: kvm.marshal.struct_out(v._ioctl, v.ffi, "KVM_GET_XSAVE", "struct kvm_regs"),
                     lambda: kvm.marshal.struct_in(v._ioctl, v.ffi, "KVM_SET_SREGS", "struct kvm_regs", None, {})):
            try:
                call()
                print("accepted")
            except ValueError as exc:
                print(exc)
    """)
    assert out.splitlines() == [
        "KVM_GET_XSAVE: the kernel uses 4096 bytes at the argument, which holds 8 (char[8])",
        "KVM_GET_XSAVE: the kernel uses 4096 bytes at the argument, which holds 144 (struct kvm_regs *)",
        "KVM_SET_SREGS: the kernel uses 312 bytes at the argument, which holds 144 (struct kvm_regs *)",
    ]


def test_2b_a_from_buffer_pointer_over_a_small_buffer_is_refused_unissued() -> None:
    """cffi reports sizeof(T) for ffi.from_buffer("T *", buf) whatever the buffer's size: such a pointer is
    refused (the kernel would write past an 8-byte buffer), even after a pointer of the same type was
    accepted; a "char[]" over the buffer says its size and is checked by it."""
    if os.uname().machine != "x86_64":
        pytest.skip("KVM_GET_REGS is x86's")
    out = isolated("""
        k = kvm.Kvm(); vm = k.create_vm(); v = vm.create_vcpu(0); ffi = v.ffi
        v._ioctl("KVM_GET_REGS", ffi.new("struct kvm_regs *"))  # (a pointer of that type, accepted first)
        small = bytearray(8)
        for call in (lambda: v._ioctl("KVM_GET_REGS", ffi.from_buffer("struct kvm_regs *", small)),
                     lambda: v.ioctls.set_regs(ffi.from_buffer("struct kvm_regs *", small)),
                     lambda: setattr(v, "regs", ffi.from_buffer("struct kvm_regs *", small)),
                     lambda: v._ioctl("KVM_GET_REGS", ffi.from_buffer("char[]", small))):
            try:
                call()
                print("accepted")
            except (TypeError, ValueError) as exc:
                print(type(exc).__name__, "from_buffer" in str(exc) or "holds 8" in str(exc))
        print(small == bytearray(8), v._ioctl("KVM_GET_REGS", ffi.from_buffer("char[]", bytearray(144))))
    """)
    assert out.splitlines() == ["TypeError True"] * 3 + ["ValueError True", "True 0"]


def test_3_close_from_another_thread_while_run_is_in_the_guest() -> None:
    out = isolated("""
        k = kvm.Kvm()
        vm = k.create_vm()
        mem, vcpu = real_mode_guest(vm, bytes([0xEB, 0xFE]))
        outcome = []
        def spin():
            try:
                while True:
                    vcpu.run()
            except kvm.ClosedError as e:
                outcome.append("closed")
        t = threading.Thread(target=spin)
        t.start()
        time.sleep(0.2)
        start = time.monotonic()
        vm.close()
        t.join(10)
        print(outcome, not t.is_alive(), time.monotonic() - start < 5)
    """)
    assert out.split() == ["['closed']", "True", "True"]


def test_4_guest_ram_cannot_vanish(system, vm) -> None:
    vcpu = vm.create_vcpu(0)
    with pytest.raises(ValueError, match="not a regular file or a memfd"):
        vm.add_memory(0x100000, 0x1000, file=vcpu.fileno())
    short = os.memfd_create("short")
    try:
        with pytest.raises(ValueError, match="holds 0 bytes; the slot needs 4096"):
            vm.add_memory(0x100000, 0x1000, file=short)
    finally:
        os.close(short)
    mem = vm.add_memory(0, 0x10000, memfd=True)
    with pytest.raises(PermissionError):
        os.ftruncate(mem.fd, 0)  # sealed against shrinking
    assert mem.read(0xFFF0, 16) == bytes(16)


# -- hangs ------------------------------------------------------------------------------------------

def test_5_kick_reaches_a_vcpu_made_in_another_thread(vm) -> None:
    made, result = [], []

    def worker() -> None:
        mem, vcpu = real_mode_guest(vm, SPIN)
        made.append((mem, vcpu))
        result.append(type(vcpu.run()))

    t = threading.Thread(target=worker)
    t.start()
    deadline = time.monotonic() + 10
    while not made and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)
    made[0][1].kick()
    t.join(10)
    assert not t.is_alive() and result == [kvm.IntrExit]


def test_6_vm_close_stops_a_run_in_progress_even_with_a_view_alive() -> None:
    out = isolated("""
        k = kvm.Kvm()
        vm = k.create_vm()
        mem, vcpu = real_mode_guest(vm, bytes([0xEB, 0xFE]))
        view = mem.view()
        outcome = []
        def _run(v):
            try:
                v.run()
                return "returned"
            except kvm.ClosedError:
                return "closed"
        t = threading.Thread(target=lambda: outcome.append(_run(vcpu)))
        t.start()
        time.sleep(0.2)
        vm.close()
        t.join(10)
        print(outcome, t.is_alive(), len(view))
    """)
    assert out.split() == ["['closed']", "False", str(0x10000)]


def test_7_a_forked_child_cannot_touch_the_parents_vcpu_or_guest(vm) -> None:
    mem, vcpu = real_mode_guest(vm, OUT_HLT, mem_size=0x10000)
    shared = vm.add_memory(0x100000, 0x1000, memfd=True)
    exit = vcpu.run()
    assert isinstance(exit, kvm.IoExit)
    pid = os.fork()
    if pid == 0:  # the child: every one of these must raise ForkedError
        code = 0
        for attempt in (vcpu.kick, lambda: shared.write(0x100000, b"child"), lambda: exit.reply(1),
                        lambda: mem.read(0x1000, 1), lambda: vcpu.run(), lambda: setattr(vcpu, "immediate_exit", 1)):
            try:
                attempt()
                code = 1
            except kvm.ForkedError:
                pass
            except BaseException:
                code = 2
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert shared.read(0x100000, 5) == bytes(5)
    assert not vcpu.immediate_exit
    assert isinstance(vcpu.run(), kvm.HltExit)  # not an IntrExit from a kick in the child


# -- leaks ------------------------------------------------------------------------------------------

def test_9_failed_calls_leak_nothing(system, vm) -> None:
    before = fds()
    with pytest.raises(TypeError, match="binding must be a generated binding module"):
        kvm.Kvm(binding=os)  # type: ignore[arg-type]
    for size in (2**64, 4096.5, 0):
        with pytest.raises((TypeError, ValueError), match="size"):
            vm.add_memory(0, size, memfd=True)
    assert fds() == before
    # a guest_memfd that cannot be had (another VM's, or none on this host) releases the slot's memfd
    with system.create_vm() as other:
        foreign = other.create_guest_memfd(0x1000) if other.check_extension("GUEST_MEMFD") else None
        before = fds()
        for _ in range(3):
            with pytest.raises((kvm.CapabilityError, ValueError)):
                vm.add_memory(0, 0x1000, memfd=True, guest_memfd=foreign if foreign is not None else True)
        assert fds() == before
    signum = kvm.vcpu.KICK_SIGNAL
    with pytest.raises(ValueError, match="signum 99999"):
        kvm.install_kick_handler(99999)
    assert kvm.vcpu.KICK_SIGNAL == signum
    vm.create_vcpu(0).close()  # still works


def test_9_a_vcpu_that_fails_to_build_leaves_nothing_behind(vm, monkeypatch) -> None:
    before = fds()

    def broken(*args: object) -> None:
        raise OSError(errno.ENOMEM, "mmap refused (test)")

    monkeypatch.setattr(kvm._sys, "FileMapping", broken)
    with pytest.raises(OSError, match="mmap refused"):
        vm.create_vcpu(3)
    monkeypatch.undo()
    assert vm.vcpus == [] and fds() == before
    with pytest.raises(kvm.KvmError) as info:
        vm.create_vcpu(3)  # the kernel keeps a vCPU for the VM's lifetime, fd or not: its answer, not ours
    assert info.value.errno == errno.EEXIST
    vm.create_vcpu(4).close()
    vm.close()


def test_10_a_dropped_vm_closes_its_fd_at_once(system) -> None:
    before = fds()
    for _ in range(50):
        vm = system.create_vm()
        vm.add_memory(0, 0x1000)
        del vm
        assert len(os.listdir("/proc/self/fd")) == before  # no gc.collect(): freed by reference counting


# -- silent acceptance and unclear errors -----------------------------------------------------------

def test_11_values_are_never_masked_or_truncated(system, vm) -> None:
    mem, vcpu = real_mode_guest(vm, bytes([0xE4, 0x10, 0xF4]))  # in al, 0x10 ; hlt
    exit = vcpu.run()
    with pytest.raises(ValueError, match=r"reply must be in 0..255, not"):
        exit.reply(2**70 + 5)
    with pytest.raises(ValueError, match=r"value must be in 0..2\*\*64-1"):
        mem.write_int(0x2000, 2**70 + 3)
    with pytest.raises(TypeError, match="id must be an int, not float"):
        vm.create_vcpu(1.9)
    with pytest.raises(ValueError, match="must be"):
        vcpu.regs = b""
    with pytest.raises(TypeError, match="address must be an int"):
        mem.page_index(math.nan)
    with pytest.raises(ValueError, match="file must be in 0..2"):
        vm.add_memory(0x100000, 0x1000, file=-5)
    with system.create_vm() as other:
        theirs = other.add_memory(0, 0x1000)
        with pytest.raises(ValueError, match="not a memory slot of this VM"):
            vm.remove_memory(theirs)
        assert other.memory == [theirs] and vm.memory == [mem]
    vm.close()
    with pytest.raises(kvm.ClosedError):
        exit.reply(1)


def test_13_endless_iterables_are_refused_after_a_bounded_read(system, vm) -> None:
    """Every argument that is an iterable of entries is read up to its limit, never to its end."""
    import itertools

    vcpu = vm.create_vcpu(0)
    for call, what in ((lambda: vcpu.get_msrs(itertools.count()), "indices"),
                       (lambda: vcpu.set_cpuid(itertools.repeat((0, 0))), "entries"),
                       (lambda: vm.set_gsi_routing(itertools.repeat(kvm.MsiRoute(0, 0, 0))), "routes"),
                       (lambda: vcpu.set_signal_mask(itertools.repeat(5)), "signals"),
                       (lambda: vm.set_msr_filter(itertools.repeat(kvm.MsrFilterRange(1, 0, 8, b"\0"))), "ranges")):
        started = time.monotonic()
        with pytest.raises(ValueError, match=f"{what} holds more than"):
            call()
        assert time.monotonic() - started < 5
    with pytest.raises(TypeError, match="routes must be an iterable"):
        vm.set_gsi_routing(5)  # type: ignore[arg-type]


def test_13_sizes_are_bounded_before_any_work(vm) -> None:
    mem = vm.add_memory(0, 0x1000)
    start = time.monotonic()
    with pytest.raises(ValueError, match="size must be in 1..8"):
        mem.write_int(0, 1, size=2**31)
    with pytest.raises(ValueError, match="size must be 1, 2, 4 or 8"):
        vm.set_attr(0, 0, 1, size=2**31)
    with pytest.raises(ValueError, match="entries holds more than 65536 items"):
        kvm.marshal.flex_set(lambda *a: 0, vm.ffi, "KVM_SET_GSI_ROUTING", "struct kvm_irq_routing", "nr",
                             "entries", range(2**20))
    assert time.monotonic() - start < 1


def test_guest_memfd_pages_that_would_fault_are_not_mapped(vm) -> None:
    c = vm.binding.CONSTANTS
    if vm.check_extension("KVM_CAP_GUEST_MEMFD") <= 0:
        pytest.skip("no KVM_CAP_GUEST_MEMFD")
    try:
        private = vm.create_guest_memfd(0x10000)
    except kvm.KvmError as exc:
        pytest.skip(f"this VM type refuses guest_memfd ({exc})")
    with pytest.raises(kvm.errors.StateError, match="its pages would be private"):
        private.mmap()  # touching such a mapping is a SIGBUS
    shared_flags = c["GUEST_MEMFD_FLAG_MMAP"] | c["GUEST_MEMFD_FLAG_INIT_SHARED"]
    if vm.check_extension("KVM_CAP_GUEST_MEMFD_FLAGS") & shared_flags != shared_flags:
        return
    shared = vm.create_guest_memfd(0x10000, shared_flags)
    with pytest.raises(ValueError, match="length must be in 1..4096"):
        shared.mmap(0x2000, offset=0xF000)
    with shared.mmap() as pages:
        pages[:2] = b"ok"
        assert pages[:2] == b"ok"


def test_7_views_a_forked_child_inherited_do_not_write_into_the_parent(vm) -> None:
    mem, vcpu = real_mode_guest(vm, OUT_HLT, mem_size=0x10000)
    shared = vm.add_memory(0x100000, 0x1000, memfd=True)
    exit = vcpu.run()
    data, run, view = exit.data, vcpu.kvm_run, shared.view()
    pid = os.fork()
    if pid == 0:  # the child writes through everything it inherited: none of it may reach the parent
        try:
            data[0] = 0x99
            run.immediate_exit = 1
            view[:5] = b"child"
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    assert data[0] != 0x99 and not run.immediate_exit and bytes(view[:5]) == bytes(5)


def test_4_a_users_memfd_is_sealed_against_shrinking_and_the_slot_keeps_its_own_fd(vm) -> None:
    user = os.memfd_create("guest-ram", os.MFD_ALLOW_SEALING | os.MFD_CLOEXEC)
    os.ftruncate(user, 0x2000)
    mem = vm.add_memory(0, 0x2000, file=user)
    os.close(user)  # the slot holds a duplicate: closing ours changes nothing for it
    with pytest.raises(PermissionError):
        os.ftruncate(mem.fd, 0)
    mem.write(0x1FF8, b"12345678")
    assert mem.read(0x1FF8, 8) == b"12345678"
    with pytest.raises(ValueError, match="not an open file descriptor"):
        vm.add_memory(0x10000, 0x1000, file=user)  # (closed now)


def test_7_a_slot_whose_user_fd_was_closed_before_fork_is_private_in_the_child(vm) -> None:
    user = os.memfd_create("guest-ram", os.MFD_CLOEXEC)
    os.ftruncate(user, 0x1000)
    first = vm.add_memory(0, 0x1000, file=user)
    os.close(user)
    second = vm.add_memory(0x1000, 0x1000, memfd=True)
    views = first.view(), second.view()
    pid = os.fork()
    if pid == 0:
        try:
            for view in views:
                view[:5] = b"child"
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    assert [bytes(view[:5]) for view in views] == [bytes(5), bytes(5)]


def test_7_an_eventfd_made_before_fork_is_refused_in_the_child(vm) -> None:
    eventfd = kvm.EventFd()
    pid = os.fork()
    if pid == 0:
        code = 0
        for attempt in (eventfd.notify, eventfd.read):
            try:
                attempt()
                code = 1
            except kvm.ForkedError:
                pass
            except BaseException:
                code = 2
        eventfd.close()  # (the child's copy)
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert eventfd.read() == 0 and not eventfd.closed


def test_7_close_in_a_child_forked_during_run_closes_its_copies() -> None:
    out = isolated("""
        vm = kvm.Kvm().create_vm()
        mem, vcpu = real_mode_guest(vm, bytes([0xEB, 0xFE]))
        t = threading.Thread(target=lambda: kvm.ClosedError and _swallow(vcpu.run))
        def _swallow(call):
            try:
                call()
            except kvm.ClosedError:
                pass
        t.start()
        time.sleep(0.2)
        pid = os.fork()
        if pid == 0:
            started = time.monotonic()
            try:
                vm.close()
                ok = vm.closed and vcpu.closed and time.monotonic() - started < 1
            except BaseException as exc:
                ok = repr(exc)
            os._exit(0 if ok is True else 3)
        _, status = os.waitpid(pid, 0)
        vm.close()
        t.join(5)
        print(os.waitstatus_to_exitcode(status), t.is_alive())
    """)
    assert out.split() == ["0", "False"]


def test_11_flags_are_bools_not_truthy_values(vm) -> None:
    vcpu = vm.create_vcpu(0)
    for call, name in ((lambda: vm.add_memory(0, 0x1000, memfd="no"), "memfd"),
                       (lambda: vm.ioeventfd(0x10, pio="x"), "pio"),
                       (lambda: setattr(vcpu, "immediate_exit", None), "immediate_exit"),
                       (lambda: vm.create_device(1, test=1), "test"),
                       (lambda: kvm.EventFd(nonblocking=0), "nonblocking")):
        with pytest.raises(TypeError, match=f"{name} must be a bool"):
            call()
    assert not vm.memory


def test_11_add_memory_refuses_arguments_that_would_be_ignored(vm) -> None:
    with pytest.raises(ValueError, match="cannot be combined with file="):
        vm.add_memory(0, 0x1000, memfd=True, file="/dev/zero")
    with pytest.raises(ValueError, match="guest_memfd_offset"):
        vm.add_memory(0, 0x1000, guest_memfd_offset=4096)
    with pytest.raises(ValueError, match="guest_memfd_offset must be in"):
        vm.add_memory(0, 0x1000, guest_memfd=True, guest_memfd_offset=-1)
    with pytest.raises(TypeError, match="guest_memfd must be a bool or a GuestMemfd"):
        vm.add_memory(0, 0x1000, guest_memfd="yes")
    assert not vm.memory


def test_12_eventfds_are_checked(vm) -> None:
    with pytest.raises(ValueError, match="fd 0 is not an open eventfd"):
        kvm.EventFd(0)
    with pytest.raises(TypeError, match="eventfd must be a kvm.EventFd"):
        vm.ioeventfd(0x10, 1, pio=True, eventfd=5)
    with pytest.raises(TypeError, match="eventfd must be a kvm.EventFd"):
        vm.irqfd(0, eventfd=5)
    os.fstat(0)  # (stdin was not adopted, so not closed)


def test_12_a_closed_vm_says_closed(vm) -> None:
    mem = vm.add_memory(0, 0x1000)
    vm.close()
    with pytest.raises(kvm.ClosedError):
        vm.memory_at(0)
    with pytest.raises(kvm.ClosedError):
        vm.get_dirty_log(mem)


def test_11_a_binding_of_another_arch_is_refused(system) -> None:
    other = "arm64" if system.arch != "arm64" else "x86_64"
    before = fds()
    with pytest.raises(ValueError, match=f"binding is for {other}"):
        kvm.Kvm(binding=kvm.generated.load(None, other))
    assert fds() == before


@pytest.mark.parametrize("cap", [-1, True, 2**63, 1.0])
def test_11_capability_numbers_are_checked_on_every_fd_kind(system, vm, cap) -> None:
    for obj in (system, vm, vm.create_vcpu(0) if not vm.vcpus else vm.vcpus[0]):
        with pytest.raises((TypeError, ValueError), match="cap must be"):
            obj.check_extension(cap)


def test_12_nested_array_members_name_the_element(vm) -> None:
    vcpu = vm.create_vcpu(0)
    if not hasattr(vcpu, "fpu"):
        pytest.skip("this arch's vCPU has no struct kvm_fpu (KVM_GET_FPU is x86 and ppc)")
    with pytest.raises(ValueError, match=r"struct kvm_fpu.fpr\[0\] holds 16 items, not 100"):
        vcpu.fpu = {"fpr": [[1] * 100]}
    with pytest.raises(ValueError, match=r"fpr\[1\]\[0\] must be in 0..255, not -1"):
        vcpu.fpu = {"fpr": [[0], [-1]]}
    vcpu.fpu = {"fpr": [[1, 2]]}
    assert list(vcpu.fpu.fpr[0])[:3] == [1, 2, 0]


def test_10_dropped_objects_close_their_fds_without_the_garbage_collector(system) -> None:
    """Parents hold children weakly and a vCPU's Runner and exits hold the vCPU weakly: no reference
    cycle keeps a dropped VM, vCPU or exit (and their fds) alive until the cyclic collector runs."""
    import kvm.x86
    gc.disable()
    try:
        before = fds()
        for _ in range(20):
            vm = system.create_vm()
            mem, vcpu = real_mode_guest(vm, bytes([0xE6, 0x10, 0xF4]))  # out 0x10, al; hlt
            exit = vcpu.run()
            assert isinstance(exit, kvm.IoExit) and exit.vcpu is vcpu
            vm.ioeventfd(0x20, 1, pio=True)
            del vm, mem, vcpu
            assert exit.vcpu is None  # (the exit outlived its vCPU: it says so)
            with pytest.raises(kvm.ClosedError, match="came from is gone"):
                exit.reply(1)
            del exit
        assert fds() == before
        vm = system.create_vm()
        vm.create_vcpu(0)  # dropped at once: its fd closes, the kernel keeps vCPU 0
        with pytest.raises(kvm.KvmError, match="vCPU 0 exists already: its Vcpu was closed or dropped"):
            vm.create_vcpu(0)
    finally:
        gc.enable()


def test_7_a_view_of_a_removed_file_slot_writes_into_nothing_shared(vm) -> None:
    user = os.memfd_create("guest-ram", os.MFD_CLOEXEC)
    os.ftruncate(user, 0x1000)
    try:
        first = vm.add_memory(0, 0x1000, file=user)
        second = vm.add_memory(0x1000, 0x1000, file=user)  # the same pages
        view = first.view()
        vm.remove_memory(first)
        view[:4] = b"gone"  # (the view of the removed slot is a private copy now)
        assert second.read(0x1000, 4) == bytes(4)
        pid = os.fork()
        if pid == 0:
            try:
                view[:5] = b"child"
            finally:
                os._exit(0)
        os.waitpid(pid, 0)
        assert second.read(0x1000, 5) == bytes(5) and bytes(view[:4]) == b"gone"
    finally:
        os.close(user)


def test_12_close_ends_a_blocking_eventfd_read_in_another_thread() -> None:
    event = kvm.EventFd(nonblocking=False)
    outcome = []
    thread = threading.Thread(target=lambda: outcome.append(_outcome(event.read)))
    thread.start()
    time.sleep(0.2)
    assert thread.is_alive()  # (waiting for a signal)
    started = time.monotonic()
    event.close()
    thread.join(5)
    assert not thread.is_alive() and time.monotonic() - started < 2
    assert outcome == ["ClosedError"]
    blocking = kvm.EventFd(nonblocking=False)
    threading.Timer(0.1, blocking.notify, (5,)).start()
    assert blocking.read() == 5  # (waited for the notify)
    blocking.close()


def test_12_an_adopted_eventfd_is_a_duplicate() -> None:
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    mine = libc.eventfd(0, os.O_CLOEXEC)
    event = kvm.EventFd(mine)
    assert event.fileno() != mine
    event.notify(3)
    assert int.from_bytes(os.read(mine, 8), sys.byteorder) == 3  # one counter, two fds
    event.close()
    os.fstat(mine)  # still open: the caller's to close
    os.close(mine)


@pytest.fixture
def fast_switching():
    """Threads switch as often as the interpreter can (between any two bytecodes), for races."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(interval)


def _outcome(call) -> str:
    try:
        call()
        return "returned"
    except Exception as exc:  # (the test compares the type's name)
        return type(exc).__name__


def test_1_two_threads_closing_one_vm_close_each_fd_once(system, fast_switching) -> None:
    stolen = 0
    for _ in range(200):
        vm = system.create_vm()
        vm.create_vcpu(0)
        closers = [threading.Thread(target=vm.close) for _ in range(2)]
        for closer in closers:
            closer.start()
        events = [kvm.EventFd() for _ in range(3)]
        for closer in closers:
            closer.join()
        stolen += sum(not os.path.exists(f"/proc/self/fd/{e.fileno()}")
                      or os.readlink(f"/proc/self/fd/{e.fileno()}") != "anon_inode:[eventfd]" for e in events)
        for e in events:
            e.close()
    assert stolen == 0


def test_1_a_vcpu_made_while_its_vm_closes_is_closed_or_refused(system, fast_switching) -> None:
    orphans = 0
    for _ in range(100):
        vm = system.create_vm()
        made = []

        def create() -> None:
            for i in range(20):
                try:
                    made.append(vm.create_vcpu(i))
                except kvm.ClosedError:
                    return

        thread = threading.Thread(target=create)
        thread.start()
        vm.close()
        thread.join()
        orphans += sum(not v.closed for v in made)
    assert orphans == 0


def test_3_slots_added_or_stats_read_while_the_vm_closes_leave_nothing_open(system, fast_switching) -> None:
    before = fds()
    unexpected = []
    for _ in range(60):
        vm = system.create_vm()
        vcpu = vm.create_vcpu(0)

        def churn() -> None:
            try:
                while True:
                    vm.remove_memory(vm.add_memory(0, 0x1000, memfd=True))
                    vcpu.stats()
            except kvm.ClosedError:
                pass
            except Exception as exc:  # (any other is a finding)
                unexpected.append(repr(exc))

        thread = threading.Thread(target=churn)
        thread.start()
        time.sleep(0.002)
        vm.close()
        thread.join()
    del vm, vcpu
    gc.collect()
    assert unexpected == [] and fds() == before


def test_5_no_path_blocks_the_kick_signal(vm) -> None:
    import signal
    vcpu = vm.create_vcpu(0)
    with pytest.raises(ValueError, match="KICK_SIGNAL"):
        vcpu.ioctls.set_signal_mask([kvm.vcpu.KICK_SIGNAL])  # the generated wrapper too
    vcpu.set_signal_mask([int(signal.SIGUSR1)])
    before = kvm.vcpu.KICK_SIGNAL
    with pytest.raises(ValueError, match="blocked while the guest runs"):
        kvm.install_kick_handler(signal.SIGUSR1)  # that vCPU's mask would defeat it
    assert kvm.vcpu.KICK_SIGNAL == before


def test_6_none_is_not_zero(vm) -> None:
    calls = [lambda: vm.irq_line(None, None), lambda: vm.signal_msi(0xFEE00000, None),
             lambda: setattr(vcpu, "mp_state", None)]
    if hasattr(vm, "get_irqchip"):
        vm.create_irqchip()  # (before any vCPU)
        calls += [lambda: vm.set_irqchip(None), lambda: vm.get_irqchip(None), lambda: vm.create_pit2(None)]
    vcpu = vm.create_vcpu(0)
    for call in calls:
        with pytest.raises(TypeError, match="must be given|must be a struct kvm_irqchip cdata"):
            call()
    with pytest.raises(TypeError, match="flags must be an int"):
        vm.enable_cap("KVM_CAP_X2APIC_API", 0, flags=None)


def test_7_a_dirty_ring_enabled_any_way_is_known_to_the_vcpus(system) -> None:
    vm = system.create_vm()
    if vm.check_extension("KVM_CAP_DIRTY_LOG_RING") <= 0:
        pytest.skip("KVM_CAP_DIRTY_LOG_RING is absent on this host")
    vm.enable_cap("KVM_CAP_DIRTY_LOG_RING", 0x10000)  # not through enable_dirty_ring()
    assert vm.dirty_ring_bytes == 0x10000
    assert vm.create_vcpu(0).harvest_dirty_ring() == []
    vm.close()


def test_9_guest_memory_used_while_its_vm_closes_says_closed(system, fast_switching) -> None:
    unexpected = []
    for _ in range(100):
        vm = system.create_vm()
        mem = vm.add_memory(0, 0x2000)

        def use() -> None:
            try:
                for _ in range(200):
                    mem.write(0x10, b"x" * 16)
                    mem.fill(0, 64, 1)
                    mem.read(0, 8)
                    vm.read(0, 8)
            except kvm.ClosedError:
                pass
            except Exception as exc:  # (any other is a finding)
                unexpected.append(repr(exc))

        thread = threading.Thread(target=use)
        thread.start()
        vm.close()
        thread.join()
        mem.close()  # idempotent, whoever unmapped it
    assert unexpected == []


def test_10_long_mode_and_attribute_arguments_are_checked(vm) -> None:
    import kvm.x86
    if vm.arch != "x86_64":
        pytest.skip("long mode is x86")
    mem = vm.add_memory(0, 0x40000)
    vcpu = vm.create_vcpu(0)
    for value, error in ((1, ValueError), (32768.0, TypeError), (2**64, ValueError), (None, TypeError)):
        with pytest.raises(error, match="page_table_addr"):
            kvm.x86.setup_long_mode(vcpu, 0x1000, memory=mem, page_table_addr=value)
    with pytest.raises(ValueError, match="size must be 1, 2, 4 or 8"):
        kvm.marshal.attr_set(vm._ioctl, vm.ffi, "KVM_SET_DEVICE_ATTR", 0, 0, 0, size=True)


def test_10b_a_bad_stack_changes_no_register(vm) -> None:
    import kvm.x86
    if vm.arch != "x86_64":
        pytest.skip("the mode set-up helpers are x86's")
    vm.add_memory(0, 0x10000)
    vcpu = vm.create_vcpu(0)
    sregs, regs = bytes(vm.ffi.buffer(vcpu.sregs)), bytes(vm.ffi.buffer(vcpu.regs))
    for stack, error in ((-1, ValueError), (2**64, ValueError), (1.5, TypeError), (True, TypeError)):
        with pytest.raises(error, match="stack"):
            kvm.x86.setup_real_mode(vcpu, 0x1000, stack=stack)
    assert bytes(vm.ffi.buffer(vcpu.sregs)) == sregs and bytes(vm.ffi.buffer(vcpu.regs)) == regs


def test_11_a_kick_consumed_by_the_raw_run_does_not_stop_the_next_run(vm) -> None:
    mem, vcpu = real_mode_guest(vm, bytes([0xF4]))  # hlt
    vcpu.kick()
    with pytest.raises(kvm.KvmError) as info:
        vcpu.ioctls.run()
    assert info.value.errno == errno.EINTR and not vcpu.immediate_exit
    assert isinstance(vcpu.run(), kvm.HltExit)


def test_12_ioctls_interrupted_by_a_signal_are_tried_again(system) -> None:
    import signal
    previous = signal.signal(signal.SIGALRM, lambda *_: None)
    signal.setitimer(signal.ITIMER_REAL, 0.0002, 0.0002)
    try:
        for _ in range(200):
            system.create_vm().close()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0, 0)
        signal.signal(signal.SIGALRM, previous)
