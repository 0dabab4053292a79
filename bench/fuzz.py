"""The long run of the stateful fuzzer of kvm's public API (tests/fuzz_machine.py): one command, figures out.

    python bench/fuzz.py --calls 100000            # batches of 2,500 calls, two processes at a time
    python bench/fuzz.py --calls 100000 --json fuzz.json

Each batch runs in a fresh process (a crash is counted from its exit signal, a hang from its timeout) and
reports its fd and KVM object growth once everything was dropped and gc.collect() ran. Prints the figures
(calls, crashes, hangs, fd growth, kernel-object growth, exceptions and the share that are kvm's own types or
name the argument) and every finding with its shortest reproduction; exits 1 unless all are clean.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))

import fuzz_machine  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=100_000, help="API calls in all (default 100000)")
    parser.add_argument("--batch-calls", type=int, default=2500, help="calls per batch process (default 2500)")
    parser.add_argument("--jobs", type=int, default=2, help="batch processes at a time (default 2)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds before a batch counts as hung")
    parser.add_argument("--seed", type=int, default=1, help="seed of the first batch (batch i: seed + i)")
    parser.add_argument("--json", help="also write the merged figures and findings to this file")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    args = parser.parse_args()
    started = time.monotonic()
    summary = fuzz_machine.run_batches(
        args.calls, batch_calls=args.batch_calls, jobs=args.jobs, timeout=args.timeout, seed=args.seed,
        progress=None if args.quiet else (lambda line: print(line, file=sys.stderr, flush=True)))
    tally = summary["tally"]
    fds, objects = fuzz_machine.fd_growth(summary)
    crashes = len(summary["crashes"]) + tally["child_crashes"]
    hangs = len(summary["hangs"]) + tally["hangs"]
    share = 100.0 * tally["good"] / tally["exceptions"] if tally["exceptions"] else 100.0
    print(fuzz_machine.format_summary(summary, top=100))
    print(f"figures: calls {tally['calls']}, crashes {crashes}, hangs {hangs}, fd growth {fds}, "
          f"kernel-object growth {objects}, exceptions {tally['exceptions']}, library types or naming the argument "
          f"{share:.2f}%, forks {tally['forks']}, time {time.monotonic() - started:.0f} s "
          f"({args.jobs} processes, {summary['batches']} batches)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=1)
    clean = (crashes, hangs, fds, objects, len(summary["errors"])) == (0, 0, 0, 0, 0) and not tally["findings"]
    return 0 if clean else 1


if __name__ == "__main__":
    sys.exit(main())
