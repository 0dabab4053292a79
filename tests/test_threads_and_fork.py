"""Lifetimes, threads and processes: close semantics (kvm_run unmapped, files released), immediate_exit, kick,
concurrent vCPUs, fork, fd leaks."""

from __future__ import annotations

import errno
import os
import threading
import time

import pytest

import kvm
from guests import real_mode_guest, require_cap

SPIN = bytes([0xEB, 0xFE])  # jmp $   (spins until kicked)


def _kvm_fds() -> int:
    count = 0
    for name in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{name}").startswith("anon_inode:kvm")
        except OSError:
            pass
    return count


def test_close_is_deterministic_and_cascades(system):
    baseline = _kvm_fds()
    vm = system.create_vm()
    mem = vm.add_memory(0, 0x1000)
    vcpu = vm.create_vcpu(0)
    assert _kvm_fds() > baseline
    vm.close()
    vm.close()  # idempotent
    assert vm.closed and vcpu.closed and mem.closed
    assert _kvm_fds() == baseline  # the VM and vCPU fds are closed right away
    with pytest.raises(kvm.ClosedError):
        vm.fileno()
    with pytest.raises(kvm.ClosedError):
        vcpu.run()
    with pytest.raises(kvm.ClosedError):
        vcpu.regs
    with pytest.raises(kvm.ClosedError):
        vm.create_vcpu(1)
    with pytest.raises(kvm.ClosedError):
        mem.read(0, 1)
    with system.create_vm() as vm2:
        with vm2.create_vcpu(0) as v:
            assert not v.closed
        assert v.closed and not vm2.closed
    assert vm2.closed


def test_immediate_exit_gives_eintr(vm):
    require_cap(vm, "IMMEDIATE_EXIT")
    _, vcpu = real_mode_guest(vm, bytes([0xF4]))
    vcpu.immediate_exit = True
    with pytest.raises(kvm.KvmError) as info:
        vcpu._ioctl("KVM_RUN")
    assert (info.value.ioctl, info.value.errno) == ("KVM_RUN", errno.EINTR)
    exit = vcpu.run()
    assert isinstance(exit, kvm.IntrExit)
    assert vcpu.immediate_exit  # set by the user: left alone
    vcpu.immediate_exit = False
    assert isinstance(vcpu.run(), kvm.HltExit)


def test_kick_from_another_thread(vm):
    require_cap(vm, "IMMEDIATE_EXIT")
    _, vcpu = real_mode_guest(vm, SPIN)
    result = {}

    def runner():
        start = time.monotonic()
        result["exit"] = vcpu.run()
        result["elapsed"] = time.monotonic() - start

    thread = threading.Thread(target=runner)
    thread.start()
    time.sleep(0.2)
    assert thread.is_alive()  # the guest spins, the GIL is free for this thread
    kicked_at = time.monotonic()
    vcpu.kick()
    thread.join(5)
    assert not thread.is_alive(), "kick() did not interrupt run()"
    assert isinstance(result["exit"], kvm.IntrExit)
    assert time.monotonic() - kicked_at < 2
    assert not vcpu.immediate_exit  # the kick's immediate_exit is consumed
    # a kick before run() is not lost: the next run() returns at once
    vcpu.kick()
    assert isinstance(vcpu.run(), kvm.IntrExit)


def test_vcpus_run_in_threads_concurrently(vm):
    count = 4
    mem = vm.add_memory(0, 0x10000)
    code = bytes([
        0xE6, 0x10,  # out 0x10, al   (al = 1 + vCPU id, set below)
        0xEB, 0xFE,  # jmp $          (spin until kicked)
    ])
    mem.write(0x1000, code)
    vcpus = []
    for i in range(count):
        v = vm.create_vcpu(i)
        kvm.x86.setup_real_mode(v, entry=0x1000)
        v.regs = {"rax": 0x30 + i}
        vcpus.append(v)
    values = {}
    spinning = threading.Barrier(count + 1)

    def runner(v):
        exit = v.run()
        values[v.id] = exit.value
        spinning.wait(10)
        values[(v.id, "second")] = type(v.run())

    threads = [threading.Thread(target=runner, args=(v,)) for v in vcpus]
    for t in threads:
        t.start()
    spinning.wait(10)
    time.sleep(0.1)
    assert all(t.is_alive() for t in threads)  # all four guests spin at once
    for v in vcpus:
        v.kick()
    for t in threads:
        t.join(5)
        assert not t.is_alive()
    assert {i: values[i] for i in range(count)} == {i: 0x30 + i for i in range(count)}
    assert all(values[(i, "second")] is kvm.IntrExit for i in range(count))


