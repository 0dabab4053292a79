"""The examples and the guide's code snippets run on real /dev/kvm and do what they say."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _run(script: str) -> str:
    done = subprocess.run([sys.executable, str(ROOT / "examples" / script)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_example_hello_real_mode(system):
    assert _run("hello_real_mode.py") == "Hello, KVM!\n"


def test_example_long_mode(system):
    assert _run("long_mode.py") == f"sum of squares 1..100 = {sum(i * i for i in range(1, 101))}\n"


def test_guide_snippets_run(system, capsys):
    text = (ROOT / "docs" / "guide.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) >= 8
    namespace: dict = {"__name__": "guide"}
    for i, block in enumerate(blocks):
        exec(compile(block, f"docs/guide.md[python block {i}]", "exec"), namespace)
    out = capsys.readouterr().out
    assert "KVM_CREATE_VCPU on vm fd: EINVAL (Invalid argument)" in out
    assert "outside slot 0" in out
