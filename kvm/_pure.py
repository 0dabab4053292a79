"""The pure-Python twin of `kvm._speedups` (`Runner`, `VcpuBase`, `ExitBase`, `Field`, `ValueIoctl`, `ioctl`).

Used where the compiled module could not be built (no C compiler at install time) or when the
environment variable KVM_PURE_PYTHON is set to a non-empty value. See kvm/_speedups.c for the design.
"""

from __future__ import annotations

import os
import struct
import sys
import threading
import weakref

from . import _sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, TypeVar

    _F = TypeVar("_F", bound=Callable[..., Any])

_BYTEORDER = sys.byteorder
_raw_ioctl = _sys.raw_ioctl()
_NULL = _sys.NULL
_cast = _sys.ffi.cast
_void_p = _sys.ffi.typeof("void *")
_sys_ffi = _sys.ffi
_native_id = threading.get_native_id
_WIDTHS = (1, 2, 4, 8)
_unpack_u32 = struct.Struct("=I").unpack_from

# Bumped in the child after fork(): a Runner made before the fork refuses to run in the child.
_fork_generation = [0]
# The calling thread's kernel id, found on first need (threading.get_native_id() is a system call).
_thread = threading.local()


def _after_fork_in_child() -> None:
    _fork_generation[0] += 1
    _thread.__dict__.clear()  # the child's only thread is this one, under a new id


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
_KINDS = ("int", "bool", "bytes", "value")
_MAX_FIELD_OFFSET = 1 << 24  # as the compiled twin


def ioctl(fd: int, request: int, value: int) -> int:
    """ioctl(fd, request, value) -> result, or -errno on failure (`value` passed by value)."""
    if not -(1 << 63) <= value < (1 << 64):
        raise OverflowError("ioctl argument does not fit in 64 bits")
    result = _raw_ioctl(fd, request, _cast(_void_p, value & 0xFFFFFFFFFFFFFFFF))
    return int(result) if result >= 0 else -_sys_ffi.errno


def ioctl_method(fallback: _F, raw_ioctl: Any, ffi: Any, from_buffer: type, pointed_room: dict[Any, int],
                 eintr_answers: frozenset[str], error: Any) -> _F:
    """KvmFd._ioctl as it is: `fallback`, the Python method (the compiled module's issues the common case in
    one C call, see kvm/_speedups.c)."""
    return fallback


class ValueIoctl:
    """Called with an int in 0..2**63-1 (not a bool): ioctl(fd, request, value) and its result; anything
    else (another argument, a failure, a closed or forked fd) is fallback(*args)."""

    def __init__(self, fd: int, request: int, fallback: Any) -> None:
        if not callable(fallback):
            raise TypeError("fallback must be callable")
        self.fd = fd
        self.request = request
        self.fallback = fallback
        self.generation = _fork_generation[0]

    def close(self) -> None:
        self.fd = -1

    def __call__(self, *args: Any) -> Any:
        if (len(args) == 1 and isinstance(args[0], int) and not isinstance(args[0], bool)
                and 0 <= args[0] < (1 << 63) and self.fd >= 0 and self.generation == _fork_generation[0]):
            result = ioctl(self.fd, self.request, args[0])
            if result >= 0:
                return result
        return self.fallback(*args)