def test_use_from_forked_child_is_refused(vm):
    _, vcpu = real_mode_guest(vm, bytes([0xF4]))
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        try:
            os.close(read_end)
            outcome = []
            for action in (vcpu.run, lambda: vm.create_vcpu(1), lambda: vcpu.regs):
                try:
                    action()
                    outcome.append("ran")
                except kvm.ForkedError as exc:
                    outcome.append("forked" if "fork" in str(exc) else "bad message")
                except BaseException as exc:  # noqa: BLE001
                    outcome.append(type(exc).__name__)
            os.write(write_end, ",".join(outcome).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        report = pipe.read().decode()
    os.waitpid(pid, 0)
    assert report == "forked,forked,forked"
    assert isinstance(vcpu.run(), kvm.HltExit)  # the parent is unaffected


def test_kick_in_a_forked_child_signals_the_childs_thread(vm):
    """The thread id kick() signals is cached per thread: a child of fork() must not use the parent's."""
    require_cap(vm, "IMMEDIATE_EXIT")
    _, vcpu = real_mode_guest(vm, bytes([0xF4]))
    assert isinstance(vcpu.run(), kvm.HltExit)  # this thread's id is now known (and cached)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: a new VM spinning in this (the forking) thread, kicked from another one
        try:
            os.close(read_end)
            with kvm.Kvm() as k, k.create_vm() as child_vm:
                _, spinner = real_mode_guest(child_vm, SPIN)
                threading.Timer(0.2, spinner.kick).start()
                outcome = type(spinner.run()).__name__
            os.write(write_end, outcome.encode())
        finally:
            os._exit(0)
    os.close(write_end)
    deadline = time.monotonic() + 10
    while os.waitpid(pid, os.WNOHANG) == (0, 0):
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            pytest.fail("kick() in the forked child did not interrupt run()")
        time.sleep(0.05)
    with os.fdopen(read_end, "rb") as pipe:
        assert pipe.read().decode() == "IntrExit"


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_no_fd_leak_over_10000_vm_cycles(system):
    for _ in range(10):  # warm up lazy state (stats of caps, imports)
        with system.create_vm() as vm:
            vm.create_vcpu(0)
    before = _open_fds()
    for i in range(10_000):
        vm = system.create_vm()
        if i % 100 == 0:
            vm.add_memory(0, 0x1000)
            vm.create_vcpu(0)
        vm.close()
    assert _open_fds() == before


def vcpu_mappings() -> list[str]:
    with open("/proc/self/maps") as maps:
        return [line for line in maps if "kvm-vcpu" in line]


def _mapped(address: int) -> bool:
    with open("/proc/self/maps") as maps:
        return any(int(line.split("-")[0], 16) == address for line in maps)


def test_closing_unmaps_kvm_run_when_nothing_holds_it(system):
    with system.create_vm() as vm:
        _, vcpu = real_mode_guest(vm, bytes([0xF4]))
        assert isinstance(vcpu.run(), kvm.HltExit)
        address = vcpu._mapping.address
        assert _mapped(address)
    assert not _mapped(address)  # at close, not at the next garbage collection


def test_closing_releases_the_vcpu_file_although_exits_and_views_live_on(system):
    """The kvm_run mapping would hold the vCPU's file (and so the VM) open: close() detaches it."""
    assert vcpu_mappings() == []
    vm = system.create_vm()
    _, vcpu = real_mode_guest(vm, bytes([0xB0, 0x41, 0xE6, 0x10, 0xF4]))  # out 0x10 'A'; hlt
    exit = vcpu.run()
    data, run = exit.data, vcpu.kvm_run
    assert len(vcpu_mappings()) == 1
    vm.close()
    assert vcpu_mappings() == []  # the VM is gone from the kernel now, not when the exit goes
    # what was handed out reads the last contents
    assert bytes(data) == b"A" and exit.port == 0x10 and run.exit_reason == system.binding.CONSTANTS["KVM_EXIT_IO"]


def test_dropping_the_last_reference_to_a_kvm_closes_its_fd():
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        pytest.skip("/dev/kvm is absent or not usable by this user")
    import gc

    gc.disable()  # by reference counting, not by a later garbage collection
    try:
        k = kvm.Kvm()
        fd = k.fileno()
        del k
        with pytest.raises(OSError):
            os.fstat(fd)
    finally:
        gc.enable()


def test_a_runner_taken_before_fork_refuses_in_the_child(vm):
    _, vcpu = real_mode_guest(vm, bytes([0xF4]))
    run = vcpu.run
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        try:
            os.close(read_end)
            try:
                run()
                outcome = b"ran"
            except kvm.ForkedError:
                outcome = b"refused"
            except BaseException as exc:  # noqa: BLE001 - reported to the parent
                outcome = repr(exc).encode()
            os.write(write_end, outcome)
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        outcome = pipe.read()
    os.waitpid(pid, 0)
    assert outcome == b"refused"
    assert isinstance(run(), kvm.HltExit)  # the parent's vCPU is unaffected


def _spinning_in_thread(vcpu, call):
    """Start `call()` (a run of a spinning guest) in a thread; returns the thread and its result dict."""
    result = {}

    def target():
        try:
            result["value"] = call()
        except BaseException as exc:  # (reported to the test)
            result["error"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    time.sleep(0.2)
    assert thread.is_alive()
    return thread, result


def test_close_racing_a_call_in_another_thread_never_reaches_a_new_vms_vcpu(system):
    """A call that read the fd number before another thread's close() must not land on a new object
    that got the same number: close() waits for calls in flight; calls after it raise ClosedError."""
    import sys
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible, between any two bytecodes
    misdirected, unexpected = 0, []
    try:
        for _ in range(150):
            vm = system.create_vm()
            first = vm.create_vcpu(0)
            go = threading.Event()

            def hammer():
                go.wait()
                for _ in range(30):
                    try:
                        first.regs = {"rax": 0xDEADBEEF}
                    except kvm.ClosedError:
                        pass
                    except Exception as exc:  # (any other type is a finding)
                        unexpected.append(repr(exc))

            thread = threading.Thread(target=hammer)
            thread.start()
            go.set()
            vm.close()
            with system.create_vm() as vm2:
                second = vm2.create_vcpu(0)
                thread.join()
                misdirected += second.regs.rax == 0xDEADBEEF
    finally:
        sys.setswitchinterval(old)
    assert (misdirected, unexpected) == (0, [])


def test_a_second_thread_cannot_run_a_running_vcpu_and_close_still_stops_the_first(vm):
    require_cap(vm, "IMMEDIATE_EXIT")
    _, vcpu = real_mode_guest(vm, SPIN)
    thread, result = _spinning_in_thread(vcpu, vcpu.run)
    with pytest.raises(kvm.StateError, match="in run\\(\\) in another thread"):
        vcpu.run()
    with pytest.raises(kvm.StateError):
        vcpu.ioctls.run()
    started = time.monotonic()
    vm.close()
    thread.join(5)
    assert not thread.is_alive() and time.monotonic() - started < 3
    assert isinstance(result["error"], kvm.ClosedError)


def test_the_generated_run_wrapper_is_kicked_and_stopped_like_run(vm):
    require_cap(vm, "IMMEDIATE_EXIT")
    _, vcpu = real_mode_guest(vm, SPIN)
    thread, result = _spinning_in_thread(vcpu, vcpu.ioctls.run)
    vcpu.kick()
    thread.join(5)
    assert not thread.is_alive(), "kick() did not interrupt vcpu.ioctls.run()"
    assert result["error"].errno == errno.EINTR  # the raw wrapper reports KVM_RUN's EINTR as it is
    vcpu.immediate_exit = False
    thread, result = _spinning_in_thread(vcpu, vcpu.ioctls.run)
    vm.close()
    thread.join(5)
    assert not thread.is_alive(), "close() did not stop vcpu.ioctls.run()"
    assert isinstance(result["error"], kvm.ClosedError)


def test_kick_restores_a_handler_that_was_replaced_by_sig_ign(vm):
    import signal
    require_cap(vm, "IMMEDIATE_EXIT")
    _, vcpu = real_mode_guest(vm, SPIN)
    previous = signal.signal(kvm.vcpu.KICK_SIGNAL, signal.SIG_IGN)
    try:
        thread, result = _spinning_in_thread(vcpu, vcpu.run)
        vcpu.kick()
        thread.join(5)
        assert not thread.is_alive(), "kick() with SIG_IGN on the kick signal did not interrupt run()"
        assert isinstance(result["value"], kvm.IntrExit)
    finally:
        signal.signal(kvm.vcpu.KICK_SIGNAL, previous)


def test_the_kick_signal_cannot_be_masked_while_the_guest_runs(vm):
    vcpu = vm.create_vcpu(0)
    with pytest.raises(ValueError, match="signals: .*KICK_SIGNAL"):
        vcpu.set_signal_mask([kvm.vcpu.KICK_SIGNAL])
    vcpu.set_signal_mask([int(__import__("signal").SIGUSR1)])  # another signal is fine


@pytest.mark.parametrize("signum", ["SIGSEGV", "SIGINT", "SIGCHLD", "SIGBUS"])
def test_install_kick_handler_refuses_signals_with_another_meaning(signum):
    import signal
    before = kvm.vcpu.KICK_SIGNAL
    with pytest.raises(ValueError, match="cannot be the kick signal"):
        kvm.install_kick_handler(getattr(signal, signum))
    assert kvm.vcpu.KICK_SIGNAL == before


def test_kick_and_close_work_when_kvm_was_first_imported_in_another_thread():
    """Python's signal.signal() works in the main thread only: the kick handler must not depend on it."""
    import subprocess
    import sys
    script = r"""
import threading, time, signal
state = {}
def work():
    import kvm
    from guests import real_mode_guest
    vm = kvm.Kvm().create_vm()
    _, vcpu = real_mode_guest(vm, bytes([0xEB, 0xFE]))
    state["vm"], state["vcpu"] = vm, vcpu
    t = threading.Thread(target=lambda: state.setdefault("exit", vcpu.run()))
    t.start(); time.sleep(0.3)
    vcpu.kick(); t.join(5)
    assert not t.is_alive(), "kick did not interrupt run()"
    assert type(state["exit"]).__name__ == "IntrExit", state["exit"]
    t = threading.Thread(target=lambda: state.setdefault("second", vcpu.run()))
    t.start(); time.sleep(0.3)
    vm.close(); t.join(5)
    assert not t.is_alive() and vm.closed, "close did not stop run()"
    state["ok"] = True
w = threading.Thread(target=work); w.start(); w.join(30)
assert state.get("ok"), state
print("ok")
"""
    env = dict(os.environ, PYTHONPATH=os.path.dirname(__file__) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stdout + done.stderr


@pytest.mark.parametrize("make", ["create_vcpu", "create_device"])
def test_a_child_refused_because_its_vm_closed_meanwhile_leaks_nothing(system, monkeypatch, make):
    """A close() of the VM in another thread lands between the ioctl that made the child's fd and the child's
    registration: the child is refused (ClosedError), its fd is closed once, and nothing is reported later by
    the refused object's finalizer."""
    import gc
    import sys

    import kvm.vm as kvm_vm

    vm = system.create_vm()
    vfio = vm.binding.CONSTANTS.get("KVM_DEV_TYPE_VFIO")
    if make == "create_device":
        try:
            vm.create_device(vfio, test=True)
        except (kvm.KvmError, kvm.CapabilityError, TypeError) as exc:
            pytest.skip(f"this host creates no VFIO device: {exc}")
    made: list[int] = []
    real_new_fd, real_for_binding = kvm_vm.marshal.new_fd, kvm_vm.for_binding

    def close_the_vm_meanwhile() -> None:
        closer = threading.Thread(target=vm.close)
        closer.start()
        while not vm.closed:  # (close() marks the VM closed, then waits for this call to leave)
            time.sleep(0.001)

    def new_fd(fd: int) -> int:
        made.append(fd)
        close_the_vm_meanwhile()
        return real_new_fd(fd)

    def for_binding(cls: type, binding: object) -> type:
        close_the_vm_meanwhile()
        return real_for_binding(cls, binding)

    monkeypatch.setattr(kvm_vm.marshal, "new_fd", new_fd)
    monkeypatch.setattr(kvm_vm, "for_binding", for_binding)
    reported: list[object] = []
    monkeypatch.setattr(sys, "unraisablehook", reported.append)
    before = set(os.listdir("/proc/self/fd"))
    with pytest.raises(kvm.ClosedError):
        vm.create_device(vfio) if make == "create_device" else vm.create_vcpu(0)
    gc.collect()
    time.sleep(0.05)  # (the closing thread finishes)
    left = set(os.listdir("/proc/self/fd")) - before
    assert not left, [os.readlink(f"/proc/self/fd/{fd}") for fd in left]
    assert not reported


def test_one_hold_fd_block_is_entered_once_even_from_two_threads(vm):
    held = vm.hold_fd()
    inside, leave = threading.Event(), threading.Event()

    def hold() -> None:
        with held:
            inside.set()
            leave.wait(5)

    thread = threading.Thread(target=hold)
    thread.start()
    assert inside.wait(5)
    with pytest.raises(RuntimeError, match="entered once"):
        with held:
            pass
    leave.set()
    thread.join(5)
    assert vm._users == [] and not vm.closed
    vm.close()  # (nothing left holding the fd: returns at once)


def test_a_fork_inside_a_hold_fd_block_leaves_it_cleanly_in_both_processes(vm):
    pid = -1
    try:
        with vm.hold_fd() as fd:
            pid = os.fork()
    except BaseException:
        if pid == 0:
            os._exit(3)  # (the child could not leave the block)
        raise
    if pid == 0:
        try:
            vm.check_extension(0)
        except kvm.ForkedError:
            os._exit(0)
        except BaseException:
            pass
        os._exit(4)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0 and fd == vm.fileno() and vm._users == []
