"""`python -m kvm`: what this host's KVM offers, through the bundled binding.

    python -m kvm [--device PATH] caps [--json] [--all]   capabilities: name, value (bits by name),
                                                        enable-able on vm/vcpu, ioctls gated
    python -m kvm [--device PATH] info [--json]           kernel, API version, the binding chosen and why,
                                                        the run loop in use, every capability the host
                                                        reports (numbers the binding does not name: unknown)
    python -m kvm --version

Uses only KVM_GET_API_VERSION, KVM_CREATE_VM and KVM_CHECK_EXTENSION (on the VM fd when the host has
KVM_CAP_CHECK_EXTENSION_VM, which answers for that VM; else on /dev/kvm), through `kvm.Kvm`.
"""

from __future__ import annotations

import argparse
import enum
import importlib.metadata
import json
import os
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import Any, TextIO

from . import _accel, generated  # type: ignore[attr-defined,unused-ignore]  # mypy on kvm/ alone: no generated
from .caps import Capability, format_value
from .errors import DeviceError, KvmError
from .system import Kvm
from .vm import Vm

PROBE_MAX = 300  # KVM_CHECK_EXTENSION numbers probed for capabilities the binding does not know


class Host:
    """The host's answers to KVM_CHECK_EXTENSION, via /dev/kvm and one VM."""

    def __init__(self, binding: ModuleType, device: str = "/dev/kvm") -> None:
        self.binding = binding
        self.system = Kvm(device, binding=binding)
        self.api_version = self.system.api_version
        self.vm: Vm | None = None
        self.checked_on = "system"
        try:
            if self.system.vm_fds_answer_caps():
                self.vm = self.system.create_vm()
                self.checked_on = "vm"
        except KvmError:
            self.vm = None

    def check(self, value: int) -> int:
        try:
            return (self.vm or self.system).check_extension(value)
        except KvmError:
            return 0

    def close(self) -> None:
        self.system.close()


def _binding() -> ModuleType:
    binding: ModuleType = generated.load()
    return binding


def _typed(cap: Capability) -> dict[str, Any]:
    """check() decoded: "typed" as text (flag names), and "flags" (the names) where the answer is bits."""
    value = cap.check()
    if isinstance(value, enum.IntFlag):
        return {"typed": format_value(value), "flags": format_value(value).split("|") if value else []}
    return {"typed": value}


def caps_rows(host: Host, include_absent: bool = True) -> list[dict[str, Any]]:
    """One row per capability of the binding (and per unknown number the host reports)."""
    b = host.binding
    rows = []
    typed = {cap.NAME: cap for cap in (host.vm or host.system).caps}
    for name, cap in sorted(b.CAPS.items(), key=lambda kv: kv[1].value):
        value = host.check(cap.value)
        if value or include_absent:
            rows.append({"name": name, "number": cap.value, "value": value, **_typed(typed[name]),
                         "enable_on": sorted(cap.enable_on), "ioctls": list(cap.ioctls), "known": True})
    known = {cap.value for cap in b.CAPS.values()}
    for number in range(PROBE_MAX + 1):
        if number not in known:
            value = host.check(number)
            if value:
                rows.append({"name": f"unknown ({number})", "number": number, "value": value,
                             "enable_on": [], "ioctls": [], "known": False})
    return rows


