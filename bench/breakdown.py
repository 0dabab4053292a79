"""Where the time of a port-I/O exit goes: the loop of bench/run.py taken apart step by step.

Run: python bench/breakdown.py [--rounds R] [--exits N] [--first | --steps | --coldness]

Each step is a bench/workloads.py variant run right after the C baseline (`baseline pio N`), in fresh
processes, R rounds; the figure is the median over rounds of (Python ns/exit - C ns/exit). The first two
steps are floors measured with bench/floor.c (bare compiled KVM_RUN calls, built here as an extension
module into bench/build/); then each step adds one thing to the previous one; the last lines are
variants: a lower bound for eagerly decoded exits, the data as a memoryview, the pure-Python path.

With --first, the steady-state first exit instead: C's time next to Python's, which bench/syscall_clock.c
(preloaded) splits into time inside system calls and time outside them. With --steps, the same first exit
step by step (Kvm(), create_vm, add_memory, ...), kvm's against the plain-stdlib program's, the two
alternating in one process. With --coldness, bench/coldness.c:
what a distinct line of code or page of data costs right after an exit, beyond its cost after an ioctl
that stays in the host.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import sysconfig

from run import (BASELINE_BINARY, BENCH_DIR, WORKLOADS_SCRIPT, BenchError, build_baseline, check_host, kvm_header_flags,
                 run_json, run_process)

FLOOR_SOURCE = os.path.join(BENCH_DIR, "floor.c")
SYSCALL_CLOCK_SOURCE = os.path.join(BENCH_DIR, "syscall_clock.c")
COLDNESS_SOURCE = os.path.join(BENCH_DIR, "coldness.c")

STEPS = [
    ("pio-floor-keep-gil", {}, "Python loop + a compiled KVM_RUN call holding the GIL (not safe to use)"),
    ("pio-floor-release-gil", {}, "Python loop + a compiled KVM_RUN call releasing the GIL: the floor"),
    ("pio-run-only", {}, "vcpu.run(): the Runner, exit reason -> the IoExit object"),
    ("pio-port-only", {}, "+ isinstance(exit, IoExit) + exit.port"),
    ("pio", {}, "+ exit.value: the figure of bench/run.py"),
    ("pio-slot-reads", {}, "port and value read from __slots__ instead (lower bound of eager decoding)"),
    ("pio-data-view", {}, "exit.data[0] instead of exit.value (a memoryview per exit)"),
    ("pio", {"KVM_PURE_PYTHON": "1"}, "the bench/run.py figure on the pure-Python path"),
]


def build_floor(header_flags: list[str]) -> None:
    """bench/floor.c -> bench/build/floor<EXT_SUFFIX>, importable by the workloads."""
    target = os.path.join(BENCH_DIR, "build", "floor" + sysconfig.get_config_var("EXT_SUFFIX"))
    include = sysconfig.get_paths()["include"]
    run_process(["gcc", "-O2", "-Wall", "-shared", "-fPIC", f"-I{include}", *header_flags, "-o", target,
                 FLOOR_SOURCE])


def build_syscall_clock() -> str:
    target = os.path.join(BENCH_DIR, "build", "syscall_clock.so")
    run_process(["gcc", "-O2", "-Wall", "-shared", "-fPIC", "-o", target, SYSCALL_CLOCK_SOURCE, "-ldl"])
    return target


def first_exit_split(rounds: int, vms: int) -> None:
    """Steady-state first exit: C's time, and Python's split into system calls and the rest."""
    preload = {**os.environ, "LD_PRELOAD": build_syscall_clock()}
    c_wall, py_wall, py_syscalls, py_rest, calls = [], [], [], [], []
    for round_number in range(rounds):
        c = run_json([BASELINE_BINARY, "first", str(vms)])
        python = run_json([sys.executable, WORKLOADS_SCRIPT, "first", str(vms)], preload)
        if "syscall_seconds" not in python:
            raise BenchError("the Python side did not see bench/syscall_clock.c (LD_PRELOAD)")
        # the first VM of each process is not steady state
        c_wall.append(statistics.median(c["seconds"][1:]))
        py_wall.append(statistics.median(python["seconds"][1:]))
        py_syscalls.append(statistics.median(python["syscall_seconds"][1:]))
        py_rest.append(statistics.median(a - b for a, b in zip(python["seconds"][1:], python["syscall_seconds"][1:])))
        calls.append(statistics.median(python["syscalls"][1:]))
        print(f"round {round_number + 1}/{rounds} done", file=sys.stderr)
    print(f"{'us (median of rounds)':>22}  steady-state first exit")
    for value, label in [
        (c_wall, "C: wall (nearly all of it in system calls)"),
        (py_wall, "Python: wall"),
        (py_syscalls, f"Python: in system calls ({statistics.median(calls):.0f} calls)"),
        (py_rest, "Python: outside system calls (the interpreter and kvm's own code)"),
    ]:
        print(f"{statistics.median(value) * 1e6:>22.1f}  {label}")


def first_exit_steps(rounds: int, vms: int) -> None:
    """Steady-state first exit, step by step: kvm's public API against the plain-stdlib program, alternating in
    one process (`workloads.py first-steps`), R processes; the median over processes of each step's median."""
    medians: dict[str, dict[str, list[float]]] = {}
    for round_number in range(rounds):
        out = run_json([sys.executable, WORKLOADS_SCRIPT, "first-steps", str(vms)])
        for side, steps in out.items():
            for step, seconds in steps.items():
                medians.setdefault(side, {}).setdefault(step, []).append(statistics.median(seconds))
        print(f"round {round_number + 1}/{rounds} done", file=sys.stderr)
    kvm_side, stdlib_side = medians["kvm"], medians["stdlib"]
    print(f"{'step':>16}  {'kvm us':>8}  {'stdlib us':>9}  {'kvm - stdlib':>12}")
    for step in kvm_side:
        ours, plain = statistics.median(kvm_side[step]) * 1e6, statistics.median(stdlib_side[step]) * 1e6
        print(f"{step:>16}  {ours:>8.1f}  {plain:>9.1f}  {ours - plain:>+12.1f}")
    total = [sum(statistics.median(s[step]) for step in s) * 1e6 for s in (kvm_side, stdlib_side)]
    print(f"{'all (sum)':>16}  {total[0]:>8.1f}  {total[1]:>9.1f}  {total[0] - total[1]:>+12.1f}")


