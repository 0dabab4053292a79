"""bench/: every workload runs on the real /dev/kvm and agrees with the C baseline (the figures themselves are
bench/run.py's business: no timing is asserted here)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

import kvm

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench")
sys.path.insert(0, BENCH)

import breakdown  # noqa: E402  (bench/ is not a package)
import run  # noqa: E402
import workloads  # noqa: E402

SIZES = {"pio": 2000, "mmio": 2000, "ioctl": 2000, "first": 3, "first-stdlib": 3, "first-steps": 2, "memory": 1 << 20}


@pytest.fixture(scope="module")
def built() -> None:
    if os.uname().machine != "x86_64":
        pytest.skip("the workloads' guest is x86 real-mode code")
    if shutil.which("gcc") is None:
        pytest.skip("gcc is needed to build the C baseline and the floor module")
    run.build_baseline()
    breakdown.build_floor(run.kvm_header_flags()[0])


def _run(command: list[str]) -> dict[str, object]:
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.parametrize("name", sorted(workloads.WORKLOADS))
def test_workload_runs_and_agrees_with_c(system, built, name):
    n = SIZES.get(name, 2000)
    python = _run([sys.executable, run.WORKLOADS_SCRIPT, name, str(n)])
    if name == "first-steps":  # every step of both programs, n times each
        assert {side: {step: len(seconds) for step, seconds in steps.items()} for side, steps in python.items()} == \
            {side: {step: n for step in workloads.FIRST_STEPS} for side in ("kvm", "stdlib")}
        return
    assert python.get("seconds") or python.get("write_seconds"), python
    c_name = {"first-stdlib": "first"}.get(name, name)
    if c_name in ("pio", "mmio", "ioctl", "first", "memory"):
        c = _run([run.BASELINE_BINARY, c_name, str(n)])
        agreeing = [key for key in run.AGREEING_KEYS if key in c]
        assert {k: python.get(k) for k in agreeing} == {k: c[k] for k in agreeing}
    if name.startswith("first"):
        assert len(python["seconds"]) == n  # type: ignore[arg-type]


def test_opcodes_counts_both_vms(system):
    if os.uname().machine != "x86_64":
        pytest.skip("the workloads' guest is x86 real-mode code")
    done = subprocess.run([sys.executable, os.path.join(BENCH, "opcodes.py"), "--top", "1"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    totals = [int(line.split(": ")[1].split()[0].replace(",", "")) for line in done.stdout.splitlines()
              if "bytecode instructions" in line]
    assert len(totals) == 2 and totals[0] >= totals[1] > 0, done.stdout  # (the first VM does the first-time work)


def test_import_is_measured_on_a_copy_in_a_bare_interpreter():
    """measure_imports imports the copies it makes (package_copy checks which kvm a bare interpreter finds)
    and gets a figure for each import, each with its row in the table."""
    imports = run.measure_imports(1)
    assert all(len(samples) == 1 and samples[0] > 0 for samples in imports.values()), imports
    assert len(run.import_rows(imports)) == len(imports)


def test_compile_cost_lists_the_modules_import_loads():
    done = subprocess.run([sys.executable, os.path.join(BENCH, "compile_cost.py"), "--repeat", "1"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    names = {line.split()[-1] for line in lines[:-1]}
    assert {"kvm.system", "kvm._fd", "kvm.vcpu", kvm.system.DEFAULT_BINDING.__name__} <= names, done.stdout
    assert lines[-1].endswith("modules kvm loads") and float(lines[-1].split()[0]) > 0


def test_the_step_split_prints_every_step_of_both_programs(system, built, capsys):
    breakdown.first_exit_steps(1, 2)
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[1:]]
    assert [" ".join(row[:-3]) for row in rows] == [*workloads.FIRST_STEPS, "all (sum)"]
    assert all(float(row[-3]) > 0 and float(row[-2]) > 0 for row in rows), rows
