"""The classification rules, and the changes that name them.

`RULES` is the one place that says what is an addition, what is an ABI break and why; docs/diff.md lists
the same rows. Every `Change` the comparison finds names one rule, and `Comparison` collects them.
"""

from __future__ import annotations

import dataclasses
import types
from typing import Any

BREAK = "break"
ADDITION = "addition"
COMPATIBLE = "compatible"
CLASSIFICATIONS = (BREAK, ADDITION, COMPATIBLE)


@dataclasses.dataclass(frozen=True)
class Rule:
    id: str  # "<kind>.<what>", e.g. "field.moved"
    change: str  # "added" | "removed" | "changed"
    classification: str  # BREAK | ADDITION | COMPATIBLE
    label: str  # how reports say it: "moved", "number changed"
    when: str  # what triggers it
    why: str  # why it is classified so


def _rules(*rows: tuple[str, str, str, str, str, str]) -> dict[str, Rule]:
    return {row[0]: Rule(*row) for row in rows}


RULES: dict[str, Rule] = _rules(
    # id, change, classification, label, when, why
    ("ioctl.added", "added", ADDITION, "added",
     "an ioctl has a number where it had none (new, or newly available on the arch)",
     "existing programs never issue it"),
    ("ioctl.removed", "removed", BREAK, "removed",
     "an ioctl is no longer defined, or no longer available on the arch (moved to UNAVAILABLE_IOCTLS)",
     "programs that issue it no longer build, or get ENOTTY"),
    ("ioctl.number", "changed", BREAK, "number changed",
     "an ioctl's request number changed: its direction, type, nr, or argument size (a record that grew "
     "or shrank, e.g. by a field added at the end)",
     "programs built against the old header issue a number the kernel no longer accepts"),
    ("ioctl.arg_layout", "changed", BREAK, "argument layout changed",
     "the number is the same but the argument's layout changed (a field moved, shrank, grew, was removed, "
     "or a record it contains changed)",
     "the kernel reads and writes the argument's bytes where old programs did not put them"),
    ("ioctl.arg_type", "changed", COMPATIBLE, "argument type renamed",
     "the argument's C type is named differently but has the same size and layout",
     "the same bytes are passed; only source that names the type changes"),
    ("ioctl.capability", "changed", COMPATIBLE, "capability changed",
     "api.rst names a different capability as gating the ioctl (compared only when both sides have api.rst data)",
     "documentation metadata; the binary interface is unchanged"),
    ("ioctl.fd", "changed", COMPATIBLE, "fd kinds changed",
     "api.rst names different fd kinds (system, vm, vcpu, device) for the ioctl (compared only when both sides "
     "have api.rst data)",
     "documentation metadata; the binary interface is unchanged"),
    ("constant.added", "added", ADDITION, "added",
     "a constant is defined that was not",
     "existing programs never use it"),
    ("constant.removed", "removed", BREAK, "removed",
     "a constant is no longer defined",
     "programs that use it no longer build"),
    ("constant.value", "changed", BREAK, "value changed",
     "a constant's value changed",
     "programs built with the old value pass or expect a value the kernel now reads differently"),
    ("enum.added", "added", ADDITION, "added",
     "an enum member exists that did not (only when no constant, capability, exit reason or ioctl change "
     "explains it; otherwise it is listed with that change)",
     "existing programs never use it"),
    ("enum.removed", "removed", BREAK, "removed",
     "an enum member is gone (same proviso)",
     "programs that name it fail"),
    ("enum.value", "changed", BREAK, "value changed",
     "an enum member's value changed (same proviso)",
     "programs built with the old value pass or expect a value the kernel now reads differently"),
    ("capability.added", "added", ADDITION, "added",
     "a KVM_CAP_* is defined that was not",
     "existing programs never ask for it"),
    ("capability.removed", "removed", BREAK, "removed",
     "a KVM_CAP_* is no longer defined",
     "programs that check or enable it no longer build"),
    ("capability.value", "changed", BREAK, "number changed",
     "a KVM_CAP_*'s number changed",
     "KVM_CHECK_EXTENSION and KVM_ENABLE_CAP from old programs ask for a different capability"),
    ("capability.flags", "changed", COMPATIBLE, "flag set changed",
     "the named bits of a capability's KVM_CHECK_EXTENSION answer or enable() argument changed (compared only "
     "when both sides have api.rst data)",
     "the bits are constants, compared as such; only the typed wrapper's IntFlag follows"),
    ("capability.params", "changed", COMPATIBLE, "parameters changed",
     "what a capability's KVM_CHECK_EXTENSION answers (bool, int, bits), the fds KVM_ENABLE_CAP takes it on, or "
     "its args[] (name, kind, place) changed, by api.rst or codegen/caps_table.py (compared only when both "
     "sides have api.rst data)",
     "documentation metadata; the numbers passed are unchanged, the typed wrapper's keywords follow it"),
    ("exit_reason.added", "added", ADDITION, "added",
     "a KVM_EXIT_* reason is defined that was not",
     "old programs do not see it unless they enable what produces it"),
    ("exit_reason.removed", "removed", BREAK, "removed",
     "a KVM_EXIT_* reason is no longer defined",
     "programs that handle it no longer build"),
    ("exit_reason.value", "changed", BREAK, "number changed",
     "a KVM_EXIT_* reason's number changed",
     "old programs misread kvm_run.exit_reason"),
    ("record.added", "added", ADDITION, "added",
     "a struct or union is defined that was not",
     "existing programs never use it"),
    ("record.removed", "removed", BREAK, "removed",
     "a struct or union is no longer defined (on the arch)",
     "programs that use it no longer build"),
    ("record.kind", "changed", BREAK, "kind changed",
     "a struct became a union or the reverse",
     "its members overlap differently"),
    ("record.shrank", "changed", BREAK, "shrank",
     "a record's size decreased",
     "old programs pass or map more bytes than the kernel expects, and anything after it moves"),
    ("record.grew", "changed", COMPATIBLE, "grew",
     "a record's size increased",
     "by itself harmless to old programs, which use the prefix they know; where the size is part of an "
     "ioctl number, or the record is embedded in another, those changes are reported as breaks"),
    ("record.align", "changed", BREAK, "alignment changed",
     "a record's alignment changed",
     "it is placed differently inside other records and arrays"),
    ("record.header", "changed", COMPATIBLE, "moved to another header",
     "a record is defined in a different header (e.g. moved from linux/kvm.h to asm/kvm.h)",
     "the layout is unchanged; only where it is declared"),
    ("field.added", "added", ADDITION, "added",
     "a field exists that did not (in padding, a union, or at the end)",
     "old programs do not set it and, by the kernel's zero-padding convention, mean 'unused'; if other "
     "fields moved to make room, those moves are reported as breaks"),
    ("field.removed", "removed", BREAK, "removed",
     "a field is gone",
     "programs that name it no longer build, and its bytes may mean something else"),
    ("field.renamed", "changed", BREAK, "renamed",
     "a field has a new name, with the same offset, size and type",
     "the bytes are unchanged but programs that name the field no longer build"),
    ("field.padding_reused", "changed", COMPATIBLE, "padding reused",
     "a padding or reserved field (pad*, padding*, reserved*, rsvd*, unused*) is gone and new fields use its bytes",
     "old programs zero padding, which the new fields read as 'unused'"),
    ("field.moved", "changed", BREAK, "moved",
     "a field's offset (or bit position) changed",
     "old programs read and write it at the old place"),
    ("field.shrank", "changed", BREAK, "shrank",
     "a field's size (or bit width) decreased",
     "old programs write bytes the kernel now reads as something else, or values that no longer fit"),
    ("field.grew", "changed", BREAK, "grew",
     "a field's size (or bit width) increased",
     "old programs leave the added bytes to whatever was there before"),
    ("field.grew_in_place", "changed", COMPATIBLE, "grew in place",
     "a field whose type is a record (named, or an anonymous struct or union member) that only grew at its end "
     "(nothing in it moved, shrank or went away) now also covers "
     "bytes that were padding, unused, or other members of the same union",
     "old programs leave those bytes zero, which the new tail reads as 'unused'; nothing else moved"),
    ("field.retyped", "changed", COMPATIBLE, "retyped",
     "a field's C type changed, with the same offset and size (signedness, a typedef, element type)",
     "the same bytes are in the same place; the value's meaning should be reviewed"),
    ("field.nested", "changed", BREAK, "nested layout changed",
     "a field's type is a record whose layout changed (the changes are listed under that record)",
     "the field's bytes are laid out differently inside the containing record"),
)

