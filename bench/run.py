"""Every benchmark figure in one command, Python measured side by side with a C baseline.

Run: python bench/run.py [--quick] [--rounds R] [--json FILE]

Builds bench/baseline.c with gcc into bench/build/, then for R rounds runs each paired workload (port-I/O
and MMIO exit loops, a bare ioctl, nothing -> first exit, guest-memory copies) as the C baseline and then
as bench/workloads.py, each in a fresh process, and compares the two per round. Then it times cold
imports and regenerating the bindings. Prints one table; `--json FILE` keeps every raw sample.
Exit status: 0 whether or not targets are met, 1 if a workload failed, 2 if nothing could be measured.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from typing import Any, Callable

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(BENCH_DIR)
BASELINE_SOURCE = os.path.join(BENCH_DIR, "baseline.c")
BASELINE_BINARY = os.path.join(BENCH_DIR, "build", "baseline")  # bench/build/ is git-ignored
WORKLOADS_SCRIPT = os.path.join(BENCH_DIR, "workloads.py")
PROCESS_TIMEOUT = 600  # seconds; a workload taking longer is stuck

# workload name -> N (exits, calls, VMs or bytes) for a full and for a --quick run
FULL_SIZES = {"pio": 200_000, "mmio": 200_000, "ioctl": 2_000_000, "first": 50, "memory": 1 << 30}
QUICK_SIZES = {"pio": 20_000, "mmio": 20_000, "ioctl": 200_000, "first": 10, "memory": 1 << 28}
# workloads also run as a plain-stdlib Python program (bench/workloads.py), whose figure kvm's is held to
STDLIB_TWINS = {"first": "first-stdlib"}
# keys whose values the C and the Python run of a workload must agree on
AGREEING_KEYS = ("exits", "checksum", "calls", "present", "bytes")


class BenchError(Exception):
    """A workload, the baseline build, or a tool failed; the message says which and why."""


@dataclasses.dataclass
class Row:
    figure: str
    c: str
    python: str
    vs_c: str
    target: str
    ok: bool | None  # None: no target


# ---------------------------------------------------------------------------------------------
# Running things


def run_process(command: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run `command` to completion, capturing its output; BenchError with its stderr when it fails or hangs.
    It runs in the checkout, unless `env` has PYTHONPATH: then in its first directory (a copy of kvm, see
    package_copy)."""
    cwd = env["PYTHONPATH"].split(os.pathsep)[0] if env and "PYTHONPATH" in env else REPO_ROOT
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=PROCESS_TIMEOUT, cwd=cwd, env=env)
    except subprocess.TimeoutExpired:
        raise BenchError(f"`{' '.join(command)}` did not finish in {PROCESS_TIMEOUT} s") from None
    if done.returncode != 0:
        raise BenchError(f"`{' '.join(command)}` failed (exit {done.returncode}):\n{done.stderr.strip()}")
    return done


