"""The bindings against gcc: every value the generator computed, recomputed by a real compiler.

For each bundled (kernel version, arch), one C file includes the SAME headers the binding was generated
from and asks the arch's gcc for every ioctl number, every constant, every record's size and alignment,
every non-bitfield member's offset and size, and the bit position of every bitfield. gcc evaluates
them at compile time into a data object; the test reads the object file's symbols (ELF, either
endianness), so a cross compiler that can only compile (`-c`) is enough. On the host's own arch the
program is also linked and run, and what it prints must equal what was read from the object.

Every ioctl the binding lists as unavailable must fail to compile with that gcc.

A value gcc cannot compute (an undeclared macro, a member it does not know) is a mismatch too.
Known generator bugs are listed in KNOWN_MISMATCHES: they are left out of the per-binding test and
each gets its own strict xfail test, so fixing the bug makes that test fail until the entry goes.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import pathlib
import re
import shutil
import struct
import subprocess
import tempfile
from types import ModuleType

import pytest

import kvm.generated as g
from kvm_bindgen import inputs
from kvm_bindgen.arches import ARCHES, Arch, host_arch

BINDINGS = [(kernel, arch) for kernel, _release, arch in g.BUNDLED]

# (kernel, arch, value label) -> the generator bug that makes our value differ from gcc's, e.g.
# ("6.12", "s390x", "offsetof struct kvm_s390_irq.u"): "layout.py: ...". Labels are as the failure lists them.
KNOWN_MISMATCHES: dict[tuple[str, str, str], str] = {}

_U64 = 1 << 64
_FLEXIBLE = "invalid application of 'sizeof' to incomplete type"
_ERROR = re.compile(r"^(?P<file>[^:\n]+):(?P<line>\d+):(?:\d+:)? (?:fatal )?error: (?P<msg>.*)$", re.M)


# ---------------------------------------------------------------------------------------------
# What to ask gcc


@dataclasses.dataclass(frozen=True)
class Value:
    """One value of the binding and the C expressions that make gcc compute it."""

    label: str  # e.g. "offsetof struct kvm_run.io.port"
    ours: object
    exprs: tuple[str, ...]  # integer constant expressions, all on one source line
    kind: str  # "ioctl", "constant", "size", "align", "offset", "field size"


@dataclasses.dataclass(frozen=True)
class Bitfield:
    label: str
    ours: tuple[int, int]  # (bit offset in allocation order, width)
    record: str
    path: str


def values_of(b: ModuleType) -> list[Value]:
    out: list[Value] = []
    for name, spec in sorted(b.IOCTLS.items()):
        out.append(Value(f"ioctl {name}", spec.number, (f"({name})",), "ioctl"))
    for name, value in sorted(b.CONSTANTS.items()):
        # The value modulo 2**64 and its sign: together they pin the C value exactly.
        out.append(Value(f"constant {name}", value, (f"({name})", f"(({name}) < 0)"), "constant"))
    for name, rec in sorted(b.STRUCTS.items()):
        out.append(Value(f"sizeof {name}", rec.size, (f"sizeof({name})",), "size"))
        out.append(Value(f"alignof {name}", rec.align, (f"_Alignof({name})",), "align"))
        for f in rec.fields:
            if f.bit_width is not None:
                continue
            out.append(Value(f"offsetof {name}.{f.name}", f.offset, (f"__builtin_offsetof({name}, {f.name})",),
                             "offset"))
            out.append(Value(f"sizeof {name}.{f.name}", f.size, (f"sizeof(((({name} *)0)->{f.name}))",),
                             "field size"))
    return out


def bitfields_of(b: ModuleType) -> list[Bitfield]:
    return [Bitfield(f"bitfield {name}.{f.name}", (f.bit_offset, f.bit_width), name, f.name)
            for name, rec in sorted(b.STRUCTS.items()) for f in rec.fields if f.bit_width is not None]


# ---------------------------------------------------------------------------------------------
# Compilers


@dataclasses.dataclass(frozen=True)
class Compiler:
    command: str
    native: bool  # targets the running machine: its programs can be linked and run here


# Arches for which the distribution this project is developed on (Debian bookworm) packages no cross gcc.
_UNPACKAGED = {"loongarch64": "Debian packages gcc-*-loongarch64-linux-gnu only from trixie on, not in bookworm"}


def compiler_for(arch: Arch) -> Compiler | str:
    """The gcc for `arch`, or why there is none."""
    if arch.name == host_arch():
        cpus = {arch.triplet.split("-")[0], *arch.uname_machines}
        for cc in ("gcc", arch.cross_gcc):
            if shutil.which(cc) and _dumpmachine(cc).split("-")[0] in cpus:
                return Compiler(cc, native=True)
    if shutil.which(arch.cross_gcc):
        return Compiler(arch.cross_gcc, native=False)
    why = f"; {_UNPACKAGED[arch.name]}" if arch.name in _UNPACKAGED else ""
    return (f"no {arch.name} cross compiler: {arch.cross_gcc} is not installed "
            f"(.ci/install-cross-compilers installs the ones the distribution has{why})")


@functools.cache
def _dumpmachine(cc: str) -> str:
    try:
        return subprocess.run([cc, "-dumpmachine"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


@functools.cache
def _own_include_dir(cc: str) -> str | None:
    """gcc's own headers (stddef.h and the like), the only ones besides the kernel's the C may see."""
    try:
        out = subprocess.run([cc, "-print-file-name=include"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.strip() if os.path.isdir(out.strip()) else None


def _flags(compiler: Compiler, tree: inputs.HeadersTree) -> list[str]:
    flags = ["-std=gnu11", "-O0", "-w", "-nostdinc", "-ftrack-macro-expansion=0", "-fno-diagnostics-show-caret",
             "-fdiagnostics-color=never"]
    for d in tree.include_dirs:
        flags += ["-I", str(d)]
    own = _own_include_dir(compiler.command)
    return flags + (["-isystem", own] if own else [])


def _run(cmd: list[str], cwd: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LC_ALL": "C", "LANG": "C"}
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env)


_PRELUDE = """\
#include <linux/kvm.h>
#include <asm/kvm.h>
typedef unsigned long long oracle_u64;
"""


def _errors_by_line(stderr: str, source: str, first_line: dict[int, int]) -> dict[int, str]:
    """Item index -> gcc's first error about it; raises on an error that is no item's (e.g. in a header)."""
    errors: dict[int, str] = {}
    for m in _ERROR.finditer(stderr):
        item = first_line.get(int(m.group("line"))) if pathlib.Path(m.group("file")).name == source else None
        if item is None:
            raise AssertionError(f"gcc failed outside the generated values:\n{stderr[:4000]}")
        errors.setdefault(item, m.group("msg"))
    if not errors:
        raise AssertionError(f"gcc failed without naming a line:\n{stderr[:4000]}")
    return errors


# ---------------------------------------------------------------------------------------------
# Reading an object file


def elf_symbols(data: bytes) -> dict[str, bytes]:
    """Defined data symbols of an ELF64 relocatable object -> their bytes (either endianness)."""
    if data[:4] != b"\x7fELF" or data[4] != 2:
        raise ValueError("not an ELF64 object")
    end = "<" if data[5] == 1 else ">"
    (shoff,) = struct.unpack_from(end + "Q", data, 0x28)
    shentsize, shnum = struct.unpack_from(end + "HH", data, 0x3A)
    # sh_name, sh_type, sh_flags, sh_addr, sh_offset, sh_size, sh_link, sh_info, sh_addralign, sh_entsize
    sections = [struct.unpack_from(end + "IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    out: dict[str, bytes] = {}
    for sh in sections:
        if sh[1] != 2:  # SHT_SYMTAB
            continue
        strtab = sections[sh[6]]
        for off in range(sh[4], sh[4] + sh[5], 24):
            st_name, _info, _other, shndx, value, size = struct.unpack_from(end + "IBBHQQ", data, off)
            if st_name == 0 or shndx == 0 or shndx >= len(sections):
                continue
            name_at = strtab[4] + st_name
            name = data[name_at : data.index(b"\0", name_at)].decode()
            sec = sections[shndx]
            out[name] = bytes(size) if sec[1] == 8 else data[sec[4] + value : sec[4] + value + size]  # NOBITS
    return out


def _u64s(raw: bytes, big_endian: bool) -> list[int]:
    return list(struct.unpack(("<" if not big_endian else ">") + f"{len(raw) // 8}Q", raw))


def _set_bits(raw: bytes, big_endian: bool) -> list[int]:
    """Bits set in an object, numbered in gcc's bitfield allocation order (MSB first on big-endian)."""
    return sorted(i * 8 + (7 - j if big_endian else j) for i, byte in enumerate(raw) for j in range(8) if byte >> j & 1)