# The record and field rules that change where bytes are: they make the ioctls passing the record, and
# the records containing it, break too (ioctl.arg_layout, field.nested).
LAYOUT_BREAKS = frozenset({"record.kind", "record.shrank", "record.align", "field.removed", "field.moved",
                           "field.shrank", "field.grew", "field.nested"})

KINDS = ("ioctl", "record", "field", "constant", "enum_member", "capability", "exit_reason")
_RULE_KIND = {"enum": "enum_member"}


def rule_kind(rule_id: str) -> str:
    prefix = rule_id.split(".", 1)[0]
    return _RULE_KIND.get(prefix, prefix)


@dataclasses.dataclass(frozen=True)
class Change:
    rule: str  # a key of RULES
    name: str  # the ioctl, constant, "Cap.X" enum member, capability, exit reason, or record
    field: str | None  # field changes: the field's designator on the old side ("io.port") or the new for additions
    old: Any  # JSON-ready value on the old side (None when absent); see docs/diff.md
    new: Any
    detail: str  # what changed, in words
    related: tuple[str, ...] = ()  # ioctls using a record; enum members standing for the same constant

    @property
    def kind(self) -> str:
        return rule_kind(self.rule)

    @property
    def change(self) -> str:
        return RULES[self.rule].change

    @property
    def classification(self) -> str:
        return RULES[self.rule].classification

    @property
    def reason(self) -> str:
        return RULES[self.rule].why

    def sort_key(self) -> tuple[int, int, str, str, str]:
        return (CLASSIFICATIONS.index(self.classification), KINDS.index(self.kind if self.kind != "field" else "record"),
                self.name, self.field or "", self.rule)


class Comparison:
    """The changes found so far between two binding modules, and each record's own among them."""

    def __init__(self, old: types.ModuleType, new: types.ModuleType) -> None:
        self.old = old
        self.new = new
        self.changes: list[Change] = []
        self.record_changes: dict[str, list[Change]] = {}  # record name -> its record and field changes

    def add(self, rule: str, name: str, old: Any, new: Any, detail: str, field: str | None = None) -> Change:
        assert rule in RULES, rule
        change = Change(rule, name, field, old, new, detail)
        self.changes.append(change)
        if rule_kind(rule) in ("record", "field"):
            self.record_changes.setdefault(name, []).append(change)
        return change

    def broken_records(self) -> set[str]:
        """Kept records whose layout changed (a rename breaks source, not the layout)."""
        return {n for n, cs in self.record_changes.items() if any(c.rule in LAYOUT_BREAKS for c in cs)}
