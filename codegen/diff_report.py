"""A report: the classified changes between two bindings, found by each kind's comparison in turn."""

from __future__ import annotations

import dataclasses

from . import diff_ioctls, diff_records, diff_scope, diff_values
from .diff_rules import BREAK, CLASSIFICATIONS, Change, Comparison
from .diff_sides import Binding


@dataclasses.dataclass(frozen=True)
class Report:
    old: Binding
    new: Binding
    changes: tuple[Change, ...]
    # Changes to items only other arches than the one compared have (diff_scope): listed apart, never counted.
    elsewhere: tuple[Change, ...] = ()

    @property
    def mode(self) -> str:
        return "arches" if self.old.arch != self.new.arch else "versions"

    def counts(self) -> dict[str, int]:
        return {c: sum(1 for ch in self.changes if ch.classification == c) for c in CLASSIFICATIONS}

    @property
    def breaks(self) -> tuple[Change, ...]:
        return tuple(c for c in self.changes if c.classification == BREAK)


def diff(old: Binding, new: Binding, *, all_arches: bool = True) -> Report:
    """Compare two bindings: records first (an ioctl's argument breaks with its record), then ioctls, then
    the values (an enum member goes with the change of what it stands for).

    With `all_arches=False` (what `kvm-bindgen diff` does unless given --all-arches), two versions on one
    arch: the changes to items only other arches have go to `elsewhere`, out of the counts and breaks."""
    found = Comparison(old.module, new.module)
    diff_records.compare(found)
    diff_ioctls.compare(found)
    diff_values.compare(found)
    diff_records.annotate(found)
    changes = tuple(sorted(found.changes, key=Change.sort_key))
    if all_arches or old.arch != new.arch:
        return Report(old, new, changes)
    own, other = diff_scope.split(changes, new.arch, old.module, new.module)
    return Report(old, new, own, other)