def run_json(command: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    lines = run_process(command, env).stdout.strip().splitlines()
    if not lines:
        raise BenchError(f"`{' '.join(command)}` printed nothing")
    return json.loads(lines[-1])  # type: ignore[no-any-return]


def wall_seconds(command: list[str], env: dict[str, str] | None = None) -> float:
    start = time.perf_counter()
    run_process(command, env)
    return time.perf_counter() - start


def check_host() -> None:
    if not os.path.exists("/dev/kvm"):
        raise BenchError("/dev/kvm is absent: KVM is not available here (kvm module not loaded, or the "
                         "device is not passed into this container)")
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        raise BenchError("/dev/kvm is not readable and writable by this user (add yourself to group kvm)")
    if shutil.which("gcc") is None:
        raise BenchError("gcc not found: the C baseline (bench/baseline.c) is built with gcc; install it")


def kvm_header_flags() -> tuple[list[str], str]:
    """gcc flags that make <linux/kvm.h> available, and where it comes from.

    The system's header when gcc finds one; else the newest bundled kernel's headers for this arch from
    the kvm-bindgen cache (downloaded there first if needed).
    """
    probe = subprocess.run(["gcc", "-E", "-x", "c", "-", "-o", os.devnull], input="#include <linux/kvm.h>\n",
                           capture_output=True, text=True)
    if probe.returncode == 0:
        return [], "the system's <linux/kvm.h>"
    from kvm_bindgen.arches import host_arch
    from kvm_bindgen.inputs import InputError, bundled_tree, load_manifest

    arch = host_arch()
    kernels = [k for k in load_manifest().values() if arch in k.arches]
    if arch is None or not kernels:
        raise BenchError(f"no <linux/kvm.h> on this system and no bundled kernel headers for {os.uname().machine}")
    newest = max(kernels, key=lambda k: tuple(int(part) for part in k.kernel.split(".")))
    try:
        tree = bundled_tree(newest, arch)
    except InputError as exc:
        raise BenchError(f"no <linux/kvm.h> on this system, and the bundled headers are unavailable: {exc}") from None
    return [f"-I{d}" for d in tree.include_dirs], f"bundled headers {tree.origin}"


def build_baseline() -> str:
    flags, origin = kvm_header_flags()
    os.makedirs(os.path.dirname(BASELINE_BINARY), exist_ok=True)
    run_process(["gcc", "-O2", "-Wall", *flags, "-o", BASELINE_BINARY, BASELINE_SOURCE])
    return origin


# ---------------------------------------------------------------------------------------------
# Measuring


def run_rounds(sizes: dict[str, int], rounds: int, failures: dict[str, str]) -> dict[str, list[dict[str, Any]]]:
    """Per workload, one {"c": ..., "python": ...} pair of outputs per round (with "stdlib" in the Python
    one for the workloads of STDLIB_TWINS). The order of the programs turns by one each round, so that
    whatever a process leaves behind for the next one (KVM frees a VM's memory after its process exits)
    falls on each of them in turn rather than always on the same.

    A workload that fails (or whose C and Python runs disagree) is recorded in `failures` and dropped.
    """
    pairs: dict[str, list[dict[str, Any]]] = {name: [] for name in sizes}
    for round_number in range(1, rounds + 1):
        for name, n in sizes.items():
            if name in failures:
                continue
            programs = {"c": [BASELINE_BINARY, name, str(n)], "python": [sys.executable, WORKLOADS_SCRIPT, name, str(n)]}
            if name in STDLIB_TWINS:  # the same work in plain Python
                programs["stdlib"] = [sys.executable, WORKLOADS_SCRIPT, STDLIB_TWINS[name], str(n)]
            order = list(programs)
            shift = round_number % len(order)
            outputs: dict[str, dict[str, Any]] = {}
            seconds: dict[str, float] = {}
            try:
                for program in order[shift:] + order[:shift]:
                    start = time.perf_counter()
                    outputs[program] = run_json(programs[program])
                    seconds[program] = time.perf_counter() - start
                c, python = outputs["c"], outputs["python"]
                if "stdlib" in outputs:
                    python["stdlib"] = outputs["stdlib"]
                for key in AGREEING_KEYS:
                    if key in c and c[key] != python.get(key):
                        raise BenchError(f"{name}: C gives {key} = {c[key]}, Python {python.get(key)}")
            except BenchError as exc:
                failures[name] = str(exc)
                print(f"round {round_number}/{rounds} {name}: FAILED (reported at the end)", file=sys.stderr)
                continue
            pairs[name].append({"c": c, "python": python})
            print(f"round {round_number}/{rounds} {name:<6} " + ", ".join(f"{program} process {seconds[program]:5.2f} s"
                                                                  for program in order), file=sys.stderr)
    return pairs


# A bare interpreter (no site module) for the import figures: what a venv's .pth files import at start-up
# (this checkout's editable install imports re, pathlib and contextlib) would not count as kvm's.
BARE = [sys.executable, "-S"]


def import_ms(module: str, env: dict[str, str] | None = None) -> float:
    """A fresh bare interpreter's own `-X importtime` total for `module`, in ms."""
    stderr = run_process([*BARE, "-X", "importtime", "-c", f"import {module}"], env).stderr
    totals = [int(m.group(1)) for m in re.finditer(rf"\|\s*(\d+) \| {re.escape(module)}$", stderr, re.M)]
    if not totals:
        raise BenchError(f"-X importtime reported no total for {module}:\n{stderr[-2000:]}")
    return totals[-1] / 1000


def package_copy(directory: str, bytecode: bool) -> dict[str, str]:
    """A copy of the installed kvm package (its compiled run loop and kvm.generated included) in
    `directory`, with or without its bytecode written, and the environment that imports it from there in a
    bare interpreter (cffi's backend found where it is installed)."""
    import _cffi_backend

    import kvm
    import kvm.generated

    target = os.path.join(directory, "kvm")
    shutil.copytree(os.path.dirname(kvm.__file__), target, ignore=shutil.ignore_patterns("__pycache__"))
    generated = os.path.dirname(kvm.generated.__file__)
    if not os.path.exists(os.path.join(target, "generated")):  # (an editable install maps it from generated/)
        shutil.copytree(generated, os.path.join(target, "generated"), ignore=shutil.ignore_patterns("__pycache__"))
    if bytecode:
        run_process([sys.executable, "-m", "compileall", "-q", target])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([directory, os.path.dirname(_cffi_backend.__file__)]),
               PYTHONDONTWRITEBYTECODE="1")
    found = run_process([*BARE, "-c", "import kvm; print(kvm.__file__)"], env).stdout.strip()
    if os.path.dirname(found) != target:
        raise BenchError(f"the copy of kvm in {directory} is not the one imported ({found})")
    return env


