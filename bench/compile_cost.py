"""What `import kvm` without bytecode spends compiling: each module it loads, compiled from its source.

Run: python bench/compile_cost.py [--repeat N]

Imports kvm, then compiles the source of every module of kvm (and of its default binding) that the import
loaded, N times each (default 5), and prints the best time per module and their sum: the part of a
no-bytecode import (bench/run.py's "bytecode not written" figure) that is the compiler's, before any of
the modules runs.
"""

from __future__ import annotations

import argparse
import sys
import time

import kvm


def compile_times(repeat: int) -> list[tuple[float, int, str]]:
    """(best seconds, source lines, module name) for every kvm module `import kvm` loaded, slowest first."""
    rows = []
    for name, module in sorted(sys.modules.items()):
        path = getattr(module, "__file__", None)
        if not (name == "kvm" or name.startswith("kvm.")) or not path or not path.endswith(".py"):
            continue
        with open(path, encoding="utf-8") as source_file:
            source = source_file.read()
        best = float("inf")
        for _ in range(repeat):
            start = time.perf_counter()
            compile(source, path, "exec")
            best = min(best, time.perf_counter() - start)
        rows.append((best, source.count("\n"), name))
    return sorted(rows, reverse=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5, help="compilations per module, the best kept (default 5)")
    args = parser.parse_args()
    rows = compile_times(max(1, args.repeat))
    for seconds, lines, name in rows:
        print(f"{1e3 * seconds:7.2f} ms  {lines:5} lines  {name}")
    print(f"{1e3 * sum(r[0] for r in rows):7.2f} ms  {sum(r[1] for r in rows):5} lines  "
          f"all {len(rows)} modules {kvm.__name__} loads")


if __name__ == "__main__":
    main()
