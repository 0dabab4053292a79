"""The compiled run loop's lifetimes under stress: close and fork while another thread is inside run().

Run by every env; `tox -e asan` (.ci/asan) runs them, with the other tests of the compiled path, on a
kvm._speedups built with AddressSanitizer and under PYTHONMALLOC=malloc_debug, where a use after free or
an out-of-bounds access in kvm/_speedups.c aborts the run. There, KVM_EXPECT_ASAN names the instrumented
extension, and the first test checks that it is the one in use.
"""

from __future__ import annotations

import os
import threading
import time

import pytest

import kvm
import kvm._accel
from guests import real_mode_guest

pytestmark = pytest.mark.skipif(kvm.generated.ARCH != "x86_64", reason="the guests are x86 real-mode code")

SPIN = bytes([0xEB, 0xFE])  # jmp $
OUT_LOOP = bytes([0xE6, 0x10, 0xEB, 0xFC])  # 1: out 0x10, al; jmp 1b   (an IoExit at every run())


def test_the_instrumented_extension_is_the_one_in_use():
    expected = os.environ.get("KVM_EXPECT_ASAN")
    if not expected:
        pytest.skip("not the asan env (KVM_EXPECT_ASAN is unset)")
    import kvm._speedups

    assert os.path.samefile(kvm._speedups.__file__, expected), kvm._speedups.__file__
    assert kvm._accel.NATIVE and kvm._accel.Runner is kvm._speedups.Runner
    with open("/proc/self/maps") as maps:
        assert "libasan" in maps.read()
    assert os.environ.get("PYTHONMALLOC") in ("malloc", "malloc_debug", "debug")


def _spin_until_closed(vcpu, outcome):
    """run() until the vCPU is closed under it, reading each exit (its decoded members and its data)."""
    try:
        while True:
            exit = vcpu.run()
            if isinstance(exit, kvm.IoExit):
                outcome["last"] = (exit.port, bytes(exit.data))
    except kvm.ClosedError:
        outcome["end"] = "closed"
    except BaseException as exc:  # noqa: BLE001 - reported to the test
        outcome["end"] = repr(exc)
    if "last" in outcome:  # the last exit stays readable after close (a private copy of the page)
        assert exit.port == 0x10


@pytest.mark.parametrize("code", [SPIN, OUT_LOOP], ids=["in-guest", "between-exits"])
@pytest.mark.parametrize("closing", ["vcpu", "vm", "last-reference"])
def test_close_from_another_thread_while_run_loops(system, code, closing):
    for round in range(8):
        vm = system.create_vm()
        _, vcpu = real_mode_guest(vm, code)
        outcome: dict[str, object] = {}
        thread = threading.Thread(target=_spin_until_closed, args=(vcpu, outcome))
        thread.start()
        time.sleep(0.002 * round)  # from "not yet in KVM_RUN" to "deep in the loop"
        if closing == "vcpu":
            vcpu.close()
            vm.close()
        elif closing == "vm":
            vm.close()
        else:  # the running thread holds the last reference to the vCPU; the VM goes
            del vcpu
            vm.close()
        thread.join(10)
        assert not thread.is_alive(), "close() did not stop the run() in progress"
        assert outcome["end"] == "closed", outcome


def test_fork_while_another_thread_is_in_run(vm):
    _, vcpu = real_mode_guest(vm, SPIN)
    result = {}
    thread = threading.Thread(target=lambda: result.setdefault("exit", type(vcpu.run()).__name__))
    thread.start()
    time.sleep(0.1)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: the running thread is not here, and the vCPU is refused
        status = 1
        try:
            os.close(read_end)
            try:
                vcpu.run()
                outcome = "ran"
            except kvm.ForkedError:
                outcome = "refused"
            os.write(write_end, outcome.encode())
            status = 0
        finally:
            os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        outcome = pipe.read().decode()
    _, status = os.waitpid(pid, 0)
    assert (outcome, status) == ("refused", 0)
    vcpu.kick()  # the parent's run() is unaffected by the child and returns when kicked
    thread.join(5)
    assert not thread.is_alive() and result["exit"] == "IntrExit"
