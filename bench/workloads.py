"""The Python side of each benchmark figure, written against the public `kvm` API only.

Run: python bench/workloads.py pio|mmio|ioctl|first|first-stdlib|first-steps|memory N

Each workload mirrors the same-named one of bench/baseline.c (same guest code, same work, same timed
part) and prints one JSON object with the same keys; `first` also reports how long `import kvm` took,
and `memory` how guest memory was read back. bench/run.py runs these interleaved with the C baseline.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, Callable

now = time.perf_counter  # CLOCK_MONOTONIC, like the baseline's clock

import_start = now()
import kvm  # noqa: E402  (timed: reported by the `first` workload)

IMPORT_SECONDS = now() - import_start

MEM_SIZE = 0x10000
CODE_ADDR = 0x1000

# mov dx, 0x3f8; mov al, 'A'; 1: out dx, al; jmp 1b
PIO_CODE = bytes([0xBA, 0xF8, 0x03, 0xB0, 0x41, 0xEE, 0xEB, 0xFD])
# mov ax, 0x2000; mov ds, ax; mov al, 'A'; 1: mov [0], al; jmp 1b   (writes GPA 0x20000: no memory)
MMIO_CODE = bytes([0xB8, 0x00, 0x20, 0x8E, 0xD8, 0xB0, 0x41, 0xA2, 0x00, 0x00, 0xEB, 0xFB])


class WorkloadError(Exception):
    """The guest or KVM did not behave as the workload expects (e.g. an unexpected exit)."""


def real_mode_vcpu(vm: Any, code: bytes) -> Any:
    """64 KiB of memory at GPA 0 holding `code` at CODE_ADDR, and vCPU 0 in real mode about to run it."""
    mem = vm.add_memory(0, MEM_SIZE)
    mem.write(CODE_ADDR, code)
    vcpu = vm.create_vcpu(0)
    kvm.x86.setup_real_mode(vcpu, entry=CODE_ADDR)
    return vcpu


def pio(n: int) -> dict[str, Any]:
    """n port-I/O exits; the handler reads the port and the data (`value`: the byte `out` wrote)."""
    with kvm.Kvm() as k, k.create_vm() as vm:
        vcpu = real_mode_vcpu(vm, PIO_CODE)
        checksum = 0
        start = now()
        for _ in range(n):
            exit = vcpu.run()
            if not isinstance(exit, kvm.IoExit):
                raise WorkloadError(f"expected an IoExit, got {exit!r}")
            checksum += exit.port + exit.value
        seconds = now() - start
    return {"exits": n, "seconds": seconds, "checksum": checksum}


def mmio(n: int) -> dict[str, Any]:
    """n MMIO-write exits; the handler reads the address and the data (`value`: the byte written)."""
    with kvm.Kvm() as k, k.create_vm() as vm:
        vcpu = real_mode_vcpu(vm, MMIO_CODE)
        checksum = 0
        start = now()
        for _ in range(n):
            exit = vcpu.run()
            if not isinstance(exit, kvm.MmioExit):
                raise WorkloadError(f"expected an MmioExit, got {exit!r}")
            checksum += exit.phys_addr + exit.value
        seconds = now() - start
    return {"exits": n, "seconds": seconds, "checksum": checksum}


def ioctl(n: int) -> dict[str, Any]:
    """n KVM_CHECK_EXTENSION(KVM_CAP_USER_MEMORY) calls on /dev/kvm."""
    with kvm.Kvm() as k:
        cap = k.binding.CONSTANTS["KVM_CAP_USER_MEMORY"]
        present = 0
        start = now()
        for _ in range(n):
            present += k.check_extension(cap)
        seconds = now() - start
    return {"calls": n, "seconds": seconds, "present": present}


# the steps of a first exit, as `first-steps` splits it (each ends where the next begins)
FIRST_STEPS = ("Kvm()", "create_vm", "add_memory", "write", "create_vcpu", "setup_real_mode", "run")


def _kvm_first_exit(marks: list[float] | None) -> tuple[Any, ...]:
    """Nothing -> first exit through kvm's public API; the clock read after each step into `marks` (if given).
    Returns what must outlive the clock: the Kvm, the VM, their memory and vCPU, and the exit."""
    k = kvm.Kvm()
    if marks is not None:
        marks.append(now())
    vm = k.create_vm()
    if marks is not None:
        marks.append(now())
    mem = vm.add_memory(0, MEM_SIZE)
    if marks is not None:
        marks.append(now())
    mem.write(CODE_ADDR, PIO_CODE)
    if marks is not None:
        marks.append(now())
    vcpu = vm.create_vcpu(0)
    if marks is not None:
        marks.append(now())
    kvm.x86.setup_real_mode(vcpu, entry=CODE_ADDR)
    if marks is not None:
        marks.append(now())
    exit = vcpu.run()
    if marks is not None:
        marks.append(now())
    return k, vm, mem, vcpu, exit


def first(n: int) -> dict[str, Any]:
    """n times: nothing -> first exit (open /dev/kvm, VM, memory, vCPU, registers, run).

    With bench/syscall_clock.c preloaded (LD_PRELOAD, as breakdown.py --first does), each sample is also
    split: the time spent in system calls ("syscall_seconds") and their number ("syscalls").
    """
    clock = _syscall_clock()
    samples, syscall_seconds, syscalls = [], [], []
    for _ in range(n):
        if clock is not None:
            clock.syscall_clock_start()
        start = now()
        k, vm, mem, vcpu, exit = _kvm_first_exit(None)
        samples.append(now() - start)
        if clock is not None:
            syscall_seconds.append(clock.syscall_clock_ns() / 1e9)
            syscalls.append(clock.syscall_clock_calls())
        if not isinstance(exit, kvm.IoExit):
            raise WorkloadError(f"expected an IoExit first, got {exit!r}")
        vm.close()
        k.close()
        # Dropped outside the clock, as C's teardown is: rebinding these names in the next round would free
        # the objects inside its clock, and the exit holds (a private copy of) the closed vCPU's kvm_run
        # page, unmapped when the last reference to it goes.
        del exit, vcpu, mem, vm, k
    out: dict[str, Any] = {"seconds": samples, "import_seconds": IMPORT_SECONDS}
    if clock is not None:
        out.update(syscall_seconds=syscall_seconds, syscalls=syscalls)
    return out


class _StdlibPlan:
    """What the plain-stdlib first exit needs of the binding (ioctl numbers, record offsets and sizes), read
    before any clock runs."""

    def __init__(self) -> None:
        binding = kvm.generated
        number = {name: spec.number for name, spec in binding.IOCTLS.items()}
        self.get_api_version, self.create_vm = number["KVM_GET_API_VERSION"], number["KVM_CREATE_VM"]
        self.set_memory, self.create_vcpu = number["KVM_SET_USER_MEMORY_REGION"], number["KVM_CREATE_VCPU"]
        self.mmap_size, self.kvm_run = number["KVM_GET_VCPU_MMAP_SIZE"], number["KVM_RUN"]
        self.get_sregs, self.set_sregs = number["KVM_GET_SREGS"], number["KVM_SET_SREGS"]
        self.get_regs, self.set_regs = number["KVM_GET_REGS"], number["KVM_SET_REGS"]
        ffi = binding.ffi
        self.segments = [ffi.offsetof("struct kvm_sregs", s) for s in ("ds", "es", "fs", "gs", "ss", "cs")]
        self.selector = ffi.offsetof("struct kvm_segment", "selector")
        self.rip, self.rflags = ffi.offsetof("struct kvm_regs", "rip"), ffi.offsetof("struct kvm_regs", "rflags")
        self.sregs_size, self.regs_size = ffi.sizeof("struct kvm_sregs"), ffi.sizeof("struct kvm_regs")
        self.exit_reason = ffi.offsetof("struct kvm_run", "exit_reason")
        self.api_version, self.exit_io = binding.CONSTANTS["KVM_API_VERSION"], binding.CONSTANTS["KVM_EXIT_IO"]


def _stdlib_first_exit(plan: _StdlibPlan, marks: list[float] | None) -> tuple[Any, ...]:
    """`_kvm_first_exit` written as the plainest Python program would: os, fcntl, mmap, struct and ctypes
    only. Returns the fds, mappings and address to release, and the exit reason."""
    import ctypes
    import fcntl
    import mmap
    import struct

    system = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    if fcntl.ioctl(system, plan.get_api_version) != plan.api_version:
        raise WorkloadError("KVM_GET_API_VERSION")
    if marks is not None:
        marks.append(now())
    vm = fcntl.ioctl(system, plan.create_vm, 0)
    if marks is not None:
        marks.append(now())
    memory = mmap.mmap(-1, MEM_SIZE)
    address = ctypes.addressof(ctypes.c_char.from_buffer(memory))
    fcntl.ioctl(vm, plan.set_memory, struct.pack("IIQQQ", 0, 0, 0, MEM_SIZE, address))
    if marks is not None:
        marks.append(now())
    memory[CODE_ADDR:CODE_ADDR + len(PIO_CODE)] = PIO_CODE
    if marks is not None:
        marks.append(now())
    vcpu = fcntl.ioctl(vm, plan.create_vcpu, 0)
    run = mmap.mmap(vcpu, fcntl.ioctl(system, plan.mmap_size))
    if marks is not None:
        marks.append(now())
    sregs = bytearray(plan.sregs_size)
    fcntl.ioctl(vcpu, plan.get_sregs, sregs)
    for offset in plan.segments:
        struct.pack_into("Q", sregs, offset, 0)
        struct.pack_into("H", sregs, offset + plan.selector, 0)
    fcntl.ioctl(vcpu, plan.set_sregs, sregs)
    regs = bytearray(plan.regs_size)
    fcntl.ioctl(vcpu, plan.get_regs, regs)
    struct.pack_into("Q", regs, plan.rip, CODE_ADDR)
    struct.pack_into("Q", regs, plan.rflags, 2)
    fcntl.ioctl(vcpu, plan.set_regs, regs)
    if marks is not None:
        marks.append(now())
    fcntl.ioctl(vcpu, plan.kvm_run, 0)
    reason = struct.unpack_from("I", run, plan.exit_reason)[0]
    if marks is not None:
        marks.append(now())
    return system, vm, vcpu, memory, run, address, reason


def _stdlib_release(system: int, vm: int, vcpu: int, memory: Any, run: Any) -> None:
    run.close()
    os.close(vcpu)
    os.close(vm)
    memory.close()
    os.close(system)


def first_stdlib(n: int) -> dict[str, Any]:
    """`first` written as the plainest Python program would (see _stdlib_first_exit; the ioctl numbers and
    record offsets are read from the binding before any clock runs). The figure kvm's start-up is held to: no
    slower than this, doing the same work in the same run."""
    plan = _StdlibPlan()
    samples = []
    for _ in range(n):
        start = now()
        system, vm, vcpu, memory, run, address, reason = _stdlib_first_exit(plan, None)
        samples.append(now() - start)
        if reason != plan.exit_io:
            raise WorkloadError(f"expected an I/O exit first, got exit reason {reason}")
        del address  # (the ctypes view of the mapping: gone before the mapping closes)
        _stdlib_release(system, vm, vcpu, memory, run)
    return {"seconds": samples}


def first_steps(n: int) -> dict[str, Any]:
    """n first exits through kvm and n as the plain-stdlib program, alternating in this one process (kvm's
    first, after one of each to warm up), each split into FIRST_STEPS: {"kvm": {step: [seconds]},
    "stdlib": {step: [seconds]}} (bench/breakdown.py --steps)."""
    plan = _StdlibPlan()
    out: dict[str, dict[str, list[float]]] = {side: {step: [] for step in FIRST_STEPS} for side in ("kvm", "stdlib")}
    for round_number in range(n + 1):
        for side in ("kvm", "stdlib"):
            marks = [now()]
            if side == "kvm":
                k, vm, mem, vcpu, exit = _kvm_first_exit(marks)
                ok = isinstance(exit, kvm.IoExit)
                vm.close()
                k.close()
                del exit, vcpu, mem, vm, k
            else:
                system, vm_fd, vcpu_fd, memory, run, address, reason = _stdlib_first_exit(plan, marks)
                ok = reason == plan.exit_io
                del address
                _stdlib_release(system, vm_fd, vcpu_fd, memory, run)
            if not ok:
                raise WorkloadError(f"{side}: the first exit was not an I/O exit")
            if round_number:  # (the first of each: not steady state)
                for step, begin, end in zip(FIRST_STEPS, marks, marks[1:]):
                    out[side][step].append(end - begin)
    return out


def _syscall_clock() -> Any:
    """bench/syscall_clock.c's counters when it is preloaded, else None."""
    import ctypes

    clock = ctypes.CDLL(None)
    if not hasattr(clock, "syscall_clock_start"):
        return None
    clock.syscall_clock_ns.restype = clock.syscall_clock_calls.restype = ctypes.c_long
    return clock


