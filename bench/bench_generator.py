"""Generator figures: cold `import kvm.generated` / `import kvm` and regenerating every bundled binding.

Run: python bench/bench_generator.py [--runs N]
Import times are each a fresh interpreter's own `-X importtime` total for the module (median of N);
regeneration is `kvm-bindgen generate --check` from cached inputs, wall time (median of N).
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import time


def import_ms(module: str) -> float:
    out = subprocess.run([sys.executable, "-X", "importtime", "-c", f"import {module}"],
                         capture_output=True, text=True, check=True).stderr
    totals = [int(m.group(1)) for m in re.finditer(rf"\|\s*(\d+) \| {re.escape(module)}$", out, re.M)]
    return totals[-1] / 1000


def regenerate_s() -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "kvm_bindgen.cli", "generate", "--check"], check=True,
                   capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    for module in ("kvm.generated", "kvm"):
        samples = [import_ms(module) for _ in range(args.runs)]
        print(f"import {module}: median {statistics.median(samples):.1f} ms, max {max(samples):.1f} ms "
              f"({args.runs} fresh interpreters)")
    samples = [regenerate_s() for _ in range(max(1, args.runs // 2))]
    print(f"regenerate all bundled bindings: median {statistics.median(samples):.2f} s, "
          f"max {max(samples):.2f} s ({len(samples)} runs)")


if __name__ == "__main__":
    main()
