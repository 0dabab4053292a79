"""`kvm-bindgen diff`: what changed in the KVM ABI between two bindings, and whether it breaks users.

The command and the committed reports, on top of the modules that do the work: diff_sides loads the
two bindings (bundled, or rendered from a headers tree); diff_rules holds `RULES`, the one place that
says what is an addition, what is an ABI break and why; diff_records, diff_ioctls and diff_values
compare each kind of item; diff_report runs them into a `Report`; diff_render formats it. docs/diff.md
documents the rules and the JSON schema.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import IO

from .diff_render import SCHEMA_VERSION, render, render_markdown, render_text
from .diff_report import Report, diff
from .diff_rules import ADDITION, BREAK, CLASSIFICATIONS, COMPATIBLE, KINDS, RULES, Change, rule_kind
from .diff_sides import Binding, bundled, bundled_bindings, from_headers, resolve
from .inputs import InputError

__all__ = ["ADDITION", "BREAK", "CLASSIFICATIONS", "COMPATIBLE", "KINDS", "RULES", "SCHEMA_VERSION", "Binding",
           "Change", "Report", "bundled", "command", "diff", "from_headers", "render_markdown", "render_text",
           "reports", "rule_kind"]

# The bundled pairs whose reports are committed under generated/reports/.
REPORT_ARCHES = ("x86_64", "arm64")


def command(old: str, new: str | None, arch: str | None, vs_arch: str | None, fmt: str,
            fail_on_abi_break: bool, out: IO[str] | None = None, err: IO[str] | None = None, *,
            all_arches: bool = False) -> int:
    """`kvm-bindgen diff`: 0 on success, 1 with `fail_on_abi_break` when a break is found, 2 on bad input.

    Unless `all_arches`, changes to items only other arches have are listed apart (diff_scope); the JSON
    format leaves them out."""
    from .arches import ARCHES, host_arch

    out = out or sys.stdout
    err = err or sys.stderr
    old_arch = arch or host_arch() or "x86_64"
    for name in (old_arch, vs_arch):
        if name is not None and name not in ARCHES:
            print(f"kvm-bindgen diff: unknown arch {name!r}; one of {', '.join(sorted(ARCHES))}", file=err)
            return 2
    if new is None and vs_arch is None:
        print("kvm-bindgen diff: NEW is missing: give two versions or headers trees (OLD NEW), "
              "or one and --vs-arch ARCH to compare two arches", file=err)
        return 2
    sides = []
    for role, spec, side_arch in (("OLD", old, old_arch), ("NEW", new if new is not None else old, vs_arch or old_arch)):
        try:
            sides.append(resolve(spec, side_arch))
        except InputError as e:
            print(f"kvm-bindgen diff: {role} ({spec}): {e}", file=err)
            return 2
    a, b = sides
    report = diff(a, b, all_arches=all_arches)
    out.write(render(report, fmt))
    return 1 if fail_on_abi_break and report.breaks else 0


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(x) for x in version.split(".") if x.isdigit())


def reports(sources: Mapping[str, str] | None = None) -> dict[str, str]:
    """{"reports/<old>-<new>-<arch>.md": markdown} for each consecutive pair of bundled kernels on REPORT_ARCHES.

    Built from the bundled binding modules: by default those importable as kvm.generated; pass
    `sources` (file name -> text, as `render.render_all` returns it) to build them from files about to
    be written instead, so the reports never lag the bindings they describe.
    """
    modules = bundled_bindings(REPORT_ARCHES, sources)
    files = {}
    for arch in REPORT_ARCHES:
        kernels = sorted((k for k, a in modules if a == arch), key=_version_key)
        for older, newer in zip(kernels, kernels[1:]):
            report = diff(modules[(older, arch)], modules[(newer, arch)], all_arches=False)
            files[f"reports/{older}-{newer}-{arch}.md"] = render_markdown(report)
    return files