class Runner:
    """runner(vcpu) issues KVM_RUN and returns the exit: an instance of classes[exit_reason], or
    on_unknown(vcpu, reason); a failure returns on_error(vcpu, errno). It holds no reference to the
    vCPU (which holds it), nor do its exits (weakly)."""

    def __init__(self, fd: int, request: int, view: memoryview, classes: tuple[Any, ...],
                 on_error: Any, on_unknown: Any, on_unusable: Any, reason_offset: int) -> None:
        for i, cls in enumerate(classes):
            if cls is not None and not (isinstance(cls, type) and issubclass(cls, ExitBase)):
                raise TypeError(f"classes[{i}] is not an exit class (a subclass of ExitBase)")
        if not (callable(on_error) and callable(on_unknown) and callable(on_unusable)):
            raise TypeError("on_error, on_unknown and on_unusable must be callable")
        if view.readonly:
            raise BufferError("memoryview: the kvm_run buffer is not writable")
        if not 0 <= reason_offset <= view.nbytes - 4:
            raise ValueError(f"reason_offset {reason_offset} is outside the {view.nbytes}-byte kvm_run mapping")
        self.fd = fd
        self.request = request
        self.view = memoryview(view)  # a view of its own: the mapping stays while this Runner or its exits live
        self.classes = classes
        self.exits: list[Any] = [None] * len(classes)
        self.on_error = on_error
        self.on_unknown = on_unknown
        self.on_unusable = on_unusable
        self.reason_offset = reason_offset
        self.generation = _fork_generation[0]
        self.tid = 0
        self._claim = threading.Lock()

    @property
    def closed(self) -> bool:
        return self.fd < 0

    def close(self) -> None:
        self.fd = -1
        self.on_error = self.on_unknown = None
        self.exits = [None] * len(self.classes)

    def _enter(self, vcpu: Any) -> int:
        """KVM_RUN once: the ioctl's result or -errno; raises through on_unusable when it cannot run
        (closed, forked, in run() in another thread) or was closed meanwhile."""
        fd = self.fd
        if fd < 0 or self.generation != _fork_generation[0]:
            return self.on_unusable(vcpu)  # type: ignore[no-any-return]
        if not self._claim.acquire(False):  # (one thread at a time: the check and the claim in one step)
            return self.on_unusable(vcpu, self.tid)  # type: ignore[no-any-return]
        try:
            tid = _thread.__dict__.get("tid")
            if tid is None:
                tid = _thread.tid = _native_id()
            self.tid = tid
            result = _raw_ioctl(fd, self.request, _NULL)
            err = _sys_ffi.errno
            self.tid = 0
        finally:
            self._claim.release()
        if self.fd < 0:  # closed by another thread meanwhile: kvm_run may be a stale copy by now
            return self.on_unusable(vcpu)  # type: ignore[no-any-return]
        return int(result) if result >= 0 else -err

    def raw(self, vcpu: Any) -> int:
        """KVM_RUN once: the ioctl's result, or -errno (no exit decoded)."""
        return self._enter(vcpu)

    def __call__(self, vcpu: Any) -> Any:
        result = self._enter(vcpu)
        if result < 0:
            return self.on_error(vcpu, -result)
        reason = _unpack_u32(self.view, self.reason_offset)[0]
        classes = self.classes
        cls = classes[reason] if reason < len(classes) else None
        if cls is None:
            return self.on_unknown(vcpu, reason)
        # One exit object per reason serves every run: its values are decoded anew each time.
        exit = self.exits[reason]
        if exit is None:
            exit = self.exits[reason] = cls(vcpu)  # (decodes its values)
        elif exit._decoders:
            exit._decode()
        return exit


class VcpuBase:
    """The base of kvm.Vcpu: holds its Runner (`_runner`) and offers `run()`."""

    __slots__ = ("_runner",)
    _runner: Any

    def run(self) -> Any:
        """KVM_RUN until the next exit to user space; returns the typed exit (see kvm.exits).

        The GIL is released while the guest runs. EINTR (a signal, immediate_exit, kick()) returns an
        IntrExit; other failures raise KvmError; a closed or forked vCPU raises ClosedError or ForkedError.
        """
        runner = getattr(self, "_runner", None)
        if isinstance(runner, Runner):
            return runner(self)
        return self._raise_unusable()  # the subclass raises ClosedError or ForkedError

    def _raise_unusable(self) -> Any:
        raise NotImplementedError("subclasses of VcpuBase say why they cannot run")

    @staticmethod
    def bind_run(cls: type) -> None:
        """Give subclass `cls` a `run` of its own (the compiled twin needs it for fast calls; here, `run`
        is inherited as it is)."""
        if not (isinstance(cls, type) and issubclass(cls, VcpuBase)):
            raise TypeError("bind_run() needs a subclass of VcpuBase")


_EXIT_VALUES = 8  # as many decoded values as an exit of the compiled twin holds