# ---------------------------------------------------------------------------------------------
# Asking gcc


@dataclasses.dataclass
class OracleResult:
    compared: dict[str, int]  # kind -> values compared
    mismatches: list[tuple[str, object, object]]  # (label, ours, gcc's), in source order
    ran_natively: bool = False
    macros_checked: int = 0  # object-like macros of the KVM headers checked to be listed when integers

    @property
    def total(self) -> int:
        return sum(self.compared.values())


def _values_source(values: list[Value], bitfields: list[Bitfield]) -> tuple[str, dict[int, int]]:
    lines = _PRELUDE.splitlines()
    first_line: dict[int, int] = {}
    lines.append("const oracle_u64 oracle_v[] = {")
    for i, v in enumerate(values):
        first_line[len(lines) + 1] = i
        lines.append("  " + " ".join(f"(oracle_u64){e}," for e in v.exprs))
    lines.append("  0 };")
    for j, bf in enumerate(bitfields):
        first_line[len(lines) + 1] = len(values) + j
        lines.append(f"const union {{ {bf.record} t; unsigned char b[sizeof({bf.record})]; }} oracle_bf{j} = "
                     f"{{ .t.{bf.path} = -1 }};")
    lines += [
        "extern int printf(const char *, ...);",
        "int main(void) {",
        "  for (unsigned long i = 0; i < sizeof oracle_v / sizeof oracle_v[0]; i++) printf(\"%llu\\n\", oracle_v[i]);",
    ]
    for j in range(len(bitfields)):
        lines.append(f"  for (unsigned long i = 0; i < sizeof oracle_bf{j}.b; i++) printf(\"%02x\", oracle_bf{j}.b[i]);")
        lines.append("  printf(\"\\n\");")
    lines += ["  return 0;", "}", ""]
    return "\n".join(lines), first_line


