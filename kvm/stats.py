"""Reader of KVM's binary statistics fd (KVM_GET_STATS_FD, on a VM or a vCPU).

The fd holds a header, an id string, descriptors (each a `struct kvm_stats_desc` followed by a name of
`name_size` bytes) and the data: `size` u64 values per statistic at the descriptor's `offset`.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable

from . import marshal
from ._namedtuple import NamedTuple

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


class StatDescriptor(NamedTuple):
    name: str
    type: int  # KVM_STATS_TYPE_* (cumulative, instant, peak, linear/log histogram)
    unit: int  # KVM_STATS_UNIT_*
    base: int  # KVM_STATS_BASE_* (pow10 / pow2)
    exponent: int
    size: int  # number of u64 values
    offset: int  # into the data block
    bucket_size: int


class StatsFd:
    """An open stats fd: descriptors are read once, `read()` re-reads only the values."""

    def __init__(self, fd: int, ffi: Any, constants: dict[str, int]) -> None:
        self.fd = fd
        header_size = ffi.sizeof("struct kvm_stats_header")
        raw = os.pread(fd, header_size, 0)
        header = ffi.new("struct kvm_stats_header *")
        ffi.memmove(header, raw, header_size)
        self.name_size = int(header.name_size)
        self.id = os.pread(fd, self.name_size, header_size).split(b"\0", 1)[0].decode(errors="replace")
        self.data_offset = int(header.data_offset)
        desc_size = ffi.sizeof("struct kvm_stats_desc")
        stride = desc_size + self.name_size
        count = int(header.num_desc)
        block = os.pread(fd, stride * count, int(header.desc_offset))
        desc = ffi.new("struct kvm_stats_desc *")
        type_mask = constants["KVM_STATS_TYPE_MASK"]
        unit_mask = constants["KVM_STATS_UNIT_MASK"]
        base_mask = constants["KVM_STATS_BASE_MASK"]
        descriptors = []
        for i in range(count):
            start = i * stride
            ffi.memmove(desc, block[start : start + desc_size], desc_size)
            name = block[start + desc_size : start + stride].split(b"\0", 1)[0].decode(errors="replace")
            flags = int(desc.flags)
            descriptors.append(
                StatDescriptor(
                    name,
                    flags & type_mask,
                    flags & unit_mask,
                    flags & base_mask,
                    int(desc.exponent),
                    int(desc.size),
                    int(desc.offset),
                    int(desc.bucket_size),
                )
            )
        self.descriptors: tuple[StatDescriptor, ...] = tuple(descriptors)
        self.data_size = max((d.offset + 8 * d.size for d in descriptors), default=0)

    @classmethod
    def of(cls, ioctl: Callable[[str], int], ffi: Any, constants: dict[str, int]) -> StatsFd:
        """The stats fd KVM_GET_STATS_FD gives through `ioctl` (a VM's or a vCPU's), read in; closed again if
        its header cannot be read."""
        fd = marshal.new_fd(ioctl("KVM_GET_STATS_FD"))
        try:
            return cls(fd, ffi, constants)
        except BaseException:
            os.close(fd)
            raise

    def read(self) -> dict[str, int | tuple[int, ...]]:
        """name -> value (an int, or a tuple of bucket counts for histograms)."""
        data = os.pread(self.fd, self.data_size, self.data_offset)
        out: dict[str, int | tuple[int, ...]] = {}
        for d in self.descriptors:
            values = struct.unpack_from(f"={d.size}Q", data, d.offset)
            out[d.name] = values[0] if d.size == 1 else values
        return out

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
