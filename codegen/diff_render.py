"""The formats of a report: text for a terminal, markdown for a pull-request comment, and JSON.

docs/diff.md describes each, and the JSON schema.
"""

from __future__ import annotations

import json
from typing import Any

from .diff_report import Report
from .diff_rules import ADDITION, BREAK, CLASSIFICATIONS, COMPATIBLE, KINDS, RULES, Change
from .diff_sides import Binding

SCHEMA = "kvm-bindgen-diff"
SCHEMA_VERSION = 1
FORMATS = ("text", "markdown", "json")
_KIND_TITLES = {"ioctl": "ioctls", "record": "structs and unions", "field": "fields", "constant": "constants",
                "enum_member": "enum members", "capability": "capabilities", "exit_reason": "exit reasons"}


def to_json(report: Report) -> dict[str, Any]:
    """The JSON document (schema in docs/diff.md)."""

    def side(b: Binding) -> dict[str, Any]:
        return {"spec": b.spec, "source": b.source, "kernel": b.kernel, "linux_version": b.linux_version,
                "arch": b.arch, "origin": b.origin}

    return {
        "schema": SCHEMA,
        "version": SCHEMA_VERSION,
        "mode": report.mode,
        "old": side(report.old),
        "new": side(report.new),
        "counts": report.counts(),
        "changes": [{"kind": c.kind, "name": c.name, "field": c.field, "change": c.change, "rule": c.rule,
                     "classification": c.classification, "old": c.old, "new": c.new, "detail": c.detail,
                     "reason": c.reason, "related": list(c.related)} for c in report.changes],
    }


def _title(report: Report) -> str:
    old, new = report.old, report.new
    if report.mode == "arches":
        if old.label == new.label:
            return f"KVM ABI on {old.arch} vs {new.arch}, Linux {old.label}"
        return f"KVM ABI of {old.label} on {old.arch} vs {new.label} on {new.arch}"
    return f"KVM ABI diff {old.label} -> {new.label} on {new.arch}"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _summary(report: Report) -> str:
    if not report.changes and not report.elsewhere:
        return "no differences"
    n = report.counts()
    text = (f"{_plural(n[BREAK], 'ABI break')}, {_plural(n[ADDITION], 'addition')}, "
            f"{_plural(n[COMPATIBLE], 'compatible change')}")
    if report.mode == "arches":
        sizes = [f"{len(changes)} {title[0].lower() + title[1:]}" for title, changes in _sections(report)]
        text = f"{', '.join(sizes)} (for a program moving from {report.old.arch} to {report.new.arch}: {text})"
    return text + _elsewhere_note(report)


def _elsewhere_note(report: Report) -> str:
    if not report.elsewhere:
        return ""
    return (f"; not counted: {_plural(len(report.elsewhere), 'change')} to items only other arches than "
            f"{report.new.arch} have (listed last)")


def _elsewhere_title(report: Report) -> str:
    return (f"Other arches' items, not breaks on {report.new.arch} (api.rst documents them, or their name "
            f"gives them, only for other arches; `--all-arches` classifies them with the rest)")


def _only(c: Change, which: str) -> bool:
    return c.kind != "field" and c.change == which


def _sections(report: Report) -> list[tuple[str, list[Change]]]:
    """Headed groups in display order: breaks first (versions), or what only one arch has first (arches)."""
    changes = list(report.changes)
    if report.mode == "versions":
        titles = {BREAK: "ABI breaks", ADDITION: "Additions", COMPATIBLE: "Compatible changes"}
        return [(titles[k], [c for c in changes if c.classification == k]) for k in CLASSIFICATIONS]
    return [(f"Only on {report.old.arch}", [c for c in changes if _only(c, "removed")]),
            (f"Only on {report.new.arch}", [c for c in changes if _only(c, "added")]),
            ("Different", [c for c in changes if not _only(c, "removed") and not _only(c, "added")])]


def _display_order(changes: list[Change]) -> list[Change]:
    """Grouped by kind (fields with their record), then by name."""
    return sorted(changes, key=lambda c: (KINDS.index("record" if c.kind == "field" else c.kind), c.name,
                                          c.field is not None, c.field or "", c.rule))


def _describe(c: Change, report: Report) -> str:
    """"what: detail [related]" for one change."""
    what = RULES[c.rule].label
    if report.mode == "arches" and c.kind != "field" and c.change in ("added", "removed"):
        what = f"only on {report.new.arch if c.change == 'added' else report.old.arch}"
    if c.field is not None:
        what = f"field {c.field} {what}"
    text = f"{what}: {c.detail}"
    if c.related:
        text += f" ({'used by' if c.kind in ('record', 'field') else 'also'} {', '.join(c.related)})"
    return text


def render_text(report: Report) -> str:
    out = [_title(report), _summary(report)]
    for title, changes in _sections(report):
        if not changes:
            continue
        out += ["", f"{title} ({len(changes)})"]
        kind = ""
        for c in _display_order(changes):
            group = "record" if c.kind == "field" else c.kind
            if group != kind:
                kind = group
                out.append(f"  {_KIND_TITLES[kind]}")
            out.append(f"    {c.name}: {_describe(c, report)}  [{c.classification}: {c.rule}]")
    if report.elsewhere:
        out += ["", f"{_elsewhere_title(report)} ({len(report.elsewhere)})"]
        for c in _display_order(list(report.elsewhere)):
            out.append(f"    {c.name}: {_describe(c, report)}  [{c.rule}]")
    return "\n".join(out) + "\n"


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("<", "&lt;").replace("\n", " ")


def render_markdown(report: Report) -> str:
    """For a pull-request comment: the breaks in full, the rest folded."""
    out = [f"### {_md(_title(report))}", "", f"**{_md(_summary(report))}**"]
    for title, changes in _sections(report):
        if not changes:
            continue
        folded = not (report.mode == "versions" and title == "ABI breaks")
        out.append("")
        if folded:
            out += [f"<details><summary>{title} ({len(changes)})</summary>", ""]
        else:
            out += [f"#### {title} ({len(changes)})", ""]
        out += ["| kind | name | change | rule |", "|---|---|---|---|"]
        for c in _display_order(changes):
            kind = _KIND_TITLES["record" if c.kind == "field" else c.kind]
            out.append(f"| {kind} | `{c.name}` | {_md(_describe(c, report))} | {c.classification}: `{c.rule}` |")
        if folded:
            out += ["", "</details>"]
    if report.elsewhere:
        out += ["", f"<details><summary>{_md(_elsewhere_title(report))} ({len(report.elsewhere)})</summary>", "",
                "| kind | name | change | rule |", "|---|---|---|---|"]
        for c in _display_order(list(report.elsewhere)):
            kind = _KIND_TITLES["record" if c.kind == "field" else c.kind]
            out.append(f"| {kind} | `{c.name}` | {_md(_describe(c, report))} | `{c.rule}` |")
        out += ["", "</details>"]
    return "\n".join(out) + "\n"


def render(report: Report, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(to_json(report), indent=2, sort_keys=False) + "\n"
    if fmt == "markdown":
        return render_markdown(report)
    if fmt == "text":
        return render_text(report)
    raise ValueError(f"unknown format {fmt!r}; one of {', '.join(FORMATS)}")