def _gcc_values(compiler: Compiler, tree: inputs.HeadersTree, values: list[Value], bitfields: list[Bitfield],
                workdir: str) -> tuple[dict[str, object], dict[str, str], bool]:
    """label -> gcc's value, label -> gcc's error for values it could not compute, whether it ran natively."""
    errors: dict[str, str] = {}
    # gcc may stop reporting after a syntax error, so compile again without what failed until it succeeds.
    for _attempt in range(len(values) + len(bitfields) + 2):
        source, first_line = _values_source(values, bitfields)
        pathlib.Path(workdir, "values.c").write_text(source)
        proc = _run([compiler.command, *_flags(compiler, tree), "-c", "values.c", "-o", "values.o"], workdir)
        if proc.returncode == 0:
            break
        items: list[Value | Bitfield] = [*values, *bitfields]
        for index, msg in _errors_by_line(proc.stderr, "values.c", first_line).items():
            errors[items[index].label] = msg
        values = [v for v in values if v.label not in errors]
        bitfields = [bf for bf in bitfields if bf.label not in errors]
    else:
        raise AssertionError(f"{compiler.command} keeps failing:\n{proc.stderr[:4000]}")

    symbols = elf_symbols(pathlib.Path(workdir, "values.o").read_bytes())
    big_endian = tree.arch.big_endian
    raw = _u64s(symbols["oracle_v"], big_endian)
    bf_bytes = [symbols[f"oracle_bf{j}"] for j in range(len(bitfields))]

    ran = False
    if compiler.native:
        link = _run([compiler.command, "values.o", "-o", "values"], workdir)
        if link.returncode == 0:
            printed = _run([str(pathlib.Path(workdir, "values"))], workdir).stdout.split("\n")
            ints = [int(x) for x in printed[: len(raw)]]
            hexes = printed[len(raw) : len(raw) + len(bitfields)]
            assert ints == raw and hexes == [b.hex() for b in bf_bytes], \
                "the program's output differs from the values read from its object file"
            ran = True

    out: dict[str, object] = {}
    pos = 0
    for v in values:
        got = raw[pos : pos + len(v.exprs)]
        pos += len(v.exprs)
        if v.kind == "constant":
            out[v.label] = got[0] - _U64 if got[1] else got[0]
        else:
            out[v.label] = got[0]
    assert pos == len(raw) - 1  # the trailing 0
    for bf, data in zip(bitfields, bf_bytes):
        bits = _set_bits(data, big_endian)
        contiguous = bits == list(range(bits[0], bits[0] + len(bits))) if bits else False
        out[bf.label] = (bits[0], len(bits)) if contiguous else f"set bits {bits}"
    return out, errors, ran


