"""Everything the generator knows about each target architecture, in one place.

Nothing else in codegen/ branches on the arch: it asks an `Arch` for its ABI facts (scalar sizes and
alignments, the `_IOC` encoding, the macros its compiler predefines) or for where its headers live.
All supported arches are LP64 Linux ABIs with natural alignment; they differ in `__int128`
alignment, endianness, and the `_IOC` bit layout.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class IocEncoding:
    """The bit layout of an ioctl number (`asm-generic/ioctl.h` and its powerpc/mips variants)."""

    size_bits: int
    dir_bits: int
    dir_none: int
    dir_read: int
    dir_write: int

    NR_BITS = 8
    TYPE_BITS = 8

    def encode(self, direction: str, type_: int, nr: int, size: int) -> int:
        dir_value = {
            "none": self.dir_none,
            "read": self.dir_read,
            "write": self.dir_write,
            "readwrite": self.dir_read | self.dir_write,
        }[direction]
        if size >= 1 << self.size_bits:
            raise ValueError(f"ioctl argument size {size} does not fit in {self.size_bits} bits")
        type_shift = self.NR_BITS
        size_shift = type_shift + self.TYPE_BITS
        dir_shift = size_shift + self.size_bits
        return (dir_value << dir_shift) | (size << size_shift) | (type_ << type_shift) | nr


GENERIC_IOC = IocEncoding(size_bits=14, dir_bits=2, dir_none=0, dir_read=2, dir_write=1)
POWERPC_MIPS_IOC = IocEncoding(size_bits=13, dir_bits=3, dir_none=1, dir_read=2, dir_write=4)


@dataclasses.dataclass(frozen=True)
class Arch:
    name: str  # our name, as in b.ARCH
    kernel_dir: str  # arch/<kernel_dir> in the kernel tree, usr/lib/linux/uapi/<kernel_dir> in Debian
    triplet: str  # Debian multiarch directory under usr/include
    deb_arch: str  # Debian architecture of the per-arch linux-libc-dev
    uname_machines: tuple[str, ...]  # os.uname().machine values of hosts of this arch
    ioc: IocEncoding
    big_endian: bool
    int128_align: int
    predefined: tuple[str, ...]  # macros the arch's gcc predefines that the UAPI headers test
    cross_gcc: str  # Debian's cross compiler for layout checks

    def cpp_defines(self) -> list[str]:
        common = [
            "__linux__=1",
            "__CHAR_BIT__=8",
            "__SIZEOF_INT__=4",
            "__SIZEOF_LONG__=8",
            "__SIZEOF_LONG_LONG__=8",
            "__SIZEOF_POINTER__=8",
            "__LP64__=1",
            "_LP64=1",
            "__ORDER_LITTLE_ENDIAN__=1234",
            "__ORDER_BIG_ENDIAN__=4321",
            "__BYTE_ORDER__=" + ("4321" if self.big_endian else "1234"),
            "__GNUC__=12",
            "__signed__=signed",
            "__inline__=inline",
            "__extension__=",
        ]
        return common + list(self.predefined)

    # Scalar C types: name -> (size, alignment). Every supported arch is LP64.
    def scalar(self, name: str) -> tuple[int, int]:
        if name in ("__int128", "unsigned __int128", "__int128_t", "__uint128_t"):
            return 16, self.int128_align
        return _LP64_SCALARS[name]


_LP64_SCALARS = {
    "char": (1, 1),
    "signed char": (1, 1),
    "unsigned char": (1, 1),
    "_Bool": (1, 1),
    "short": (2, 2),
    "unsigned short": (2, 2),
    "int": (4, 4),
    "unsigned int": (4, 4),
    "long": (8, 8),
    "unsigned long": (8, 8),
    "long long": (8, 8),
    "unsigned long long": (8, 8),
    "float": (4, 4),
    "double": (8, 8),
    "void *": (8, 8),
}

ARCHES: dict[str, Arch] = {
    a.name: a
    for a in [
        Arch("x86_64", "x86", "x86_64-linux-gnu", "amd64", ("x86_64",), GENERIC_IOC, False, 16,
             ("__x86_64__=1", "__x86_64=1", "__amd64__=1"), "x86_64-linux-gnu-gcc"),
        Arch("arm64", "arm64", "aarch64-linux-gnu", "arm64", ("aarch64", "arm64"), GENERIC_IOC, False, 16,
             ("__aarch64__=1", "__ARM_64BIT_STATE=1"), "aarch64-linux-gnu-gcc"),
        Arch("riscv64", "riscv", "riscv64-linux-gnu", "riscv64", ("riscv64",), GENERIC_IOC, False, 16,
             ("__riscv=1", "__riscv_xlen=64"), "riscv64-linux-gnu-gcc"),
        Arch("s390x", "s390", "s390x-linux-gnu", "s390x", ("s390x",), GENERIC_IOC, True, 8,
             ("__s390__=1", "__s390x__=1", "__zarch__=1"), "s390x-linux-gnu-gcc"),
        Arch("ppc64le", "powerpc", "powerpc64le-linux-gnu", "ppc64el", ("ppc64le",), POWERPC_MIPS_IOC, False, 16,
             ("__powerpc__=1", "__powerpc64__=1", "__PPC__=1", "__PPC64__=1", "_CALL_ELF=2",
              "__LITTLE_ENDIAN__=1"), "powerpc64le-linux-gnu-gcc"),
        Arch("mips64el", "mips", "mips64el-linux-gnuabi64", "mips64el", ("mips64",), POWERPC_MIPS_IOC, False, 16,
             ("__mips__=1", "__mips=64", "__mips64=1", "_MIPS_SZLONG=64", "_MIPS_SZPTR=64", "_MIPS_SZINT=32",
              "_ABIO32=1", "_ABIN32=2", "_ABI64=3", "_MIPS_SIM=3", "__MIPSEL__=1", "_MIPSEL=1"),
             "mips64el-linux-gnuabi64-gcc"),
        Arch("loongarch64", "loongarch", "loongarch64-linux-gnu", "loong64", ("loongarch64",), GENERIC_IOC, False,
             16, ("__loongarch__=1", "__loongarch64=1", "__loongarch_grlen=64"), "loongarch64-linux-gnu-gcc"),
    ]
}


def host_arch() -> str | None:
    """Our name for the running machine's arch, or None when it is not one we generate for."""
    import os

    machine = os.uname().machine
    for arch in ARCHES.values():
        if machine in arch.uname_machines:
            return arch.name
    return None