def memory(size: int) -> dict[str, Any]:
    """Copy `size` bytes into a guest memory slot and back; buffers and guest pages faulted in beforehand."""
    with kvm.Kvm() as k, k.create_vm() as vm:
        mem = vm.add_memory(0, size)
        src = bytearray(b"\xa5") * size
        dst = bytearray(b"\x5a") * size
        mem.fill(0, size, 0x5A)
        start = now()
        mem.write(0, src)
        write_seconds = now() - start
        if hasattr(mem, "read_into"):
            read_method = "read_into"
            start = now()
            mem.read_into(0, dst)
            read_seconds = now() - start
        else:
            read_method = "dst[:] = mem.view() (GuestMemory has no read_into)"
            start = now()
            dst[:] = mem.view()
            read_seconds = now() - start
        if dst != src:
            raise WorkloadError("memory read back differs from what was written")
    return {"bytes": size, "write_seconds": write_seconds, "read_seconds": read_seconds,
            "read_method": read_method}


# The port-I/O loop taken apart, step by step, for bench/breakdown.py ("where the time goes").


def _floor_loop(n: int, name: str) -> dict[str, Any]:
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "build"))
    import floor  # bench/floor.c, built into bench/build/ by breakdown.py

    run = getattr(floor, name)
    with kvm.Kvm() as k, k.create_vm() as vm:
        vcpu = real_mode_vcpu(vm, PIO_CODE)  # (held: a VM holds its vCPUs weakly, a dropped one closes)
        fd = vcpu.fileno()
        start = now()
        for _ in range(n):
            run(fd)
        seconds = now() - start
    return {"exits": n, "seconds": seconds}