def measure_imports(runs: int) -> dict[str, list[float]]:
    import tempfile

    with tempfile.TemporaryDirectory() as without, tempfile.TemporaryDirectory() as with_:
        no_bytecode, bytecode = package_copy(without, False), package_copy(with_, True)
        return {
            "import kvm, no bytecode (importtime ms)": [import_ms("kvm", no_bytecode) for _ in range(runs)],
            "import kvm, bytecode (importtime ms)": [import_ms("kvm", bytecode) for _ in range(runs)],
            "import kvm.generated (importtime ms)": [import_ms("kvm.generated", bytecode) for _ in range(runs)],
            "python -S -c 'import kvm' (wall ms)": [1000 * wall_seconds([*BARE, "-c", "import kvm"], bytecode)
                                                 for _ in range(runs)],
            "python -S -c pass (wall ms)": [1000 * wall_seconds([*BARE, "-c", "pass"]) for _ in range(runs)],
        }


def measure_regeneration(runs: int) -> list[float]:
    return [wall_seconds([sys.executable, "-m", "kvm_bindgen.cli", "generate", "--check"]) for _ in range(runs)]


# ---------------------------------------------------------------------------------------------
# Summarising: medians over rounds; every Python/C comparison is made within a round, then the median taken


def per_round(pairs: list[dict[str, Any]], value: Callable[[dict[str, Any]], float]) -> tuple[list[float], list[float]]:
    return [value(p["c"]) for p in pairs], [value(p["python"]) for p in pairs]


def median_ratio(numerators: list[float], denominators: list[float]) -> float:
    return statistics.median(a / b for a, b in zip(numerators, denominators))


