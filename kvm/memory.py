"""`GuestMemory`: one memory slot of a VM, backed by a host mapping.

Access is by guest-physical address and always bounds-checked against the slot: an access outside it
raises `GuestMemoryError` and never touches host memory. The mapping is a Python `mmap`, so a
`memoryview` handed out by `view()` keeps the pages mapped for as long as it lives, even after the slot
is removed.
"""

from __future__ import annotations

import _thread
import mmap as _mmap
import os
import sys
import weakref

from . import _sys
from .errors import ClosedError, ForkedError, GuestMemoryError
from .marshal import boolean, integer

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

PAGE_SIZE = _mmap.PAGESIZE


def _after_fork_in_child() -> None:
    # Views a forked child inherited of file- or memfd-backed guest RAM would write into the parent's
    # guest: the child's mappings become private copies (anonymous slots are copy-on-write already).
    for memory in list(_SHARED):
        if not memory.closed:  # (every slot, whatever happens to one)
            try:
                _sys.remap_private(memory.host_addr, memory.size, memory.fd, memory.file_offset)
            except OSError:
                pass


class GuestMemory:
    """A slot of guest-physical memory: `guest_addr`, `size`, `slot`, `flags`; read/write/view by address."""

    def __init__(
        self,
        vm: Any,
        slot: int,
        guest_addr: int,
        size: int,
        flags: int,
        mapping: _mmap.mmap,
        *,
        fd: int = -1,
        file_offset: int = 0,
        guest_memfd: Any = None,
        guest_memfd_offset: int = 0,
        owns_guest_memfd: bool = False,
    ) -> None:
        self._vm = weakref.ref(vm)  # the VM holds its slots; a slot does not keep its VM alive
        self._pid = _sys.pid()
        self.slot = slot
        self.guest_addr = guest_addr
        self.size = size
        self.flags = flags
        self._lock = _thread.allocate_lock()  # (unmap() claims the mapping and the fd under it)
        self._mm: _mmap.mmap | None = mapping
        self._view: memoryview | None = memoryview(mapping)
        self._fd = fd
        self._file_offset = file_offset
        self.guest_memfd = guest_memfd
        self.guest_memfd_offset = guest_memfd_offset
        self._owns_guest_memfd = owns_guest_memfd
        with _sys.ffi.from_buffer(mapping) as pinned:  # a buffer export, for as long as it takes to read the address
            self.host_addr = int(_sys.ffi.cast(_sys.UINTPTR, pinned))
        if fd >= 0:
            _SHARED.add(self)

    # -- lifetime ---------------------------------------------------------------------------------

    @property
    def vm(self) -> Any:
        """The VM the slot belongs to (None once that VM object is gone)."""
        return self._vm()

    @property
    def closed(self) -> bool:
        """Whether the slot was removed (or its VM closed) and the memory unmapped."""
        return self._view is None

    @property
    def end(self) -> int:
        """The first guest-physical address after the slot."""
        return self.guest_addr + self.size

    @property
    def file_offset(self) -> int:
        """Where in its file (or memfd) the slot's memory starts."""
        return self._file_offset

    @property
    def fd(self) -> int:
        """The slot's own fd of the file backing it (the memfd it made, or a duplicate of the user's fd or
        the file it opened), or -1 for anonymous memory; closed when the slot is."""
        return self._fd

    @property
    def pages(self) -> int:
        """The slot's size in pages (what its dirty bitmap covers)."""
        return (self.size + PAGE_SIZE - 1) // PAGE_SIZE

    def pages_in_bitmap(self, bitmap: bytes) -> list[int]:
        """The guest-physical addresses of the pages set in a dirty bitmap of this slot."""
        if not isinstance(bitmap, (bytes, bytearray, memoryview)):
            raise TypeError(f"bitmap must be bytes, not {type(bitmap).__name__}")
        bits = int.from_bytes(bitmap, "little") & ((1 << self.pages) - 1)
        out = []
        while bits:
            low = bits & -bits
            out.append(self.guest_addr + (low.bit_length() - 1) * PAGE_SIZE)
            bits ^= low
        return out

    def close(self) -> None:
        """Remove the slot from its VM (if still registered) and unmap. Idempotent."""
        if self._view is None:
            return
        vm = self.vm
        if vm is not None and not vm.closed:
            try:
                vm.remove_memory(self)
                return
            except (ClosedError, ValueError):
                pass  # the VM was closed, or the slot removed, meanwhile (by another thread): it is unmapped
        self.unmap()

    def unmap(self) -> None:
        """Unmap the memory (after its VM no longer uses it: `Vm.remove_memory` and `Vm.close` call this).
        Idempotent, also when called from several threads at once."""
        with self._lock:
            view, mm, fd = self._view, self._mm, self._fd
            self._view = self._mm = None
            self._fd = -1
        if view is not None:
            try:
                view.release()
            except BufferError:
                pass
        if mm is not None:
            try:
                mm.close()
            except BufferError:
                # A memoryview from view() is still alive: the pages stay mapped until it is dropped. Those of
                # a file or memfd become a private copy: writes through the view reach nothing shared any more
                # (another slot of the same file, or, after a fork, the parent's guest).
                if fd >= 0:
                    _sys.remap_private(self.host_addr, self.size, fd, self._file_offset)
        _SHARED.discard(self)
        if fd >= 0:
            os.close(fd)
        if mm is not None and self.guest_memfd is not None and self._owns_guest_memfd:
            self.guest_memfd.close()

    def __enter__(self) -> GuestMemory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __len__(self) -> int:
        return self.size

    def __contains__(self, address: object) -> bool:
        return isinstance(address, int) and self.guest_addr <= address < self.guest_addr + self.size

    def __repr__(self) -> str:
        state = " closed" if self._view is None else ""
        return f"<GuestMemory slot={self.slot} gpa={self.guest_addr:#x} size={self.size:#x} flags={self.flags:#x}{state}>"

    # -- access -----------------------------------------------------------------------------------

    def _span(self, address: int, length: int) -> tuple[memoryview, int]:
        """The slot's view and the offset of [address, address + length) in it, checked. The view is the
        caller's to use: should the slot be unmapped meanwhile (by another thread, or by a conversion of
        an argument), using it raises ValueError, which `_closed` turns into ClosedError."""
        if self._pid != _sys.pid():
            raise ForkedError(f"guest memory slot {self.slot} was mapped in process {self._pid}; a forked child "
                              "must not touch its parent's guest (a memfd slot is shared with it)")
        view = self._view
        if view is None:
            raise self._closed()
        if address.__class__ is not int or length.__class__ is not int:
            address = integer(address, "address", 0, (1 << 64) - 1)
            length = integer(length, "length", 0, (1 << 64) - 1)
        offset = address - self.guest_addr
        if length < 0 or offset < 0 or offset + length > self.size:
            raise GuestMemoryError(
                f"guest access [{address:#x}, {address + length:#x}) is outside slot {self.slot} "
                f"[{self.guest_addr:#x}, {self.guest_addr + self.size:#x})"
            )
        return view, offset

    def _closed(self) -> ClosedError:
        return ClosedError(f"guest memory slot {self.slot} is closed")

    def read(self, address: int, length: int) -> bytes:
        """`length` bytes at guest-physical `address`."""
        view, offset = self._span(address, length)
        try:
            return bytes(view[offset : offset + length])
        except ValueError:
            raise self._closed() from None

    def write(self, address: int, data: bytes | bytearray | memoryview) -> None:
        """Copy `data` (any C-contiguous buffer) to guest-physical `address`."""
        if not isinstance(data, (bytes, bytearray)):
            try:
                data = memoryview(data).cast("B")
            except TypeError:
                raise TypeError(f"data must be a bytes-like object, not {type(data).__name__}") from None
        view, offset = self._span(address, len(data))
        try:
            view[offset : offset + len(data)] = data
        except ValueError:
            raise self._closed() from None

    def read_into(self, address: int, buffer: Any) -> int:
        """Fill `buffer` (any writable, C-contiguous buffer: bytearray, memoryview, array, ...) with guest
        memory from guest-physical `address`, in one copy; returns the number of bytes copied (its size)."""
        try:
            target = memoryview(buffer)
        except TypeError:
            raise TypeError(f"read_into needs a writable buffer, not {type(buffer).__name__}") from None
        with target:
            if target.readonly:
                raise TypeError(f"read_into needs a writable buffer; this {type(buffer).__name__} is read-only")
            if not target.c_contiguous:
                raise TypeError("read_into needs a C-contiguous buffer")
            length = target.nbytes
            view, offset = self._span(address, length)
            try:
                source = view[offset : offset + length]
            except ValueError:
                raise self._closed() from None
            with source:  # (holds the pages while the copy runs)
                _sys.ffi.memmove(target, source, length)
        return length

    def view(self, address: int | None = None, length: int | None = None) -> memoryview:
        """A writable zero-copy memoryview of guest memory (the whole slot by default)."""
        address = self.guest_addr if address is None else integer(address, "address", 0, (1 << 64) - 1)
        if length is None:
            length = max(self.guest_addr + self.size - address, 0)
        view, offset = self._span(address, length)
        try:
            return view[offset : offset + length]
        except ValueError:
            raise self._closed() from None

    def read_int(self, address: int, size: int = 8, *, signed: bool = False) -> int:
        """An integer of `size` bytes (1 to 8) in the host byte order (the guest's, for KVM)."""
        size = integer(size, "size", 1, 8)
        return int.from_bytes(self.read(address, size), sys.byteorder, signed=boolean(signed, "signed"))

    def write_int(self, address: int, value: int, size: int = 8, *, signed: bool = False) -> None:
        """Store `value`, which must fit `size` bytes (1 to 8; unsigned unless `signed`), at `address`."""
        size = integer(size, "size", 1, 8)
        signed = boolean(signed, "signed")
        bits = 8 * size
        low, high = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
        value = integer(value, "value", low, high)
        self.write(address, value.to_bytes(size, sys.byteorder, signed=signed))

    def fill(self, address: int, length: int, byte: int = 0) -> None:
        """Set `length` bytes at `address` to `byte`."""
        byte = integer(byte, "byte", 0, 255)
        view, offset = self._span(address, length)
        try:
            view[offset : offset + length] = bytes([byte]) * length
        except ValueError:
            raise self._closed() from None

    def page_index(self, address: int) -> int:
        """The page number of `address` within the slot (as dirty logs count pages)."""
        return self._span(integer(address, "address", 0, (1 << 64) - 1), 0)[1] // PAGE_SIZE


_SHARED: weakref.WeakSet[GuestMemory] = weakref.WeakSet()  # file- and memfd-backed slots
os.register_at_fork(after_in_child=_after_fork_in_child)