def pio_floor_release_gil(n: int) -> dict[str, Any]:
    """A Python loop around the cheapest compiled KVM_RUN call that releases the GIL (bench/floor.c)."""
    return _floor_loop(n, "run_release_gil")


def pio_floor_keep_gil(n: int) -> dict[str, Any]:
    """The same call holding the GIL: what handing the GIL over costs per exit."""
    return _floor_loop(n, "run_keep_gil")


class _DecodedIo:
    """What an exit whose fields were decoded into slots at exit time would offer (the fastest
    attribute read the interpreter has); see pio_slot_reads."""

    __slots__ = ("port", "value")

    def __init__(self, port: int, value: int) -> None:
        self.port = port
        self.value = value


def pio_slot_reads(n: int) -> dict[str, Any]:
    """As `pio`, but the two payload reads are slot reads of an object decoded beforehand: a lower bound
    for any design that decodes exits eagerly (the decoding itself is not counted)."""
    with kvm.Kvm() as k, k.create_vm() as vm:
        vcpu = real_mode_vcpu(vm, PIO_CODE)
        decoded = _DecodedIo(0x3F8, 0x41)
        checksum = 0
        start = now()
        for _ in range(n):
            exit = vcpu.run()
            if not isinstance(exit, kvm.IoExit):
                raise WorkloadError(f"expected an IoExit, got {exit!r}")
            checksum += decoded.port + decoded.value
        seconds = now() - start
    return {"exits": n, "seconds": seconds, "checksum": checksum}


