"""The system calls the KVM layer needs, through cffi's ABI mode on the C library.

Functions are resolved from the process's own C library (`dlopen(NULL)`) with cffi's backend, whose
small built-in C type parser needs no cdef and no pycparser at import time. cffi releases the GIL for
the duration of every call, so a blocking KVM_RUN in one thread does not stop the others.

`ioctl(2)` is variadic in C; it is declared here with a fixed `void *` third argument, which is how
the kernel receives it on every Linux ABI (integers are passed cast to a pointer).
"""

from __future__ import annotations

import _thread
import mmap as _mmap_module
import os
import weakref

import _cffi_backend as _backend  # type: ignore[import-untyped]

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

ffi = _backend.FFI()
_libc = _backend.load_library(None)


def _function(signature: str, name: str) -> Any:
    return _libc.load_function(ffi.typeof(signature), name)


_ioctl = _function("int(*)(int, unsigned long, void *)", "ioctl")
_mmap = _function("void *(*)(void *, size_t, int, int, int, long)", "mmap")
_munmap = _function("int(*)(void *, size_t)", "munmap")
_eventfd = _function("int(*)(unsigned int, int)", "eventfd")
_memfd_create = _function("int(*)(const char *, unsigned int)", "memfd_create")
_syscall3 = _function("long(*)(long, long, long, long)", "syscall")

NULL = ffi.NULL
# (the types the calls below cast to, parsed once here: a type string cffi has not seen yet costs it several
# microseconds to parse on the way to the first VM)
_void_p = ffi.typeof("void *")
_char_p = ffi.typeof("char *")
UINTPTR = ffi.typeof("uintptr_t")
# The class of the cdata ffi.from_buffer() makes (whichever FFI): as a pointer ("struct kvm_regs *"), such a
# cdata reports the size of its type, not of the buffer under it, which may be smaller
FROM_BUFFER = type(ffi.from_buffer("char[]", bytearray(1)))
_cast = ffi.cast

# mmap(2) and friends: the values are the kernel's generic ones, identical on every arch Linux runs on.
PROT_READ = 0x1
PROT_WRITE = 0x2
MAP_SHARED = 0x01
MAP_PRIVATE = 0x02
MAP_FIXED = 0x10  # the same on every arch Linux runs on but alpha
MAP_ANONYMOUS = _mmap_module.MAP_ANONYMOUS  # 0x20, but 0x800 on mips
MAP_FAILED = 2**64 - 1 if ffi.sizeof("void *") == 8 else 2**32 - 1
EFD_CLOEXEC = os.O_CLOEXEC
EFD_NONBLOCK = os.O_NONBLOCK
MFD_CLOEXEC = 0x0001

# SYS_tgkill: differs per arch (the generic table is used by arm64, riscv64, loongarch64).
_SYS_TGKILL = {"x86_64": 234, "s390x": 241, "ppc64le": 250, "mips64": 5225}.get(os.uname().machine, 131)


_pid = os.getpid()


def _after_fork_in_child() -> None:
    global _pid
    _pid = os.getpid()
    # A child shares its parent's kvm_run pages: whatever it writes through a view it inherited must not
    # reach the parent's vCPU, so it gets private copies.
    for mapping in [ref() for ref in list(_MAPPINGS)]:
        if mapping is not None:
            mapping.detach()


os.register_at_fork(after_in_child=_after_fork_in_child)


thread_id = _thread.get_ident  # (pthread_self: no system call, unlike get_native_id)


def pid() -> int:
    """This process's id, cached (os.getpid() is a system call) and renewed in a forked child."""
    return _pid


def _raise_errno(what: str) -> None:
    err = ffi.errno
    raise OSError(err, f"{what}: {os.strerror(err)}")


def ioctl(fd: int, request: int, arg: Any = 0) -> int:
    """ioctl(2): `arg` is an int (passed by value) or a cffi pointer/buffer; returns the result >= 0.

    Raises OSError with the call's errno on failure.
    """
    if arg.__class__ is int:
        arg = _cast(_void_p, arg)
    result: int = _ioctl(fd, request, arg)
    if result < 0:
        err = ffi.errno
        raise OSError(err, os.strerror(err))
    return result


def raw_ioctl() -> Any:
    """The bare cffi function `int ioctl(int, unsigned long, void *)`, for hot loops (errno: `ffi.errno`)."""
    return _ioctl


def mmap(length: int, prot: int, flags: int, fd: int = -1, offset: int = 0) -> int:
    """mmap(2) at an address the kernel picks; returns the address as an int."""
    address = _mmap(NULL, length, prot, flags, fd, offset)
    value = int(_cast(UINTPTR, address))
    if value == MAP_FAILED:
        _raise_errno("mmap")
    return value


def munmap(address: int, length: int) -> None:
    if _munmap(_cast(_void_p, address), length) < 0:
        _raise_errno("munmap")


