"""How much interpreter work the way to a VM's first exit is: the bytecode instructions it executes, per function.

Run: python bench/opcodes.py [--top N]

Runs the `first` workload's steps (Kvm(), create_vm, add_memory, write, create_vcpu, setup_real_mode, run)
twice in this process under `sys.settrace` with opcode events: the process's first VM, then a second one
(the steady state). Prints both totals and the N functions that run the most instructions in each. A count,
not a time: right after a system call each instruction costs 40-65 ns on the nested host of bench/README.md.
"""

from __future__ import annotations

import argparse
import collections
import sys
from types import FrameType
from typing import Any

import kvm
from workloads import CODE_ADDR, MEM_SIZE, PIO_CODE


def count_first_exit() -> collections.Counter[str]:
    counts: collections.Counter[str] = collections.Counter()

    def tracer(frame: FrameType, event: str, arg: Any) -> Any:
        frame.f_trace_opcodes = True
        if event == "opcode":
            code = frame.f_code
            counts[f"{code.co_filename.rsplit('/', 1)[-1]}:{code.co_name}"] += 1
        return tracer

    sys.settrace(tracer)
    try:
        k = kvm.Kvm()
        vm = k.create_vm()
        mem = vm.add_memory(0, MEM_SIZE)
        mem.write(CODE_ADDR, PIO_CODE)
        vcpu = vm.create_vcpu(0)
        kvm.x86.setup_real_mode(vcpu, entry=CODE_ADDR)
        exit = vcpu.run()
    finally:
        sys.settrace(None)
    if not isinstance(exit, kvm.IoExit):
        raise SystemExit(f"expected an IoExit, got {exit!r}")
    vm.close()
    k.close()
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--top", type=int, default=12, help="functions listed for each VM (default 12)")
    args = parser.parse_args()
    for label, counts in (("first VM of the process", count_first_exit()), ("a later VM", count_first_exit())):
        print(f"{label}: {sum(counts.values()):,} bytecode instructions")
        for name, n in counts.most_common(args.top):
            print(f"  {n:6,}  {name}")


if __name__ == "__main__":
    main()