def _unavailable_compiling(compiler: Compiler, tree: inputs.HeadersTree, names: list[str],
                           workdir: str) -> list[str]:
    """The ioctls among `names` whose number gcc CAN compute (there should be none)."""
    if not names:
        return []
    failing: set[str] = set()
    pending = list(names)
    while pending:
        lines = _PRELUDE.splitlines()
        first_line = {}
        for i, name in enumerate(pending):
            first_line[len(lines) + 1] = i
            lines.append(f"const oracle_u64 oracle_u{i} = (oracle_u64)({name});")
        pathlib.Path(workdir, "unavailable.c").write_text("\n".join(lines) + "\n")
        proc = _run([compiler.command, *_flags(compiler, tree), "-fsyntax-only", "unavailable.c"], workdir)
        if proc.returncode == 0:
            break
        failed = _errors_by_line(proc.stderr, "unavailable.c", first_line)
        failing.update(pending[i] for i in failed)
        pending = [name for i, name in enumerate(pending) if i not in failed]
    return [name for name in names if name not in failing]


def _kvm_header_macros(compiler: Compiler, tree: inputs.HeadersTree, workdir: str) -> list[str]:
    """Object-like macros that linux/kvm.h and asm/kvm.h define, as gcc's preprocessor sees them."""
    pathlib.Path(workdir, "macros.c").write_text(_PRELUDE)
    proc = _run([compiler.command, *_flags(compiler, tree), "-E", "-dD", "macros.c"], workdir)
    assert proc.returncode == 0, proc.stderr[:4000]
    current, names = "", []
    for line in proc.stdout.splitlines():
        if m := re.match(r'# \d+ "([^"]*)"', line):
            current = m.group(1)
        elif (m := re.match(r"#define (\w+)(\(?)", line)) and not m.group(2) \
                and current.endswith(("/linux/kvm.h", "/asm/kvm.h")):
            names.append(m.group(1))
    return names


def _same(value: Value | Bitfield, ours: object, gcc: object) -> bool:
    if isinstance(value, Value) and value.kind == "ioctl" and isinstance(ours, int) and isinstance(gcc, int):
        return ours % _U64 == gcc
    return ours == gcc


@functools.cache
def oracle(kernel: str, arch_name: str) -> OracleResult:
    arch = ARCHES[arch_name]
    compiler = compiler_for(arch)
    if isinstance(compiler, str):
        pytest.skip(compiler)
    try:
        tree = inputs.bundled_tree(inputs.load_manifest()[kernel], arch_name)
    except inputs.InputError as e:
        pytest.skip(f"headers not available: {e}")
    b = g.load(kernel, arch_name)
    values = values_of(b)
    bitfields = bitfields_of(b)
    with tempfile.TemporaryDirectory(prefix="gcc-oracle-") as workdir:
        got, errors, ran = _gcc_values(compiler, tree, values, bitfields, workdir)
        compiling = _unavailable_compiling(compiler, tree, sorted(b.UNAVAILABLE_IOCTLS), workdir)
        # The other way round: an integer macro of the KVM headers that the binding lacks.
        macros = _kvm_header_macros(compiler, tree, workdir)
        listed = set(b.CONSTANTS) | set(b.IOCTLS) | set(b.UNAVAILABLE_IOCTLS)
        unlisted = _unavailable_compiling(compiler, tree, [m for m in macros if m not in listed], workdir)

    compared: dict[str, int] = {}
    mismatches: list[tuple[str, object, object]] = []
    items: list[Value | Bitfield] = [*values, *bitfields]
    for item in items:
        kind = item.kind if isinstance(item, Value) else "bitfield"
        compared[kind] = compared.get(kind, 0) + 1
        if item.label in errors:
            msg = errors[item.label]
            if isinstance(item, Value) and item.kind == "field size" and msg.startswith(_FLEXIBLE):
                gcc: object = 0  # a flexible array member: no size of its own
            else:
                gcc = f"gcc error: {msg}"
        else:
            gcc = got[item.label]
        if not _same(item, item.ours, gcc):
            mismatches.append((item.label, item.ours, gcc))
    compared["unavailable ioctl"] = len(b.UNAVAILABLE_IOCTLS)
    for name in compiling:
        mismatches.append((f"unavailable {name}", b.UNAVAILABLE_IOCTLS[name], "compiles"))
    for name in unlisted:
        mismatches.append((f"unlisted {name}", "absent", "an integer constant"))
    return OracleResult(compared, mismatches, ran, len(macros))