def pio_run_only(n: int) -> dict[str, Any]:
    """`vcpu.run()` returning the typed exit, which nobody reads."""
    with kvm.Kvm() as k, k.create_vm() as vm:
        vcpu = real_mode_vcpu(vm, PIO_CODE)
        start = now()
        for _ in range(n):
            vcpu.run()
        seconds = now() - start
    return {"exits": n, "seconds": seconds}


def pio_port_only(n: int) -> dict[str, Any]:
    """`vcpu.run()`, the type check and `exit.port`."""
    with kvm.Kvm() as k, k.create_vm() as vm:
        vcpu = real_mode_vcpu(vm, PIO_CODE)
        checksum = 0
        start = now()
        for _ in range(n):
            exit = vcpu.run()
            if not isinstance(exit, kvm.IoExit):
                raise WorkloadError(f"expected an IoExit, got {exit!r}")
            checksum += exit.port
        seconds = now() - start
    return {"exits": n, "seconds": seconds}


def pio_data_view(n: int) -> dict[str, Any]:
    """As `pio`, reading the data through the `exit.data` memoryview instead of `exit.value`."""
    with kvm.Kvm() as k, k.create_vm() as vm:
        vcpu = real_mode_vcpu(vm, PIO_CODE)
        checksum = 0
        start = now()
        for _ in range(n):
            exit = vcpu.run()
            if not isinstance(exit, kvm.IoExit):
                raise WorkloadError(f"expected an IoExit, got {exit!r}")
            checksum += exit.port + exit.data[0]
        seconds = now() - start
    return {"exits": n, "seconds": seconds, "checksum": checksum}


WORKLOADS: dict[str, Callable[[int], dict[str, Any]]] = {
    "pio": pio, "mmio": mmio, "ioctl": ioctl, "first": first, "first-stdlib": first_stdlib,
    "first-steps": first_steps, "memory": memory,
    "pio-run-only": pio_run_only, "pio-port-only": pio_port_only,
    "pio-data-view": pio_data_view, "pio-floor-release-gil": pio_floor_release_gil,
    "pio-floor-keep-gil": pio_floor_keep_gil, "pio-slot-reads": pio_slot_reads,
}


def main() -> None:
    if len(sys.argv) != 3 or sys.argv[1] not in WORKLOADS:
        sys.exit(f"usage: {sys.argv[0]} {'|'.join(WORKLOADS)} N")
    print(json.dumps(WORKLOADS[sys.argv[1]](int(sys.argv[2], 0))))


if __name__ == "__main__":
    main()
