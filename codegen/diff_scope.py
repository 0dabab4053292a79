"""Which changes concern the arch being compared, and which concern items of other arches only.

linux/kvm.h is shared by every arch, so a binding for x86_64 also holds s390's, powerpc's and arm's
ioctls, records and constants. When one of those goes away, or moves to its own arch's asm/kvm.h, it is
no break for a program on x86_64: no such program could use it. `kvm-bindgen diff OLD NEW --arch A`
therefore lists such changes apart, never counting them as breaks, unless `--all-arches` is given.

An item is *of other arches* when:
- an ioctl: api.rst documents it (`Architectures:`) only for other arches than A (on OLD's side, or on
  NEW's for an added one); an ioctl api.rst does not document is judged by its name, as below;
- a record (and its fields): its name says another arch, or every ioctl passing it is of other arches;
- a constant, capability, exit reason or enum member: its name says another arch.

A name *says another arch* when one of its words (split at `_`, spaces and dots) is another arch's word
in ARCH_WORDS (e.g. `KVM_S390_*`, `KVM_CAP_PPC_*`, `struct kvm_arm_*`, `Cap.RISCV_*`), or it starts with
a prefix of another arch in ARCH_PREFIXES, and none of its words is A's own.
"""

from __future__ import annotations

import re
import types
from collections.abc import Iterable

from .diff_rules import Change

# The words that mark an item as one arch's (upper case; our arch names as keys).
ARCH_WORDS: dict[str, frozenset[str]] = {
    "x86_64": frozenset({"X86", "I386", "XEN", "HYPERV", "SEV", "TDX", "VMX", "SVM"}),
    "arm64": frozenset({"ARM", "ARM64", "AARCH64"}),
    "s390x": frozenset({"S390", "ZPCI"}),
    "ppc64le": frozenset({"PPC", "POWERPC", "SPAPR"}),
    "riscv64": frozenset({"RISCV"}),
    "mips64el": frozenset({"MIPS"}),
    "loongarch64": frozenset({"LOONGARCH"}),
}
# Names whose arch is in a prefix rather than a word: s390's protected virtualization (KVM_PV_*, kvm_pv_*).
ARCH_PREFIXES: dict[str, tuple[str, ...]] = {"s390x": ("KVM_PV_", "STRUCT KVM_PV_")}


def named_arches(name: str) -> frozenset[str]:
    """The arches an item's name says it belongs to (empty: none, i.e. every arch's)."""
    words = set(re.split(r"[^A-Za-z0-9]+", name.upper()))
    found = {arch for arch, marks in ARCH_WORDS.items() if words & marks}
    found |= {arch for arch, prefixes in ARCH_PREFIXES.items() if name.upper().startswith(prefixes)}
    return frozenset(found)


def _foreign_name(name: str, arch: str) -> bool:
    arches = named_arches(name)
    return bool(arches) and arch not in arches


def _foreign_ioctl(name: str, arch: str, *modules: types.ModuleType) -> bool:
    for module in modules:
        spec = module.IOCTLS.get(name)
        if spec is not None and spec.arches is not None:
            return arch not in spec.arches
    return _foreign_name(name, arch)


def of_other_arches(change: Change, arch: str, old: types.ModuleType, new: types.ModuleType) -> bool:
    """Whether `change` concerns an item that, on `arch`, only other arches have (see the module's doc)."""
    if change.kind == "ioctl":
        sides = (new, old) if change.change == "added" else (old, new)
        return _foreign_ioctl(change.name, arch, *sides)
    if change.kind in ("record", "field"):
        if _foreign_name(change.name, arch):
            return True
        return bool(change.related) and all(_foreign_ioctl(n, arch, old, new) for n in change.related)
    return _foreign_name(change.name, arch)


def split(changes: Iterable[Change], arch: str, old: types.ModuleType,
          new: types.ModuleType) -> tuple[tuple[Change, ...], tuple[Change, ...]]:
    """(changes to `arch`'s items, changes to items only other arches have), each in the given order."""
    own: list[Change] = []
    other: list[Change] = []
    for c in changes:
        (other if of_other_arches(c, arch, old, new) else own).append(c)
    return tuple(own), tuple(other)