def _table(rows: list[list[str]], out: TextIO) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        out.write("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() + "\n")


def cmd_caps(args: argparse.Namespace, out: TextIO) -> int:
    host = Host(_binding(), args.device)
    try:
        rows = caps_rows(host, include_absent=args.all)
    finally:
        host.close()
    if args.json:
        json.dump({"checked_on": host.checked_on, "capabilities": rows}, out, indent=2)
        out.write("\n")
        return 0
    table = [["CAPABILITY", "NUMBER", "VALUE", "ENABLE ON", "IOCTLS GATED"]]
    for r in rows:
        value = f"{r['value']} ({r['typed']})" if r.get("flags") else str(r["value"])  # bits: their names too
        table.append([r["name"], str(r["number"]), value, ",".join(r["enable_on"]) or "-",
                      ", ".join(r["ioctls"]) or "-"])
    _table(table, out)
    present = sum(1 for r in rows if r["value"])
    unknown = sum(1 for r in rows if not r["known"])
    out.write(f"\n{present} capabilities reported ({unknown} unknown to the binding), "
              f"KVM_CHECK_EXTENSION on the {host.checked_on} fd\n")
    return 0


def info(host: Host) -> dict[str, Any]:
    b = host.binding
    release = os.uname().release
    running = tuple(int(x) for x in release.split("-")[0].split(".")[:2] if x.isdigit())
    bundled = [k for k, _, a in generated.BUNDLED if a == b.ARCH]
    newest = tuple(int(x) for x in b.KERNEL.split("."))
    dropped = sorted({name for k in bundled if k != b.KERNEL for name in generated.load(k, b.ARCH).IOCTLS}
                     - set(b.IOCTLS))
    why = (f"the newest bundled binding for {b.ARCH} (bundled: {', '.join(bundled)}): KVM keeps the numbers of "
           "the ioctls it still defines stable, and KVM_CHECK_EXTENSION tells which this kernel has")
    if dropped:
        why += (f"; {len(dropped)} ioctls of older bundled kernels are no longer in its headers "
                f"(e.g. {', '.join(dropped[:3])}): load an older binding to issue them")
    if running > newest:
        why += f"; the running kernel ({release}) is newer: capabilities it adds show as unknown"
    rows = caps_rows(host, include_absent=False)
    return {"kernel_release": release, "machine": os.uname().machine, "api_version": host.api_version,
            "binding": {"module": b.__name__, "kernel": b.KERNEL, "linux_version": b.LINUX_VERSION,
                        "arch": b.ARCH, "why": why},
            "checked_on": host.checked_on, "probed": f"KVM_CHECK_EXTENSION 0..{PROBE_MAX}",
            "run_loop": "compiled (kvm._speedups)" if _accel.NATIVE else "pure Python (kvm._pure)",
            "capabilities": [{"name": r["name"], "number": r["number"], "value": r["value"], "known": r["known"]}
                             for r in rows]}


def cmd_info(args: argparse.Namespace, out: TextIO) -> int:
    host = Host(_binding(), args.device)
    try:
        data = info(host)
    finally:
        host.close()
    if args.json:
        json.dump(data, out, indent=2)
        out.write("\n")
        return 0
    b = data["binding"]
    out.write(f"kernel release: {data['kernel_release']} ({data['machine']})\n")
    out.write(f"KVM API version: {data['api_version']}\n")
    out.write(f"binding: {b['module']} (Linux {b['linux_version']} {b['arch']})\n")
    out.write(f"  why: {b['why']}\n")
    out.write(f"run loop: {data['run_loop']}\n")
    caps = data["capabilities"]
    unknown = sum(1 for c in caps if not c["known"])
    out.write(f"capabilities reported ({len(caps)}, {unknown} unknown; {data['probed']} on the "
              f"{data['checked_on']} fd):\n")
    _table([["  " + c["name"], str(c["number"]), str(c["value"])] for c in caps], out)
    return 0


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    # (raw text: argparse would wrap the --version line)
    parser = argparse.ArgumentParser(prog="python -m kvm", description="What this host's KVM offers.",
                                     formatter_class=argparse.RawTextHelpFormatter)
    bundled = ", ".join(sorted({f"{k} ({r})" for k, r, _ in generated.BUNDLED}))
    version = importlib.metadata.version("kvm-bindgen-py")
    parser.add_argument("--version", action="version", version=f"kvm {version}; bundled kernels: {bundled}")
    parser.add_argument("--device", default="/dev/kvm", help="the KVM device (default: %(default)s)")
    sub = parser.add_subparsers(dest="command", required=True)
    caps = sub.add_parser("caps", help="capabilities as a table: name, value, enable-able on vm/vcpu, ioctls gated")
    caps.add_argument("--json", action="store_true", help="machine-readable output")
    caps.add_argument("--all", action="store_true", help="also the capabilities the host reports absent (0)")
    caps.set_defaults(func=cmd_caps)
    inf = sub.add_parser("info", help="kernel, KVM API version, binding chosen and why, every capability reported")
    inf.add_argument("--json", action="store_true", help="machine-readable output")
    inf.set_defaults(func=cmd_info)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args, out or sys.stdout))
    except BrokenPipeError:
        # the reader went away (`python -m kvm info | head -1`): nothing more to say, and say it quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except DeviceError as e:
        print(f"python -m kvm: {e.strerror}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"python -m kvm: {e}", file=sys.stderr)
        return 1
