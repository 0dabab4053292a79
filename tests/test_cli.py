"""`python -m kvm caps|info` on the real /dev/kvm."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import pytest

import kvm
from kvm import cli
from kvm.generated import load

pytestmark = pytest.mark.skipif(not os.access("/dev/kvm", os.R_OK | os.W_OK), reason="no usable /dev/kvm")


def run(*argv: str) -> str:
    out = io.StringIO()
    assert cli.main(list(argv), out) == 0
    return out.getvalue()


def test_caps_table() -> None:
    text = run("caps")
    header = text.splitlines()[0].split()
    assert header[:4] == ["CAPABILITY", "NUMBER", "VALUE", "ENABLE"]
    assert "KVM_CAP_USER_MEMORY" in text and "KVM_SET_USER_MEMORY_REGION" in text
    assert "capabilities reported" in text


def test_caps_json_matches_check_extension() -> None:
    data = json.loads(run("caps", "--json", "--all"))
    binding = load()
    rows = {r["name"]: r for r in data["capabilities"]}
    assert set(binding.CAPS) <= set(rows)
    assert rows["KVM_CAP_USER_MEMORY"]["value"] == 1
    enable = rows["KVM_CAP_DIRTY_LOG_RING"]["enable_on"]
    assert enable == sorted(binding.CAPS["KVM_CAP_DIRTY_LOG_RING"].enable_on)
    assert "KVM_CREATE_IRQCHIP" in rows["KVM_CAP_IRQCHIP"]["ioctls"]


def test_caps_shows_the_typed_value() -> None:
    """Bits by name in the table and in --json, ints and bools as check() types them."""
    with kvm.Kvm() as k, k.create_vm() as vm:
        x2apic = vm.caps.x2apic_api.check()
    names = kvm.caps.format_value(x2apic)
    line = next(line for line in run("caps").splitlines() if line.startswith("KVM_CAP_X2APIC_API "))
    assert f"{int(x2apic)} ({names})" in line
    rows = {r["name"]: r for r in json.loads(run("caps", "--json"))["capabilities"]}
    assert rows["KVM_CAP_X2APIC_API"]["typed"] == names and rows["KVM_CAP_X2APIC_API"]["flags"] == names.split("|")
    assert rows["KVM_CAP_MAX_VCPUS"]["typed"] == rows["KVM_CAP_MAX_VCPUS"]["value"] > 1
    assert rows["KVM_CAP_IRQCHIP"]["typed"] is True and "flags" not in rows["KVM_CAP_IRQCHIP"]


def test_info_json() -> None:
    data = json.loads(run("info", "--json"))
    assert data["kernel_release"] == os.uname().release
    assert data["api_version"] == 12
    assert data["binding"]["kernel"] == load().KERNEL and data["binding"]["why"]
    assert all(c["value"] != 0 for c in data["capabilities"])
    assert any(c["name"] == "KVM_CAP_USER_MEMORY" for c in data["capabilities"])


def test_unknown_capabilities_are_shown_not_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    old = load("5.10")  # the oldest bundled binding: a newer running kernel reports numbers it does not name
    monkeypatch.setattr(cli, "_binding", lambda: old)
    data = json.loads(run("info", "--json"))
    known_max = max(c.value for c in old.CAPS.values())
    host = cli.Host(load())
    try:
        newer = [n for n in range(known_max + 1, cli.PROBE_MAX + 1) if host.check(n)]
    finally:
        host.close()
    if not newer:
        pytest.skip("the running kernel reports no capability newer than Linux 5.10's")
    unknown = {c["number"] for c in data["capabilities"] if not c["known"]}
    assert set(newer) <= unknown
    text = run("info")
    assert f"unknown ({newer[0]})" in text


def test_module_entry_point() -> None:
    done = subprocess.run([sys.executable, "-m", "kvm", "info"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "KVM API version: 12" in done.stdout


def test_device_errors_say_what_is_wrong_and_how_to_fix_it(tmp_path) -> None:
    import kvm

    with pytest.raises(kvm.DeviceError, match="/dev/null is not a KVM device: it does not answer KVM_GET_API_VERSION"):
        kvm.Kvm("/dev/null")
    with pytest.raises(kvm.DeviceError, match=r"kvm does not exist \(KVM's device is normally /dev/kvm\)"):
        kvm.Kvm(str(tmp_path / "kvm"))  # a path the user typed wrong: no talk of kernel modules
    # /dev/kvm itself missing, as on a host without KVM: a private mount namespace with an empty /dev
    script = "import kvm\ntry:\n    kvm.Kvm()\nexcept kvm.DeviceError as e:\n    print(e.strerror)\n"
    done = subprocess.run(["unshare", "--mount", "sh", "-c", f"mount -t tmpfs none /dev && {sys.executable} -c '{script}'"],
                          capture_output=True, text=True, timeout=60)
    if done.returncode != 0 and "unshare" in done.stderr:
        pytest.skip(f"cannot make a mount namespace here: {done.stderr.strip()}")
    assert done.stdout.startswith("/dev/kvm does not exist: the kvm module is not loaded"), done.stdout + done.stderr
    pid = os.fork()
    if pid == 0:  # an unprivileged user
        try:
            os.setgid(65534)
            os.setuid(65534)
            kvm.Kvm()
        except kvm.DeviceError as e:
            os._exit(0 if "permission denied" in str(e) and ("group" in str(e) or "root" in str(e)) else 3)
        except BaseException:
            os._exit(4)
        os._exit(0 if os.stat("/dev/kvm").st_mode & 0o006 else 5)  # opened: only if the device is world-usable
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_cli_device_option_version_and_closed_pipe() -> None:
    bad = subprocess.run([sys.executable, "-m", "kvm", "--device", "/dev/null", "info"], capture_output=True, text=True)
    assert bad.returncode == 2 and "not a KVM device" in bad.stderr and "Traceback" not in bad.stderr
    version = subprocess.run([sys.executable, "-m", "kvm", "--version"], capture_output=True, text=True)
    assert version.returncode == 0 and "7.2 (7.2." in version.stdout and version.stdout.count("\n") == 1
    piped = subprocess.run(f"{sys.executable} -m kvm info | head -1", shell=True, capture_output=True, text=True)
    assert piped.stdout.startswith("kernel release:") and piped.stderr == ""
    assert "run loop: " in run("info")


def test_kvm_bindgen_is_quiet_on_a_closed_pipe() -> None:
    """`kvm-bindgen summary | head -1` and `diff ... | true`: no message, exit 0 (the reader went away)."""
    for command in ("summary | head -1", "diff 6.1 6.12 --arch x86_64 | true"):
        done = subprocess.run(f"set -o pipefail; {sys.executable} -m kvm_bindgen.cli {command}", shell=True,
                              capture_output=True, text=True, executable="/bin/bash")
        assert done.returncode == 0 and done.stderr == "", (command, done.returncode, done.stderr)