class ExitBase:
    """ExitBase(vcpu): the base of every exit; its class's _decoders fill its decoded members (see
    decoded_member) at each exit, Field descriptors read the rest of its payload from kvm_run."""

    __slots__ = ("_vcpu_ref", "_page", "_values", "_plan")
    _decoders: tuple[Any, ...] = ()
    _vcpu_ref: Any
    _page: memoryview
    _values: list[Any]
    _plan: Any  # see _decoding_plan

    def __new__(cls, vcpu: Any, *rest: Any) -> Any:
        runner = getattr(vcpu, "_runner", None)
        if not isinstance(runner, Runner) or getattr(runner, "view", None) is None:
            raise TypeError(f"{cls.__name__}(): vcpu._runner is not an initialised Runner (is the vCPU closed?)")
        decoders = cls._decoders
        if not isinstance(decoders, tuple) or len(decoders) > _EXIT_VALUES:
            raise TypeError(f"{cls.__name__}._decoders must be a tuple of at most {_EXIT_VALUES} Fields")
        self = object.__new__(cls)
        self._vcpu_ref = weakref.ref(vcpu)  # (the Runner keeps its exits, and the vCPU its Runner)
        self._page = runner.view
        self._values = [_UNSET] * len(decoders)
        self._plan = _decoding_plan(cls.__name__, decoders)
        if decoders:
            self._decode()
        return self

    @property
    def vcpu(self) -> Any:
        """The Vcpu this exit came from (None once that object is gone)."""
        return self._vcpu_ref()

    def _decode(self) -> None:
        """Decode the payload values from kvm_run again (after a reply changed it)."""
        start, end, unpack, together, alone = self._plan
        decoders = self._decoders
        values, page = self._values, self._page
        if together and end <= page.nbytes:
            for (i, is_bool), value in zip(together, unpack(page, start)):
                values[i] = value != 0 if is_bool else value
        else:
            alone = alone + tuple(i for i, _ in together)  # (reports the field outside the page)
        for i in alone:
            values[i] = decoders[i].__get__(self)

    @staticmethod
    def decoded_member(cls: type, name: str, index: int) -> Any:
        """The read-only attribute `name` of `cls` giving decoded value `index` (see kvm._speedups)."""
        if not (isinstance(cls, type) and issubclass(cls, ExitBase) and isinstance(name, str)
                and isinstance(index, int)):
            raise TypeError("decoded_member(cls, name, index) takes a subclass of ExitBase, a str and an int")
        if not 0 <= index < _EXIT_VALUES:
            raise ValueError(f"decoded_member(): index {index} is outside 0..{_EXIT_VALUES - 1}")
        return _Decoded(name, index)


_UNSET = object()

def _decoding_plan(owner: str, decoders: tuple[Any, ...]) -> Any:
    """How an exit decodes its values: the int and bool fields with one struct unpack of the span they
    cover (start, end, unpack, ((index, is_bool), ...)), and the indices to decode one by one."""
    for i, field in enumerate(decoders):
        if field is not None and not isinstance(field, Field):
            raise TypeError(f"{owner}._decoders[{i}] is not a Field")
    numbers = sorted((f.offset, i) for i, f in enumerate(decoders) if f is not None and f.kind in ("int", "bool"))
    together: list[tuple[int, bool]] = []
    alone = [i for i, f in enumerate(decoders) if f is not None and f.kind not in ("int", "bool")]
    start = end = numbers[0][0] if numbers else 0
    fmt = "="
    for offset, i in numbers:
        field = decoders[i]
        if offset < end:  # overlaps the previous field
            alone.append(i)
            continue
        fmt += "x" * (offset - end) + field._code
        end = offset + field.width
        together.append((i, field.kind == "bool"))
    return start, end, struct.Struct(fmt).unpack_from, tuple(together), tuple(alone)


class _Decoded:
    """A read-only attribute of an exit: its decoded value `index`."""

    __slots__ = ("name", "index")

    def __init__(self, name: str, index: int) -> None:
        self.name = name
        self.index = index

    def __get__(self, obj: Any, cls: Any = None) -> Any:
        if obj is None:
            return self
        values = obj._values
        value = values[self.index] if self.index < len(values) else _UNSET
        if value is _UNSET:
            raise AttributeError(self.name)
        return value

    def __set__(self, obj: Any, value: Any) -> None:
        raise AttributeError(f"{type(obj).__name__}.{self.name} is read-only (reply through the exit's methods)")

    def __delete__(self, obj: Any) -> None:
        self.__set__(obj, None)


