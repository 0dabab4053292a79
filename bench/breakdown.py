"""Where the time of a port-I/O exit goes: the loop of bench/run.py taken apart step by step.

Run: python bench/breakdown.py [--rounds R] [--exits N]

Each step is a bench/workloads.py variant run right after the C baseline (`baseline pio N`), in fresh
processes, R rounds; the figure is the median over rounds of (Python ns/exit - C ns/exit). Each step
adds one thing to the previous one; the last line is the pure-Python path (KVM_PURE_PYTHON=1).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

from run import BASELINE_BINARY, WORKLOADS_SCRIPT, build_baseline, check_host, run_json

STEPS = [
    ("pio-bare-ioctl", {}, "Python loop + one compiled KVM_RUN call (GIL released): the floor"),
    ("pio-run-only", {}, "+ vcpu.run(): the Runner, exit reason -> the IoExit object"),
    ("pio-port-only", {}, "+ isinstance(exit, IoExit) + exit.port"),
    ("pio", {}, "+ exit.value: the figure of bench/run.py"),
    ("pio-data-view", {}, "exit.data[0] instead of exit.value (a memoryview per exit)"),
    ("pio", {"KVM_PURE_PYTHON": "1"}, "the bench/run.py figure on the pure-Python path"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--exits", type=int, default=100_000)
    args = parser.parse_args()
    check_host()
    build_baseline()
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
