"""docs/api.md: every example runs on the real /dev/kvm, and every public member has an entry with an example.

The page is read as sections (`## title`), each opening with a ```` ```python setup ```` block, and entries
(`### heading`) holding ```` ```python ```` example blocks. Each example runs in a fresh namespace after
its section's setup (so with a fresh `Kvm` and fresh VMs), under a time limit; what it opened is closed
afterwards. Blocks tagged with an arch (```` ```python arm64 ````) are compiled everywhere and run only on
a host of that arch; blocks tagged `needs=CAP` (a setup block's tag holds for its whole section) run
only where a VM reports that capability, and are skipped naming it elsewhere. A failing example's
traceback points at its line in docs/api.md.

The coverage check names, for every name of `kvm.__all__` and every public member of `Kvm`, `Vm`,
`Vcpu` (the classes composed for this host's binding: `type(vm)` of a real VM), `GuestMemory` and
`Device`, what has no entry in docs/api.md, or an entry without an example using it.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import signal
from pathlib import Path
from typing import Any

import pytest

import kvm
from kvm.arches import Absent

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "api.md"
HOST_ARCH = kvm.generated.ARCH
ARCH_TAGS = {"x86_64", "arm64", "riscv64", "s390x", "ppc64le", "mips64el", "loongarch64"}
COMMON = "Common to every fd object"  # the section documenting what every fd object has (kvm._fd.KvmFd)
CLASS_SECTIONS = ("Kvm", "Vm", "Vcpu", "GuestMemory", "Device")
ARCH_SECTIONS = ("kvm.x86", "kvm.arm64", "kvm.riscv64")  # the arch additions may be documented there too
TIME_LIMIT = 10  # seconds per example: a guest that loops must not hang the suite


@dataclasses.dataclass
class Block:
    code: str
    tag: str  # "" (an example), "setup", or an arch
    line: int  # the line of docs/api.md its code starts on (1-based)
    needs: tuple[str, ...] = ()  # capabilities (KVM_CAP_ names without the prefix) a VM must report


@dataclasses.dataclass
class Entry:
    heading: str  # the `###` line's text, or the section's title for blocks before the first entry
    blocks: list[Block] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Section:
    title: str
    setup: Block | None = None
    entries: list[Entry] = dataclasses.field(default_factory=list)

    def examples(self) -> list[tuple[Entry, Block]]:
        return [(entry, block) for entry in self.entries for block in entry.blocks]


def parse(text: str) -> list[Section]:
    sections: list[Section] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("## "):
            title = line[3:].strip()
            sections.append(Section(title, entries=[Entry(title)]))
        elif line.startswith("### ") and sections:
            sections[-1].entries.append(Entry(line[4:].strip()))
        elif line.startswith("```python") and sections:
            words = line[len("```python"):].split()
            needs = tuple(word[len("needs="):] for word in words if word.startswith("needs="))
            tag = " ".join(word for word in words if not word.startswith("needs="))
            start = i + 1
            i += 1
            while not lines[i].startswith("```"):
                i += 1
            block = Block("\n".join(lines[start:i]) + "\n", tag, start + 1, needs)
            if tag == "setup":
                assert sections[-1].setup is None, f"docs/api.md:{start}: a second setup block in {sections[-1].title!r}"
                sections[-1].setup = block
            else:
                assert tag == "" or tag in ARCH_TAGS, f"docs/api.md:{start}: unknown block tag {tag!r}"
                sections[-1].entries[-1].blocks.append(block)
        i += 1
    return sections


SECTIONS = parse(DOC.read_text())
EXAMPLES = [(section, entry, block) for section in SECTIONS for entry, block in section.examples()]


def _compile(block: Block) -> Any:
    # padded so that line numbers in tracebacks are docs/api.md's
    return compile("\n" * (block.line - 1) + block.code, str(DOC.relative_to(ROOT)), "exec")


def _close_all(namespace: dict[str, Any]) -> None:
    """Close what an example left open: its Kvm objects (which close their VMs) and anything else fd-owning."""
    for value in list(namespace.values()):
        if isinstance(value, kvm.Kvm):
            value.close()
    for value in list(namespace.values()):
        if isinstance(value, (kvm.Vm, kvm.Vcpu, kvm.Device, kvm.GuestMemfd, kvm.EventFd)):
            value.close()


class _TimeLimit(Exception):
    pass


def _alarm(signum: int, frame: Any) -> None:
    raise _TimeLimit(f"the example ran for more than {TIME_LIMIT} s")


def _id(item: tuple[Section, Entry, Block]) -> str:
    section, _entry, block = item
    slug = re.sub(r"\W+", "-", section.title.split("(")[0]).strip("-").lower()
    return f"{slug}:{block.line}"


def test_doc_shape() -> None:
    """Every section opens with a setup block, and the page holds examples enough to be a reference."""
    assert [s.title for s in SECTIONS if s.setup is None] == []
    assert len(EXAMPLES) >= 120
    for _section, _entry, block in EXAMPLES:
        _compile(block)  # every block is valid Python, run here or not


@pytest.mark.parametrize("item", EXAMPLES, ids=[_id(e) for e in EXAMPLES])
def test_example(item: tuple[Section, Entry, Block], system: Any) -> None:
    section, _entry, block = item
    code = _compile(block)
    if block.tag and block.tag != HOST_ARCH:
        pytest.skip(f"needs {block.tag} KVM (this host is {HOST_ARCH})")
    assert section.setup is not None
    if not block.tag and HOST_ARCH != "x86_64" and "kvm.Kvm()" in section.setup.code:
        pytest.skip(f"the page's examples on /dev/kvm are x86_64's (this host is {HOST_ARCH})")
    for cap in section.setup.needs + block.needs:
        with system.create_vm() as probe:
            if not probe.check_extension(cap):
                pytest.skip(f"needs KVM_CAP_{cap}, which this host's VMs report absent")
    namespace: dict[str, Any] = {"__name__": "api_doc"}
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(TIME_LIMIT)
    try:
        exec(_compile(section.setup), namespace)
        exec(code, namespace)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
        _close_all(namespace)


# -- coverage ---------------------------------------------------------------------------------------

_SPAN = re.compile(r"`([^`]+)`")


def _heading_names(heading: str) -> set[str]:
    """The members an entry heading documents: the last component of each backticked path
    (`vm.add_memory(guest_addr, ...)` -> add_memory, `kvm.IoExit` -> IoExit, `port` -> port)."""
    names = set()
    for span in _SPAN.findall(heading):
        path = span.split("(")[0].split(":")[0].strip()
        if re.fullmatch(r"[A-Za-z_][\w.]*", path):
            names.add(path.rsplit(".", 1)[-1])
    return names


def _has_example(entry: Entry, name: str, called: bool = False) -> bool:
    """Whether an example of the entry uses `name` (calls it, when `called`)."""
    pattern = rf"\b{re.escape(name)}\s*\(" if called else rf"\b{re.escape(name)}\b"
    return any(re.search(pattern, block.code) for block in entry.blocks)


def _documented(sections: list[Section], name: str, called: bool) -> bool:
    return any(name in _heading_names(entry.heading) and _has_example(entry, name, called)
               for section in sections for entry in section.entries)


def _public_members(cls: type, instance: Any) -> dict[str, bool]:
    """The public members of `cls` the binding offers, and the public attributes of `instance`: name ->
    whether it is a method (an example must call it) rather than a property or attribute."""
    names = {}
    for name in dir(cls):
        if name.startswith("_"):
            continue
        static = inspect.getattr_static(cls, name, None)
        if isinstance(static, Absent):
            continue  # not offered by this binding (e.g. Kvm.enable_cap: /dev/kvm does not take it)
        try:
            value = getattr(instance, name) if instance is not None else static
            names[name] = callable(value) and not isinstance(value, kvm.generated.ffi.CData)  # (cdata are callable)
        except Exception:  # a property this object cannot read (e.g. a register set needing an irqchip)
            names[name] = False
    if instance is not None:
        names.update((name, False) for name in vars(instance) if not name.startswith("_"))
    return names


def test_coverage(system: Any) -> None:
    by_title = {s.title: s for s in SECTIONS}
    missing: list[str] = []
    documented = 0

    for name in kvm.__all__:
        # a heading naming kvm.<name> (a section's title or an entry's), with an example using <name>
        pattern = re.compile(rf"\bkvm\.{re.escape(name)}\b")
        ok = any(
            (pattern.search(entry.heading)
             or (entry is section.entries[0] and (pattern.search(section.title) or section.title.split()[0] == name)))
            and (_has_example(entry, name) or (entry is section.entries[0]
                                               and any(_has_example(e, name) for e in section.entries)))
            for section in SECTIONS for entry in section.entries
        )
        documented += ok
        if not ok:
            missing.append(f"kvm.{name}")

    with system.create_vm() as vm:
        objects = {"Kvm": system, "Vm": vm, "Vcpu": vm.create_vcpu(0), "GuestMemory": vm.add_memory(0x0, 0x1000)}
        try:
            objects["Device"] = vm.create_device(kvm.generated.DeviceType.VFIO)
        except kvm.KvmError as exc:  # (a host without the KVM-VFIO device: its class alone)
            print(f"Device: no KVM-VFIO device to inspect ({exc}); checking the class's members only")
        for title in CLASS_SECTIONS:
            obj = objects.get(title)
            cls = type(obj) if obj is not None else kvm.Device
            where = [by_title[title], by_title[COMMON]] + [by_title[t] for t in ARCH_SECTIONS]
            for name, called in sorted(_public_members(cls, obj).items()):
                if _documented(where, name, called):
                    documented += 1
                else:
                    missing.append(f"{title}.{name}")
    print(f"docs/api.md: {documented} names documented with an example, {len(EXAMPLES)} example blocks")
    assert missing == [], f"{len(missing)} public names have no entry with an example in docs/api.md: {missing}"


def test_arch_blocks_are_marked() -> None:
    """Blocks that need another arch's KVM say so (they call that arch's methods on real objects)."""
    other = {"arm64": ("preferred_target", "create_vgic_v3", ".init(", "pmu_init", "set_core_reg"),
             "riscv64": ("isa_extensions", "enable_sbi_ext")}
    for _section, _entry, block in EXAMPLES:
        for arch, markers in other.items():
            if any(marker in block.code for marker in markers) and "for_binding" not in block.code:
                assert block.tag == arch, f"docs/api.md:{block.line}: uses {arch} KVM but is not tagged {arch}"