def coldness(rounds: int, n: int) -> None:
    """What a distinct code line or data page costs after a KVM_RUN exit, against after a host-only ioctl."""
    binary = os.path.join(BENCH_DIR, "build", "coldness")
    run_process(["gcc", "-O2", "-Wall", *kvm_header_flags()[0], "-o", binary, COLDNESS_SOURCE])
    code, data = [], []
    for round_number in range(rounds):
        out = run_json([binary, str(n)])
        lines = out["lines"]
        run, host = out["run_ns"], out["host_ns"]
        code.append(((run[1] - run[0]) - (host[1] - host[0])) / lines)
        data.append(((run[2] - run[0]) - (host[2] - host[0])) / lines)
        print(f"round {round_number + 1}/{rounds} done", file=sys.stderr)
    print(f"{'ns (median of rounds)':>22}  extra cost of a distinct ... touched right after a KVM_RUN exit")
    print(f"{statistics.median(code):>22.1f}  code cache line (a call of a small function on its own line)")
    print(f"{statistics.median(data):>22.1f}  data page (a read of one byte of its own 4 KiB page)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--exits", type=int, default=100_000)
    parser.add_argument("--first", action="store_true",
                        help="take the steady-state first exit apart instead (--exits is then VMs per process)")
    parser.add_argument("--steps", action="store_true",
                        help="the steady-state first exit step by step, kvm against the plain-stdlib program "
                             "(--exits is then VMs of each per process)")
    parser.add_argument("--coldness", action="store_true",
                        help="measure what code and data cost right after an exit (bench/coldness.c)")
    args = parser.parse_args()
    check_host()
    if args.coldness:
        coldness(args.rounds, min(args.exits, 50_000))
        return
    if args.steps:
        first_exit_steps(args.rounds, min(args.exits, 400))
        return
    build_baseline()
    if args.first:
        first_exit_split(args.rounds, min(args.exits, 200))
        return
    build_floor(kvm_header_flags()[0])
    overheads: list[list[float]] = [[] for _ in STEPS]
    for round_number in range(args.rounds):
        for i, (workload, env, _) in enumerate(STEPS):
            c = run_json([BASELINE_BINARY, "pio", str(args.exits)])
            python = run_json([sys.executable, WORKLOADS_SCRIPT, workload, str(args.exits)], {**os.environ, **env})
            overheads[i].append((python["seconds"] - c["seconds"]) / args.exits * 1e9)
        print(f"round {round_number + 1}/{args.rounds} done", file=sys.stderr)
    print(f"{'ns/exit over C (median)':>24}  step")
    for (workload, env, label), samples in zip(STEPS, overheads):
        print(f"{statistics.median(samples):>24.0f}  {label}")


if __name__ == "__main__":
    main()