def _check_width(width: int) -> None:
    if width not in _WIDTHS:
        raise ValueError("bad offset or width (widths are 1, 2, 4 or 8 bytes)")


class Field:
    """A read-only descriptor of an exit's payload in kvm_run (see kvm._speedups.Field)."""

    __slots__ = ("name", "kind", "offset", "width", "signed", "indirect", "length_offset", "length_width",
                 "times_offset", "times_width", "_code", "_unpack")

    def __init__(self, name: str, kind: str, offset: int, width: int, *, signed: bool = False,
                 indirect: bool = False, length_offset: int = -1, length_width: int = 0,
                 times_offset: int = -1, times_width: int = 0) -> None:
        if kind not in _KINDS:
            raise ValueError(f"Field {name}: unknown kind {kind} (int, bool, bytes, value)")
        if max(offset, length_offset, times_offset) > _MAX_FIELD_OFFSET:
            raise ValueError(f"Field {name}: offsets must be at most {_MAX_FIELD_OFFSET} (kvm_run is a few pages)")
        try:
            if offset < 0:
                raise ValueError
            if kind in ("int", "bool") or indirect:
                _check_width(width)
            if kind in ("bytes", "value"):
                if length_offset < 0:
                    raise ValueError
                _check_width(length_width)
            if times_offset >= 0:
                _check_width(times_width)
        except ValueError:
            raise ValueError(f"Field {name}: bad offset or width (widths are 1, 2, 4 or 8 bytes)") from None
        self.name = name
        self.kind = kind
        self.offset = offset
        self.width = width
        self.signed = signed
        self.indirect = indirect
        self.length_offset = length_offset
        self.length_width = length_width
        self.times_offset = times_offset
        self.times_width = times_width
        # the struct code of the field at `offset` (its width is checked above where it matters)
        code = {1: "B", 2: "H", 4: "I", 8: "Q"}.get(width, "B")
        self._code = code.lower() if signed else code
        self._unpack = struct.Struct("=" + self._code).unpack_from

    def __repr__(self) -> str:
        return f"<Field {self.name} {self.kind} at {self.offset}>"

    def _out_of_page(self, start: int, length: int, size: int) -> ValueError:
        return ValueError(f"{self.name}: [{start}, {start + length}) is outside the {size}-byte kvm_run mapping")

    def __set__(self, obj: Any, value: Any) -> None:
        raise AttributeError(f"{self.name} is read-only (reply through the exit's methods)")

    def __get__(self, obj: Any, cls: Any = None) -> Any:
        if obj is None:
            return self
        if not isinstance(obj, ExitBase):
            raise TypeError(f"{self.name} reads an exit, not {type(obj).__name__}")
        page = obj._page
        size = page.nbytes
        offset, width = self.offset, self.width
        if offset + width > size:
            raise self._out_of_page(offset, width, size)
        kind = self.kind
        if kind == "int":
            return self._unpack(page, offset)[0]
        if kind == "bool":
            return self._unpack(page, offset)[0] != 0
        start = self._unpack(page, offset)[0] if self.indirect else offset
        end = self.length_offset + self.length_width
        times_end = self.times_offset + self.times_width
        if end > size or (self.times_offset >= 0 and times_end > size):
            raise self._out_of_page(self.length_offset, self.length_width, size)
        length = int.from_bytes(page[self.length_offset : end], _BYTEORDER)
        if kind == "value":
            if not 1 <= length <= 8:
                raise ValueError(f"{self.name}: an element of {length} bytes is not an integer")
            if start + length > size:
                raise self._out_of_page(start, length, size)
            return int.from_bytes(page[start : start + length], _BYTEORDER)
        if self.times_offset >= 0:
            length *= int.from_bytes(page[self.times_offset : times_end], _BYTEORDER)
        if start + length > size:
            raise self._out_of_page(start, length, size)
        return page[start : start + length]


__all__ = ["Runner", "VcpuBase", "ExitBase", "Field", "ValueIoctl", "ioctl"]
