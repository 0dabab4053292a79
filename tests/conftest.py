"""The suite's fixtures, and session-wide tallies of the layout cross-checks.

`system` (an open `kvm.Kvm()`, skipping the test when /dev/kvm is unusable) and `vm` (a VM on it) are
taken by every test that runs on the real /dev/kvm; guest builders are plain functions in guests.py.

Tallies: test_gcc_oracle.py and test_cffi_layout.py record what each binding compared through the
`gcc_oracle_summary` and `cffi_layout_summary` fixtures; the terminal summary adds them up, e.g.
`gcc oracle: 31415 values compared on 16 bindings, 0 mismatches`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from typing import Any

import pytest

import kvm
from guests import KVM_PATH


def _open_reason() -> str | None:
    if not os.path.exists(KVM_PATH):
        return f"{KVM_PATH} does not exist (no KVM on this machine)"
    if not os.access(KVM_PATH, os.R_OK | os.W_OK):
        return f"{KVM_PATH} is not readable and writable by this user"
    return None


@pytest.fixture
def system() -> Iterator[Any]:
    """An open `kvm.Kvm()`; the test is skipped when /dev/kvm is unusable."""
    reason = _open_reason()
    if reason:
        pytest.skip(reason)
    try:
        k = kvm.Kvm(KVM_PATH)
    except OSError as exc:
        pytest.skip(f"cannot open {KVM_PATH}: {exc}")
    with k:
        yield k


@pytest.fixture
def vm(system: Any) -> Iterator[Any]:
    """A VM of `system`, closed after the test."""
    with system.create_vm() as machine:
        yield machine


# -- tallies of the layout cross-checks ------------------------------------------------------------


@dataclasses.dataclass
class Tally:
    """Per binding: how many values of each kind were compared, how many differed, what was skipped."""

    compared: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict)
    mismatches: dict[str, int] = dataclasses.field(default_factory=dict)
    skipped: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict)
    also_checked: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict)
    notes: dict[str, list[str]] = dataclasses.field(default_factory=dict)

    def record(self, binding: str, compared: dict[str, int], mismatches: int,
               skipped: dict[str, int] | None = None, also_checked: dict[str, int] | None = None,
               **notes: object) -> None:
        self.compared[binding] = dict(compared)
        self.mismatches[binding] = mismatches
        self.skipped[binding] = dict(skipped or {})
        self.also_checked[binding] = dict(also_checked or {})
        self.notes[binding] = [k.replace("_", " ") for k, v in notes.items() if v]

    def total(self, binding: str | None = None) -> int:
        tables = [self.compared[binding]] if binding else list(self.compared.values())
        return sum(n for table in tables for n in table.values())

    def by_kind(self, tables: dict[str, dict[str, int]]) -> dict[str, int]:
        out: dict[str, int] = {}
        for table in tables.values():
            for kind, n in table.items():
                out[kind] = out.get(kind, 0) + n
        return out


_TALLIES = pytest.StashKey[dict[str, Tally]]()


def _tally(config: pytest.Config, name: str) -> Tally:
    tallies = config.stash.setdefault(_TALLIES, {})
    return tallies.setdefault(name, Tally())


@pytest.fixture
def gcc_oracle_summary(request: pytest.FixtureRequest) -> Tally:
    return _tally(request.config, "gcc oracle")


@pytest.fixture
def cffi_layout_summary(request: pytest.FixtureRequest) -> Tally:
    return _tally(request.config, "cffi layout")


@pytest.fixture
def cffi_foreign_layout_summary(request: pytest.FixtureRequest) -> Tally:
    return _tally(request.config, "cffi layout of other arches (by this host's cffi)")


def _kinds(counts: dict[str, int]) -> str:
    return ", ".join(f"{kind} {n}" for kind, n in counts.items() if n)


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:  # type: ignore[no-untyped-def]
    tallies = config.stash.get(_TALLIES, {})
    for name, tally in tallies.items():
        if not tally.compared:
            continue
        bindings = len(tally.compared)
        mismatches = sum(tally.mismatches.values())
        terminalreporter.write_line(
            f"{name}: {tally.total()} values compared on {bindings} binding{'s' if bindings != 1 else ''}, "
            f"{mismatches} mismatch{'es' if mismatches != 1 else ''}")
        line = f"{name}: by kind: {_kinds(tally.by_kind(tally.compared))}"
        also = tally.by_kind(tally.also_checked)
        if any(also.values()):
            line += f"; also checked: {_kinds(also)}"
        skipped = tally.by_kind(tally.skipped)
        if any(skipped.values()):
            line += f"; not compared: {_kinds(skipped)}"
        terminalreporter.write_line(line)
        if config.getoption("verbose") > 0:
            for binding in tally.compared:
                extra = "".join(f", {n}" for n in tally.notes[binding])
                terminalreporter.write_line(
                    f"  {binding}: {tally.total(binding)} values ({_kinds(tally.compared[binding])}), "
                    f"{tally.mismatches[binding]} mismatches{extra}")
