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


def _quoted_lines(code: str) -> list[str]:
    """A block's lines, joined where a call continues on the next line, whitespace collapsed."""
    joined = re.sub(r",\n\s+", ", ", code.strip())
    return [" ".join(line.split()) for line in joined.splitlines() if line.strip()]


def test_one_ioctl_page_quotes_the_code_as_it_is():
    """docs/one-ioctl.md quotes the generated wrapper and the ergonomic method's call: both still read so."""
    page = (ROOT / "docs" / "one-ioctl.md").read_text()
    sources = {
        "## 4.": ROOT / "generated" / "ioctls_linux_7_2_x86_64.py",
        "## 7.": ROOT / "kvm" / "vm.py",
    }
    for heading, source in sources.items():
        section = page[page.index(heading):]
        block = re.search(r"```python\n(.*?)```", section, re.S).group(1)
        code = "\n".join(_quoted_lines(source.read_text()))
        for line in _quoted_lines(block):
            assert line in code, f"docs/one-ioctl.md {heading} quotes a line {source.name} no longer has: {line}"