def exit_loop_rows(label: str, pairs: list[dict[str, Any]]) -> list[Row]:
    c_ns, py_ns = per_round(pairs, lambda run: 1e9 * run["seconds"] / run["exits"])
    rate_ratio = median_ratio(c_ns, py_ns)  # Python exits/s / C exits/s
    overhead = statistics.median(p - c for p, c in zip(py_ns, c_ns))
    return [
        Row(f"{label}: exits/s", f"{1e6 / statistics.median(c_ns):,.1f} k/s",
            f"{1e6 / statistics.median(py_ns):,.1f} k/s", f"{rate_ratio:.2f}x", ">= 0.90x C", rate_ratio >= 0.90),
        Row(f"{label}: time per exit", f"{statistics.median(c_ns):,.0f} ns", f"{statistics.median(py_ns):,.0f} ns",
            f"{overhead:+,.0f} ns", "-", None),
    ]


def ioctl_rows(pairs: list[dict[str, Any]]) -> list[Row]:
    c_ns, py_ns = per_round(pairs, lambda run: 1e9 * run["seconds"] / run["calls"])
    ratio = median_ratio(py_ns, c_ns)
    return [Row("bare ioctl (KVM_CHECK_EXTENSION): time per call", f"{statistics.median(c_ns):,.0f} ns",
                f"{statistics.median(py_ns):,.0f} ns", f"{ratio:.2f}x", "< 2x C", ratio < 2)]


def first_exit_rows(pairs: list[dict[str, Any]]) -> list[Row]:
    rows = []
    for label, value, limit in (
        ("first exit: first VM of the process", lambda run: 1e3 * run["seconds"][0], 1.1),
        ("first exit: steady state (median of the rest)", lambda run: 1e3 * statistics.median(run["seconds"][1:]), 1.15),
    ):
        c_ms, py_ms = per_round(pairs, value)
        stdlib_ms = [value(p["python"]["stdlib"]) for p in pairs]
        ratio = median_ratio(py_ms, c_ms)
        rows.append(Row(label, f"{statistics.median(c_ms):.3f} ms", f"{statistics.median(py_ms):.3f} ms",
                        f"{ratio:.2f}x", f"<= {limit}x C", ratio <= limit))
        stdlib_ratio = median_ratio(stdlib_ms, c_ms)
        vs_stdlib = median_ratio(py_ms, stdlib_ms)
        rows.append(Row(f"{label}, plain stdlib (os, fcntl, mmap)", f"{statistics.median(c_ms):.3f} ms",
                        f"{statistics.median(stdlib_ms):.3f} ms", f"{stdlib_ratio:.2f}x", "-", None))
        rows.append(Row(f"{label}: kvm vs plain stdlib", "-", "-", f"{vs_stdlib:.2f}x stdlib", "<= 1.00x stdlib",
                        vs_stdlib <= 1.0))
    import_ms_samples = [1e3 * p["python"]["import_seconds"] for p in pairs]
    rows.append(Row("first exit: `import kvm` before the clock starts", "-",
                    f"{statistics.median(import_ms_samples):.2f} ms", "-", "-", None))
    return rows


def memory_rows(pairs: list[dict[str, Any]]) -> list[Row]:
    rows = []
    read_method = pairs[-1]["python"]["read_method"]
    for label, key in (("memory write: mem.write(0, src)", "write_seconds"),
                       (f"memory read: {read_method}", "read_seconds")):
        c_gbs, py_gbs = per_round(pairs, lambda run: run["bytes"] / run[key] / 1e9)
        ratio = median_ratio(py_gbs, c_gbs)
        rows.append(Row(label, f"{statistics.median(c_gbs):.2f} GB/s", f"{statistics.median(py_gbs):.2f} GB/s",
                        f"{ratio:.2f}x", ">= 0.9x memcpy", ratio >= 0.9))
    return rows


