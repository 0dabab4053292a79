"""The short run of the stateful fuzzer (tests/fuzz_machine.py) for CI: a few batches, each in its own process.

Asserts what issue 12 asks of the whole public API: no crash (a batch or a forked child killed by a signal),
no hang (a batch past its timeout, a run() that close() cannot stop, a forked child that does not exit), no fd
or KVM object left once everything was dropped, and every exception one of kvm's own types or naming the
argument; the findings are in the assertion message. The long run is `python bench/fuzz.py --calls 100000`.
"""

from __future__ import annotations

import os

import pytest

pytest.importorskip("hypothesis")

import kvm  # noqa: E402
from guests import KVM_PATH  # noqa: E402


def _kvm_unusable() -> str | None:
    if not os.access(KVM_PATH, os.R_OK | os.W_OK):
        return f"{KVM_PATH} is missing or not readable and writable"
    try:
        kvm.Kvm(KVM_PATH).close()
    except OSError as exc:
        return f"cannot open {KVM_PATH}: {exc}"
    return None


REASON = _kvm_unusable()
pytestmark = pytest.mark.skipif(REASON is not None, reason=REASON or "")

CALLS = int(os.environ.get("KVM_FUZZ_CALLS", "8000"))  # 4 batches of 2,000: about 20 s on 2 cores
BATCH_CALLS = 2000


def test_stateful_fuzz_short_run():
    import fuzz_machine

    summary = fuzz_machine.run_batches(CALLS, batch_calls=BATCH_CALLS, jobs=2, timeout=90.0, seed=1)
    tally = summary["tally"]
    fds, objects = fuzz_machine.fd_growth(summary)
    report = fuzz_machine.format_summary(summary)
    print(report)
    assert tally["calls"] >= CALLS, report
    assert not summary["crashes"] and tally["child_crashes"] == 0, report
    assert not summary["hangs"] and tally["hangs"] == 0, report
    assert not summary["errors"], report
    assert (fds, objects) == (0, 0), report
    assert tally["good"] == tally["exceptions"], report
    assert not tally["findings"], report