class FileMapping:
    """A shared mapping of part of a KVM fd (a vCPU's kvm_run, its dirty ring), made without dup'ing the fd.

    `view` is a writable memoryview of it; memoryviews sliced from it, and the record pointers `record()`
    makes, keep the memory mapped for as long as they live. `detach()` (called when the fd closes) swaps
    the file's pages for a private anonymous copy at the same address: the mapping no longer holds the
    file, so closing the fd frees the KVM object at once, while views still held elsewhere read the last
    contents instead of faulting. The memory is unmapped when the last view or pointer goes.
    """

    def __init__(self, fd: int, length: int, offset: int = 0) -> None:
        self.length = length
        self.address = mmap(length, PROT_READ | PROT_WRITE, MAP_SHARED, fd, offset)
        self._pointer = ffi.gc(_cast(_char_p, self.address), _unmapper(length))
        self.view = memoryview(ffi.buffer(self._pointer, length))
        self.detached = False
        _MAPPINGS.add(weakref.ref(self, _MAPPINGS.discard))

    def record(self, record_ffi: Any, ctype: str, offset: int = 0) -> Any:
        """A `ctype *` of `record_ffi` at `offset` in the mapping, keeping the mapping alive.

        Not `ffi.from_buffer(view)`: a cdata holding a buffer export of a memoryview must never end up
        in a reference cycle with it, as CPython's garbage collector may clear the memoryview first and
        then crash releasing the export (CPython 3.11's memory_clear).
        """
        if not 0 <= offset <= self.length - record_ffi.sizeof(ctype):
            raise ValueError(f"{ctype} at {offset} does not fit the {self.length}-byte mapping")
        keep = self._pointer
        return record_ffi.gc(record_ffi.cast(ctype + " *", self.address + offset), lambda _p, _keep=keep: None)

    def detach(self) -> None:
        """Stop sharing the file's pages (idempotent); see the class docstring."""
        if self.detached:
            return
        self.detached = True
        view = self.view
        contents = bytes(view)
        fixed = _mmap(_cast(_void_p, self.address), self.length, PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0)
        if int(_cast(UINTPTR, fixed)) == MAP_FAILED:
            _raise_errno("mmap (detaching a closed fd's mapping)")
        view[:] = contents


# Every FileMapping, detached in a forked child: weak references that remove themselves when their mapping goes
# (not a WeakSet, whose Python code every vCPU's creation would run)
_MAPPINGS: set[weakref.ref[FileMapping]] = set()


def remap_private(address: int, length: int, fd: int, offset: int) -> bool:
    """Replace the shared mapping of `fd` at `address` by a private (copy-on-write) one of the same file:
    the contents stay, writes no longer reach the file or anyone else mapping it. Where that fails, by
    zero-filled anonymous memory (returns False): never shared, never unmapped under a view."""
    fixed = _mmap(_cast(_void_p, address), length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_FIXED, fd, offset)
    if int(_cast(UINTPTR, fixed)) != MAP_FAILED:
        return True
    fixed = _mmap(_cast(_void_p, address), length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0)
    if int(_cast(UINTPTR, fixed)) == MAP_FAILED:
        _raise_errno("mmap (a forked child's private copy of guest memory)")
    return False


def _unmapper(length: int) -> Any:
    return lambda pointer: _munmap(pointer, length)


def eventfd(initval: int = 0, flags: int = EFD_CLOEXEC) -> int:
    """eventfd(2), close-on-exec by default; returns the fd."""
    fd = _eventfd(initval, flags)
    if fd < 0:
        _raise_errno("eventfd")
    return int(fd)


MFD_ALLOW_SEALING = 0x0002


def memfd_create(name: str, flags: int = MFD_CLOEXEC) -> int:
    """memfd_create(2), close-on-exec by default; returns the fd."""
    fd = _memfd_create(name.encode(), flags)
    if fd < 0:
        _raise_errno("memfd_create")
    return int(fd)


_signal = _function("void *(*)(int, void *)", "signal")
# A handler that does nothing, which any thread can install (Python's signal.signal() works in the main
# thread only): libc's getpid(), async-signal-safe, whose caller's argument (the signal number) every
# Linux calling convention lets it ignore.
_NOOP_HANDLER = _cast(_void_p, _function("int(*)(void)", "getpid"))
_SIG_ERR = _cast(_void_p, -1)


def set_noop_handler(sig: int) -> None:
    """Make `sig` interrupt blocking system calls (KVM_RUN returns EINTR) and do nothing else."""
    if _signal(sig, _NOOP_HANDLER) == _SIG_ERR:
        _raise_errno(f"signal({sig})")


def tgkill(tid: int, sig: int) -> bool:
    """Send `sig` to thread `tid` of this process; False when the thread no longer exists."""
    if _syscall3(_SYS_TGKILL, _pid, tid, sig) < 0:
        if ffi.errno == 3:  # ESRCH
            return False
        _raise_errno("tgkill")
    return True


def address_of(cdata: Any) -> int:
    """The address a cffi pointer or buffer cdata points to."""
    return int(_cast(UINTPTR, cdata))