def _show(value: object) -> str:
    return hex(value) if isinstance(value, int) and abs(value) > 4096 else repr(value)


# ---------------------------------------------------------------------------------------------
# Tests


@pytest.mark.parametrize(("kernel", "arch"), BINDINGS, ids=[f"{k}-{a}" for k, a in BINDINGS])
def test_binding_agrees_with_gcc(kernel: str, arch: str, gcc_oracle_summary) -> None:
    result = oracle(kernel, arch)
    known = {label for (k, a, label) in KNOWN_MISMATCHES if (k, a) == (kernel, arch)}
    bad = [m for m in result.mismatches if m[0] not in known]
    gcc_oracle_summary.record(f"{kernel}-{arch}", result.compared, len(bad),
                              also_checked={"kvm header macros listed": result.macros_checked},
                              ran_natively=result.ran_natively)
    shown = "\n".join(f"  {label}: ours {_show(ours)}, gcc {_show(gcc)}" for label, ours, gcc in bad[:40])
    assert not bad, f"{len(bad)} of {result.total} values differ from gcc's (first {min(len(bad), 40)}):\n{shown}"


@pytest.mark.parametrize(
    ("kernel", "arch", "label"),
    [pytest.param(k, a, label, marks=pytest.mark.xfail(strict=True, reason=bug), id=f"{k}-{a}-{label}")
     for (k, a, label), bug in sorted(KNOWN_MISMATCHES.items())]
    or [pytest.param(None, None, None, marks=pytest.mark.skip(reason="no known generator mismatches"), id="none")],
)
def test_known_mismatch(kernel: str, arch: str, label: str) -> None:
    """A generator bug this test knows of: passes (and so fails, being strict xfail) once it is fixed."""
    result = oracle(kernel, arch)
    assert label not in {m[0] for m in result.mismatches}


def test_elf_reader_on_both_endiannesses() -> None:
    """The object reader, on a hand-made ELF64 object of each byte order."""
    for end, big in (("<", False), (">", True)):
        payload = struct.pack(end + "QQ", 1, 0x0102030405060708)
        strtab = b"\0oracle_v\0"
        sym = bytes(24) + struct.pack(end + "IBBHQQ", 1, 0x11, 0, 1, 0, len(payload))
        body = payload + strtab + sym
        shoff = 64 + len(body)
        sections = [
            bytes(64),
            struct.pack(end + "IIQQQQIIQQ", 0, 1, 2, 0, 64, len(payload), 0, 0, 8, 0),
            struct.pack(end + "IIQQQQIIQQ", 0, 3, 0, 0, 64 + len(payload), len(strtab), 0, 0, 1, 0),
            struct.pack(end + "IIQQQQIIQQ", 0, 2, 0, 0, 64 + len(payload) + len(strtab), len(sym), 2, 1, 8, 24),
        ]
        header = bytearray(64)
        header[:6] = b"\x7fELF\x02" + (b"\x02" if big else b"\x01")
        struct.pack_into(end + "Q", header, 0x28, shoff)
        struct.pack_into(end + "HHH", header, 0x3A, 64, len(sections), 0)
        data = bytes(header) + body + b"".join(sections)
        assert _u64s(elf_symbols(data)["oracle_v"], big) == [1, 0x0102030405060708]
    assert _set_bits(b"\x80\x01", big_endian=True) == [0, 15]
    assert _set_bits(b"\x80\x01", big_endian=False) == [7, 8]