def import_rows(imports: dict[str, list[float]]) -> list[Row]:
    targets = {"import kvm, no bytecode (importtime ms)": 50.0, "import kvm, bytecode (importtime ms)": 20.0,
               "import kvm.generated (importtime ms)": 50.0}
    labels = {
        "import kvm, no bytecode (importtime ms)": "import kvm, its bytecode not written (-S -X importtime)",
        "import kvm, bytecode (importtime ms)": "import kvm, its bytecode written (-S -X importtime)",
        "import kvm.generated (importtime ms)": "import kvm.generated, bytecode written (-S -X importtime)",
        "python -S -c 'import kvm' (wall ms)": "python -S -c 'import kvm', bytecode written, wall",
        "python -S -c pass (wall ms)": "python -S -c pass, wall (interpreter alone)",
    }
    rows = []
    for key, samples in imports.items():
        ms = statistics.median(samples)
        limit = targets.get(key)
        rows.append(Row(labels[key], "-", f"{ms:.1f} ms", "-", f"< {limit:.0f} ms" if limit else "-",
                        ms < limit if limit else None))
    return rows


def regeneration_row(samples: list[float]) -> Row:
    seconds = statistics.median(samples)
    return Row("regenerate all bindings (kvm-bindgen generate --check)", "-", f"{seconds:.2f} s", "-", "< 60 s",
               seconds < 60)


SUMMARIES: dict[str, Callable[[list[dict[str, Any]]], list[Row]]] = {
    "pio": lambda pairs: exit_loop_rows("port I/O exit loop", pairs),
    "mmio": lambda pairs: exit_loop_rows("MMIO exit loop", pairs),
    "ioctl": ioctl_rows,
    "first": first_exit_rows,
    "memory": memory_rows,
}


def print_table(rows: list[Row]) -> None:
    header = ("figure", "C", "Python", "Python vs C", "target", "ok")
    cells = [header] + [(r.figure, r.c, r.python, r.vs_c, r.target,
                         "-" if r.ok is None else ("ok" if r.ok else "MISSED")) for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    for i, row in enumerate(cells):
        print("  ".join(cell.ljust(width) if col == 0 else cell.rjust(width)
                        for col, (cell, width) in enumerate(zip(row, widths))).rstrip())
        if i == 0:
            print("  ".join("-" * width for width in widths))


# ---------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 rounds and smaller N: a smoke test, not a figure")
    parser.add_argument("--rounds", type=int, help="C/Python rounds per paired figure (default 5; --quick: 2)")
    parser.add_argument("--json", metavar="FILE", help="write every raw sample and the summary to FILE")
    args = parser.parse_args()
    sizes = QUICK_SIZES if args.quick else FULL_SIZES
    rounds = args.rounds or (2 if args.quick else 5)
    import_runs, regeneration_runs = (3, 1) if args.quick else (7, 2)

    try:
        check_host()
        header_origin = build_baseline()
    except BenchError as exc:
        print(f"run.py: {exc}", file=sys.stderr)
        return 2
    print(f"baseline built with gcc -O2 against {header_origin}; {rounds} rounds, N = {sizes}", file=sys.stderr)

    failures: dict[str, str] = {}
    pairs = run_rounds(sizes, rounds, failures)
    rows = [row for name, summarise in SUMMARIES.items() if pairs[name] for row in summarise(pairs[name])]
    imports: dict[str, list[float]] = {}
    regeneration: list[float] = []
    try:
        imports = measure_imports(import_runs)
        rows += import_rows(imports)
    except BenchError as exc:
        failures["imports"] = str(exc)
    try:
        regeneration = measure_regeneration(regeneration_runs)
        rows.append(regeneration_row(regeneration))
    except BenchError as exc:
        failures["regeneration"] = str(exc)

    print_table(rows)
    for name, message in failures.items():
        print(f"\nFAILED {name}: {message}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({
                "date": datetime.datetime.now().isoformat(timespec="seconds"),
                "python": sys.version,
                "machine": {"uname": platform.uname()._asdict(), "cpus": os.cpu_count()},
                "rounds": rounds,
                "sizes": sizes,
                "baseline_headers": header_origin,
                "paired": pairs,
                "imports": imports,
                "regeneration_seconds": regeneration,
                "summary": [dataclasses.asdict(row) for row in rows],
                "failures": failures,
            }, f, indent=1)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
