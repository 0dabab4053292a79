"""The README's two commands are what a new user runs: CI runs the second one exactly as written, and the
first one's steps exist."""

from __future__ import annotations

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return re.findall(r"^    (python3 -m venv .*)$", text, re.M)[:2]


def test_ci_runs_the_readmes_test_command_verbatim() -> None:
    setup, tests = _commands()
    assert tests in (ROOT / ".ci" / "run").read_text().splitlines()


def test_the_first_command_runs_a_guest_and_info_before_the_generator() -> None:
    setup, _ = _commands()
    steps = [step.strip() for step in setup.split("&&")]
    assert steps[0] == "python3 -m venv .venv"
    assert any("examples/hello_real_mode.py" in step for step in steps)
    assert (ROOT / "examples" / "hello_real_mode.py").is_file()
    assert steps.index(".venv/bin/python -m kvm info") < steps.index(".venv/bin/kvm-bindgen fetch")
