"""`KvmFd`: the base of every object that owns a KVM file descriptor.

It owns the fd (close-on-exec), closes it deterministically (and its children first), refuses use after
close or from a forked child, and issues ioctls by name: the number, and the capability that gates the
ioctl, come from the binding in use (`kvm.generated` by default), never from this file.
"""

from __future__ import annotations

import _thread
import errno
import functools
import importlib
import os
import time
import weakref
from collections.abc import Mapping
from types import ModuleType

from . import _sys, marshal
from ._accel import ioctl as _ioctl_value
from ._accel import ioctl_method
from .errors import UnavailableError, CapabilityError, ClosedError, ForkedError, KvmError

TYPE_CHECKING = False
if TYPE_CHECKING:  # (`typing` is not imported at run time: see kvm/_namedtuple.py)
    from collections.abc import Callable, Hashable, Iterable
    from contextlib import AbstractContextManager
    from typing import Any, Concatenate, NoReturn, ParamSpec, Self, TypeVar, overload

    _F = TypeVar("_F", bound=Callable[..., Any])
    _P = ParamSpec("_P")
    _R = TypeVar("_R")
    _H = TypeVar("_H", bound="FdHolders")

# What the capability gates learnt, shared by the fds whose KVM_CHECK_EXTENSION answers depend on the same
# things: every Kvm of one device path, every VM of one path and type, their vCPUs. key -> (capability ->
# answer, ioctl name -> (number, bytes the kernel uses at a pointer argument) of the ioctls whose gate was
# passed: what `_ioctl` needs of an ioctl, found once)
_GATE_STATE: dict[Hashable, tuple[dict[int, int], dict[str, tuple[int, int]]]] = {}


def shared_gate_state(key: Hashable, binding: ModuleType, fd_kind: str) -> tuple[dict[int, int], dict[str, tuple[int, int]]]:
    """The `_cap_answers` and `_passed` of the fds of `key` (kind, binding, path[, VM type]): every VM of
    a process does not ask KVM_CHECK_EXTENSION nor check its gates again. A new one starts with the gates
    `prepass` passed."""
    state = _GATE_STATE.get(key)
    if state is None:
        state = _GATE_STATE[key] = ({}, dict(_PREPASSED.get((binding.__name__, fd_kind), ())))
    return state


# (binding name, fd kind) -> the `_passed` entries prepass made
_PREPASSED: dict[tuple[str, str], dict[str, tuple[int, int]]] = {}


def prepass(binding: ModuleType, fd_kind: str, names: Iterable[str]) -> None:
    """Pass now the gates of those ioctls of `names` that exist for `fd_kind` fds and that no capability gates
    there (the binding's facts alone decide): the gate states made afterwards start with them passed.
    kvm.system does it at import for the ioctls on the way to the first exit."""
    table = _PREPASSED.setdefault((binding.__name__, fd_kind), {})
    for name in names:
        spec = binding.IOCTLS.get(name)
        if spec is not None and spec.capability_for(fd_kind) is None and absent_reason(binding, name, fd_kind) is None:
            table[name] = passed_entry(spec)


def passed_entry(spec: Any) -> tuple[int, int]:
    """What `_ioctl` needs of an ioctl whose gate was passed: its number, and the bytes the kernel uses at a
    pointer argument (0 when it uses none)."""
    return spec.number, spec.size if spec.direction != "none" else 0

_CLOSED = -1
_FORKED = -2

# Every open KvmFd (weak references, each removing itself when its object goes), so that a fork() can mark the
# child's copies unusable. (Not a WeakSet, nor a WeakValueDictionary for the children below: their Python code
# costs every VM's way to its first exit several microseconds; these are plain C calls.)
_LIVE: set[weakref.ref[KvmFd]] = set()


def _after_fork_in_child() -> None:
    for obj in [ref() for ref in list(_LIVE)]:
        if obj is None:
            continue
        obj._users = []  # (the threads that held its fd, or its lock, are the parent's)
        obj._closing_fd = -1
        obj._lock = _thread.RLock()
        if obj._fd >= 0:
            obj._inherited_fd = obj._fd
            obj._fd = _FORKED


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)

_raw_ioctl = _sys.raw_ioctl()
_sys_ffi = _sys.ffi
_thread_id = _sys.thread_id
_EINTR = errno.EINTR
# pointer type (a cffi ctype of any binding) -> sizeof(what it points to), for the types _check_room has
# seen: what every pointer of that type has room for
_POINTED_ROOM: dict[Any, int] = {}


def note_record_pointer(ffi: Any, record: str) -> None:
    """Note now what _check_room would find on the first `record *` argument: its room (kvm.system does it
    at import for the records on the way to the first exit)."""
    _POINTED_ROOM[ffi.typeof(record + " *")] = ffi.sizeof(record)


_typeof = _sys_ffi.typeof  # (the type of a cdata of any FFI)
_CData = _sys_ffi.CData  # (the class of every cdata, whichever FFI made it)
_FROM_BUFFER = _sys.FROM_BUFFER
_EINTR_ANSWERS = frozenset({"KVM_RUN"})  # ioctls whose EINTR is an answer (kick, immediate_exit), never retried


def needs(*ioctls: str) -> Callable[[_F], _F]:
    """Mark an ergonomic method (or a property's getter) as issuing `ioctls` on the object's own fd: the
    classes made for a binding in which one of them does not exist there (another arch's ioctl, a newer
    kernel's, another fd kind's) do not offer it (see kvm/arches.py)."""

    def mark(function: _F) -> _F:
        function.__kvm_ioctls__ = ioctls  # type: ignore[attr-defined]
        return function

    return mark


def holding_fd(method: Callable[Concatenate[_H, _P], _R]) -> Callable[Concatenate[_H, _P], _R]:
    """Run the method with the object's fd held (see `FdHolders.hold_fd`): a close() in another thread
    waits until it has finished, so it never sees the object half changed (a slot mapped but not yet
    registered, a stats fd made after the others were closed)."""

    def held(self: _H, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        me, users = _thread_id(), self._users  # (hold_fd() inlined: this is on the way to every VM's first exit)
        users.append(me)
        try:
            self.fileno()
            return method(self, *args, **kwargs)
        finally:
            self._leave(users, me)

    functools.update_wrapper(held, method)  # (its name, docstring and the ioctls needs() marked)
    return held


def adopt_fd(fd: int, make: Callable[[], _R]) -> _R:
    """`make()`: the object that takes over `fd`, which an ioctl just returned. Should making it fail (the
    parent closed meanwhile, a mapping refused), `fd` never became the object's, and is closed here."""
    try:
        return make()
    except BaseException:
        os.close(fd)
        raise


class FdHolders:
    """Which threads are inside a call that uses an object's fd number (the ioctls of a KvmFd, and
    `hold_fd()` blocks), so that close() in another thread never frees the number under them: a new
    object could be given the same number, and the call would land on it."""

    _closing_fd = -1  # see _close_number

    def __init__(self) -> None:
        self._users: list[int] = []  # thread ids, one entry per call in progress
        # close() claims the fd under it (one close does the work, any other returns at once), and a
        # KvmFd's children table is changed under it (reentrant: a signal handler may close() meanwhile)
        self._lock = _thread.RLock()

    def fileno(self) -> int:
        raise NotImplementedError

    def hold_fd(self) -> AbstractContextManager[int]:
        """The open fd (ClosedError once closed), which close() in another thread does not close before
        the block ends: `with vm.hold_fd() as fd: os.fstat(fd)`."""
        return _HeldFd(self)

    def _leave(self, users: list[int], me: int) -> None:
        """Take `me` out of `users`, the holders list it was put in (a fork in the block gave the child a list
        of its own, and no deferred close: see _after_fork_in_child)."""
        users.remove(me)
        if self._closing_fd >= 0 and not users:
            self._close_deferred()

    def _close_deferred(self) -> None:
        fd, self._closing_fd = self._closing_fd, -1
        os.close(fd)

    def _wait_for_users(self) -> None:
        """Wait until no other thread is inside a call that holds the fd (the object is marked closed
        already, so no call takes it any more): those calls are short (KVM_RUN, which is not, is stopped
        before, and a blocking EventFd.read() looks out for close)."""
        me = _thread_id()
        while any(user != me for user in self._users):
            time.sleep(0.0002)  # (releases the GIL, which those threads need to finish)

    def _close_number(self, fd: int) -> None:
        """Close `fd` once no other thread's call holds it. When this thread holds it itself (close()
        from a signal handler that interrupted a call), the last holder closes it on leaving."""
        self._wait_for_users()
        if self._users:
            self._closing_fd = fd
        else:
            os.close(fd)


class _HeldFd:
    """What `hold_fd()` returns: entering holds the fd (see FdHolders) and gives its number, leaving lets go."""

    __slots__ = ("_owner", "_unused", "_held")

    def __init__(self, owner: FdHolders) -> None:
        self._owner = owner
        self._unused = [True]  # (emptied by the one __enter__ allowed: list.pop is atomic, even across threads)
        self._held: tuple[list[int], int] | None = None

    def __enter__(self) -> int:
        try:
            self._unused.pop()
        except IndexError:
            raise RuntimeError("a hold_fd() block is entered once: call hold_fd() again") from None
        owner, me = self._owner, _thread_id()
        users = owner._users
        users.append(me)
        try:
            fd = owner.fileno()
        except BaseException:
            owner._leave(users, me)
            raise
        self._held = (users, me)
        return fd

    def __exit__(self, *exc_info: object) -> None:
        held, self._held = self._held, None
        if held is not None:
            self._owner._leave(*held)


class KvmFd(FdHolders):
    """Owns one KVM fd. Subclasses set `fd_kind` ("system", "vm", "vcpu", "device")."""

    fd_kind = "system"
    # ioctls issued through a method of the object, `method(arg)`, rather than `_ioctl` directly, by the
    # generated wrappers (`obj.ioctls`) and the ergonomic methods alike (see `_issue`): Vcpu's KVM_RUN goes
    # through its Runner, which kick() and close() can interrupt; a VM notes the dirty ring it enables
    _routed_ioctls: Mapping[str, str] = {}

    _inherited_fd = -1  # the fd number a forked child's copy had (see _after_fork_in_child)
    # children are held weakly (a child the user drops closes its fd at once, which takes it out of the
    # table); the table, id(child) -> a weak reference to it, is made on the first child (most objects have
    # none: a vCPU, a device)
    _children: dict[int, weakref.ref[KvmFd]] | None = None

    def __init__(self, fd: int, binding: ModuleType, parent: KvmFd | None = None, gates: Hashable = None) -> None:
        """`gates`: the key of the capability answers and passed gates this fd shares (see shared_gate_state),
        None for its own."""
        self._fd = fd
        self._pid = _sys.pid()
        self._binding = binding
        self._ioctls = binding.IOCTLS
        self._parent = parent
        # KVM_CHECK_EXTENSION answers for the gates (see _query_cap), and what _ioctl needs of the ioctls
        # whose gate was passed (see _pass_gate)
        self._cap_answers, self._passed = (shared_gate_state(gates, binding, self.fd_kind) if gates is not None
                                           else ({}, {}))
        self._slot_pages: dict[int, int] = {}  # VM fds: slot -> pages registered (see marshal.memory_region)
        self._users: list[int] = []  # (FdHolders.__init__, inlined: on the way to every VM's first exit)
        self._lock = _thread.RLock()
        if parent is not None:
            with parent._lock:  # (a parent closing in another thread: it either closes this child or refuses it)
                if parent._fd == _CLOSED:
                    self._fd = _CLOSED  # (the caller closes the number; this object's __del__ must not)
                    raise ClosedError(f"{type(parent).__name__} ({parent.fd_kind} fd) was closed while this "
                                      f"{type(self).__name__} was being made")
                if parent._children is None:
                    parent._children = {}
                parent._children[id(self)] = weakref.ref(self)
        self._live = weakref.ref(self, _LIVE.discard)  # (made here: a refused object never was in _LIVE)
        _LIVE.add(self._live)

    # -- lifetime ---------------------------------------------------------------------------------

    def fileno(self) -> int:
        """The fd (ClosedError once closed, ForkedError in a forked child)."""
        fd = self._fd
        if fd < 0:
            self._raise_unusable()
        return fd

    def _open_children(self) -> list[KvmFd]:
        """The objects made through this one that are still open (a VM's vCPUs, devices, ...)."""
        with self._lock:
            refs = list(self._children.values()) if self._children is not None else []
        return [child for child in (ref() for ref in refs) if child is not None]

    @property
    def closed(self) -> bool:
        """Whether close() was called (on this object or a parent)."""
        return self._fd == _CLOSED

    def close(self) -> None:
        """Close the fd (and every child object first). Idempotent; a call using the fd in another thread
        is waited for (a vCPU's run() is kicked first), and calls made from now on raise ClosedError."""
        with self._lock:
            fd = self._fd
            if fd == _CLOSED:
                return
            self._fd = _CLOSED
            children = self._open_children()
        forked = fd == _FORKED or self._pid != _sys.pid()
        if fd == _FORKED:
            fd = self._inherited_fd
        try:
            for child in children:
                child.close()
            if forked:
                self._release_in_child()
            else:
                self._stop()
                self._wait_for_users()
                self._release()
        finally:
            with self._lock:
                self._children = None
            parent = self._parent
            if parent is not None:
                with parent._lock:
                    if parent._children is not None:
                        parent._children.pop(id(self), None)
            _LIVE.discard(self._live)
            if fd >= 0:
                if forked:
                    os.close(fd)  # (the child's copy; the threads that held it are the parent's)
                else:
                    self._close_number(fd)

    def _stop(self) -> None:
        """Subclass hook, first thing of close() (the object is marked closed): end what another thread
        may be doing with the fd that is not a short call (a vCPU's run())."""

    def _release(self) -> None:
        """Subclass hook: free what the object maps or owns besides its fd (called before the fd closes,
        once no other thread is inside a call on it)."""

    def _release_in_child(self) -> None:
        """Subclass hook, instead of _release() in a forked child: drop this process's copies without
        touching what it shares with the parent (the kvm_run page, guest memory)."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            if self._fd != _CLOSED and self._pid == _sys.pid():
                self.close()
        except Exception:
            pass

    def _raise_unusable(self) -> NoReturn:
        if self._fd == _FORKED or self._pid != _sys.pid():
            raise ForkedError(
                f"this {type(self).__name__} ({self.fd_kind} fd) was created in process {self._pid} and is used "
                f"from forked child {os.getpid()}: KVM fds inherited through fork() cannot be used; "
                "create a new Kvm() in the child"
            )
        raise ClosedError(f"{type(self).__name__} ({self.fd_kind} fd) is closed")

    def _check_open(self) -> int:
        fd = self._fd
        if fd < 0:
            self._raise_unusable()
        return fd

    # -- the binding --------------------------------------------------------------------------------

    @property
    def binding(self) -> ModuleType:
        """The generated binding this object issues its ioctls with (`kvm.generated.load(...)`)."""
        return self._binding

    @property
    def ffi(self) -> Any:
        """The binding's cffi FFI: `obj.ffi.new("struct kvm_regs *")`."""
        return self._binding.ffi

    @property
    def arch(self) -> str:
        """The binding's arch ("x86_64", "arm64", ...)."""
        return self._binding.ARCH  # type: ignore[no-any-return]

    # -- ioctls -----------------------------------------------------------------------------------

    def _spec(self, name: str) -> Any:
        spec = self._ioctls.get(name)
        if spec is None:
            raise UnavailableError(name, self.fd_kind, absent_reason(self._binding, name, self.fd_kind) or name)
        return spec

    def _ioctl_in_python(self, name: str, arg: Any = 0) -> int:
        """Issue ioctl `name` on this fd, after checking (once) the capability that gates it.

        `arg` is an int passed by value (-2**63 to 2**64 - 1) or a cffi pointer/buffer. Raises KvmError (with the ioctl's name,
        this fd's kind and errno), or CapabilityError without issuing the ioctl.
        """
        users = self._users
        me = _thread_id()
        users.append(me)
        try:
            fd = self._fd
            if fd < 0:
                self._raise_unusable()
            passed = self._passed.get(name)
            if passed is None:
                passed = self._pass_gate(name)
            number, room = passed
            if isinstance(arg, int):  # by value (an int, or an IntEnum member such as a Cap)
                result: int = _ioctl_value(fd, number, arg)
                while result == -_EINTR and name not in _EINTR_ANSWERS:  # (signal handlers run between tries)
                    result = _ioctl_value(fd, number, arg)
                if result < 0:
                    raise KvmError(name, self.fd_kind, -result)
                return result
            if room and (not isinstance(arg, _CData) or arg.__class__ is _FROM_BUFFER
                         or _POINTED_ROOM.get(_typeof(arg), -1) < room):
                self._check_room(name, room, arg)  # (unless the pointer's type says it has the room)
            result = _raw_ioctl(fd, number, arg)
            while result < 0:
                err = _sys_ffi.errno
                if err != _EINTR or name in _EINTR_ANSWERS:
                    raise KvmError(name, self.fd_kind, err)
                result = _raw_ioctl(fd, number, arg)  # (interrupted by a signal: tried again, as os.* do)
            return result
        finally:
            users.remove(me)  # (inline _leave: this is every ioctl's path)
            if self._closing_fd >= 0 and not users:
                self._close_deferred()

    # `_ioctl_in_python`, in one C call with the compiled module where the gate was passed and the argument
    # is an int or a pointer whose type says it has the room (kvm/_speedups.c, IoctlMethod); the rest goes
    # to the Python method
    _ioctl = ioctl_method(_ioctl_in_python, _raw_ioctl, _sys_ffi, _FROM_BUFFER, _POINTED_ROOM, _EINTR_ANSWERS, KvmError)

    def _issue(self, name: str, arg: Any = 0) -> int:
        """`_ioctl(name, arg)`, or the method `_routed_ioctls` names for it."""
        routed = self._routed_ioctls.get(name)
        if routed is not None:
            return getattr(self, routed)(arg)  # type: ignore[no-any-return]
        return self._ioctl(name, arg)

    def _check_room(self, name: str, size: int, arg: Any) -> None:
        """The kernel reads or writes the `size` bytes the ioctl number encodes at `arg`: refuse a buffer
        that holds fewer (it would read past it, or overwrite the heap), or that is not a cffi pointer."""
        ffi = self._binding.ffi
        if not isinstance(arg, ffi.CData):
            raise TypeError(f"{name}: the argument must be a cffi pointer to {size} bytes, not {type(arg).__name__}")
        ctype = ffi.typeof(arg)
        kind = ctype.kind
        if kind == "pointer":
            marshal.refuse_unsized(arg, name, ctype.cname, ctype.item.cname)
        if _POINTED_ROOM.get(ctype, -1) >= size:
            return  # (a pointer to a record at least that large: its type alone says so)
        if arg == ffi.NULL:
            return  # (the kernel answers EFAULT, or takes NULL to mean none, as KVM_SET_SIGNAL_MASK does)
        room = ffi.sizeof(arg) if kind == "array" else len(ffi.buffer(arg)) if kind == "pointer" else 0
        if room < size:
            raise ValueError(f"{name}: the kernel uses {size} bytes at the argument, which holds {room} "
                             f"({ctype.cname})")
        if kind == "pointer" and ctype.item.kind in ("struct", "union", "primitive"):
            # every pointer of this type has the room of its item at least (an allocation of a record with
            # a flexible array has more, which is why only sizeof(item) is what the type says)
            _POINTED_ROOM[ctype] = ffi.sizeof(ctype.item)

    @property
    def ioctls(self) -> Any:
        """Every generated wrapper of this fd kind, bound to this object: `SystemIoctls`, `VmIoctls`,
        `VcpuIoctls` or `DeviceIoctls` of the binding's `ioctls_*` module, issuing each ioctl on this fd
        through the same capability gates and errors. Arguments and results are the generated layer's
        (cdata, ints; `vm.ioctls.create_vcpu(0)` returns a raw fd the caller owns), one method per
        ioctl, including those this class offers in another form (`vcpu.regs` is `vcpu.ioctls.get_regs()`).
        """
        return _bound_ioctls_class(self._binding, self.fd_kind)(self)

    @property
    def caps(self) -> Any:
        """Every KVM_CAP_* of the binding, typed (kvm/caps.py), bound to this object: `SystemCaps`, `VmCaps`
        or `VcpuCaps` of the binding's `caps_*` module. `vm.caps.x2apic_api.check()` decodes
        KVM_CHECK_EXTENSION; `vm.caps.x2apic_api.enable(features=...)` checks its arguments, then issues
        KVM_ENABLE_CAP, where the capability is enabled on this kind of fd."""
        package, _, module = self._binding.__name__.rpartition(".")
        by_fd_kind = importlib.import_module(f"{package}.caps_{module}").BY_FD_KIND
        if self.fd_kind not in by_fd_kind:
            raise AttributeError(f"{self.fd_kind} fds do not answer KVM_CHECK_EXTENSION")
        return by_fd_kind[self.fd_kind](self)

    # -- capabilities -----------------------------------------------------------------------------

    def _cap_owner(self) -> KvmFd:
        """The object whose fd answers KVM_CHECK_EXTENSION for this one (overridden by Vm, Vcpu, Device)."""
        return self

    def _pass_gate(self, name: str) -> tuple[int, int]:
        """Check (once per gate key: see shared_gate_state) that ioctl `name` exists for this fd and that the
        capability gating it is present; its entry of `_passed`."""
        spec = self._spec(name)
        self._check_gate(name, spec.capability_for(self.fd_kind))
        passed = self._passed[name] = passed_entry(spec)
        return passed

    def _check_gate(self, ioctl: str, capability: str | None) -> None:
        reason = absent_reason(self._binding, ioctl, self.fd_kind)
        if reason is not None:
            raise UnavailableError(ioctl, self.fd_kind, reason)
        # nothing to check: basic API (None), or a capability this binding has no number for
        value = self._binding.CONSTANTS.get(capability) if capability is not None else None
        if capability is not None and value is not None:
            owner = self._cap_owner()
            if owner._query_cap(value) <= 0:
                raise CapabilityError(ioctl, self.fd_kind, capability, owner.fd_kind)

    def check_extension(self, cap: Any) -> int:
        """KVM_CHECK_EXTENSION, asked on every call of the fd that answers for this object (a VM's own fd
        when the host supports KVM_CAP_CHECK_EXTENSION_VM, else /dev/kvm): 0 when the capability is
        absent, else a positive, often meaningful value. `cap`: a `Cap` member, a number, or a name
        ("KVM_CAP_IRQCHIP" or "IRQCHIP")."""
        owner = self._cap_owner()
        return marshal.by_value(owner._ioctl, "KVM_CHECK_EXTENSION", self._cap_value(cap), "cap")

    @needs("KVM_ENABLE_CAP")
    def enable_cap(self, cap: Any, *args: int, flags: int = 0) -> int:
        """KVM_ENABLE_CAP on this fd (a VM or a vCPU): `args` fill `args[0..3]`."""
        flags = marshal.integer(flags, "flags", 0, 0xFFFFFFFF)
        return marshal.struct_in(self._issue, self._binding.ffi, "KVM_ENABLE_CAP", "struct kvm_enable_cap", None,
                                 {"cap": self._cap_value(cap), "flags": flags, "args": list(args)})

    def _query_cap(self, value: int) -> int:
        """KVM_CHECK_EXTENSION of `value` on this fd, asked once (what the capability gates use;
        `check_extension` asks every time)."""
        answers = self._cap_answers
        cached = answers.get(value)
        if cached is None:
            with self.hold_fd() as fd:
                result = _ioctl_value(fd, self._ioctls["KVM_CHECK_EXTENSION"].number, value)
            if result < 0:
                raise KvmError("KVM_CHECK_EXTENSION", self.fd_kind, -result)
            cached = answers[value] = result
        return cached

    def _cap_value(self, cap: Any) -> int:
        if isinstance(cap, str):
            name = cap if cap.startswith("KVM_CAP_") else "KVM_CAP_" + cap
            try:
                return self._binding.CONSTANTS[name]  # type: ignore[no-any-return]
            except KeyError:
                raise LookupError(f"no capability named {name} in this binding") from None
        return marshal.integer(cap, "cap", 0, (1 << 63) - 1)

    def __repr__(self) -> str:
        state = "closed" if self._fd == _CLOSED else ("forked" if self._fd == _FORKED else f"fd={self._fd}")
        return f"<{type(self).__name__} {state}>"


def absent_reason(binding: ModuleType, ioctl: str, fd_kind: str) -> str | None:
    """Why `ioctl` cannot be issued on a `fd_kind` fd with `binding` (not in its kernel, documented for
    other arches only, or for other kinds of fd), or None when it can."""
    spec = binding.IOCTLS.get(ioctl)
    if spec is None:
        where = f"Linux {getattr(binding, 'KERNEL', '?')} on {binding.ARCH}"
        reason = getattr(binding, "UNAVAILABLE_IOCTLS", {}).get(ioctl)
        return f"{ioctl} is not available for {where}: {reason}" if reason else f"no ioctl {ioctl} for {where}"
    if spec.arches is not None and binding.ARCH not in spec.arches:
        section = f"api.rst section {spec.section}" if spec.section else "api.rst"
        return f"{ioctl} does not exist on {binding.ARCH}: {section} documents it for {', '.join(sorted(spec.arches))}"
    if spec.fd and fd_kind not in spec.fd:
        return f"{ioctl} is issued on {' and '.join(sorted(spec.fd))} fds, not on {fd_kind} fds"
    return None


class RecordProperty:
    """A register-set property over a get/set ioctl pair of `ctype` records.

    Reading gives a new `ctype *` the kernel filled. Assigning takes a `ctype` cdata or its exact bytes
    (copied), or a mapping of members (nested records as mappings) applied over the current state.
    """

    def __init__(self, get_ioctl: str, set_ioctl: str, ctype: str, doc: str) -> None:
        self.get_ioctl, self.set_ioctl, self.ctype = get_ioctl, set_ioctl, ctype
        self.__doc__ = doc
        self.__kvm_ioctls__ = (get_ioctl, set_ioctl)  # see needs(): absent where either does not exist

    def _get(self, owner: KvmFd) -> marshal.Record:
        return marshal.struct_out(owner._ioctl, owner._binding.ffi, self.get_ioctl, self.ctype)  # type: ignore[no-any-return]

    if TYPE_CHECKING:
        @overload
        def __get__(self, owner: None, owner_type: type | None = None) -> RecordProperty: ...

        @overload
        def __get__(self, owner: KvmFd, owner_type: type | None = None) -> marshal.Record: ...

    def __get__(self, owner: KvmFd | None, owner_type: type | None = None) -> RecordProperty | marshal.Record:
        if owner is None:
            return self
        return self._get(owner)

    def __set__(self, owner: KvmFd, value: marshal.Record | bytes | Mapping[str, Any]) -> None:
        ffi = owner._binding.ffi
        record = self._get(owner) if isinstance(value, Mapping) else ffi.new(self.ctype + " *")
        marshal.fill(ffi, record, value, self.ctype)
        marshal.struct_in(owner._ioctl, ffi, self.set_ioctl, self.ctype, record)


class BoundToFd:
    """The base of what is bound to one fd object (`obj.ioctls`, `obj.caps` and each capability): `owner`."""

    __slots__ = ("_owner",)

    def __init__(self, owner: KvmFd) -> None:
        self._owner = owner

    @property
    def owner(self) -> KvmFd:
        """The object whose fd it uses."""
        return self._owner


class _BoundIoctls(BoundToFd):
    """The generated wrappers of one fd kind, issuing their ioctls through a KvmFd (see `KvmFd.ioctls`)."""

    __slots__ = ()

    def _ioctl(self, name: str, arg: Any = 0) -> int:
        return self._owner._issue(name, arg)

    @property
    def _slot_pages(self) -> dict[int, int]:
        return self._owner._slot_pages

    def __repr__(self) -> str:
        return f"<{type(self).__name__} of {self._owner!r}>"


_MIXINS = {"system": "SystemIoctls", "vm": "VmIoctls", "vcpu": "VcpuIoctls", "device": "DeviceIoctls"}
_BOUND_CLASSES: dict[tuple[str, str], type] = {}


def _bound_ioctls_class(binding: ModuleType, fd_kind: str) -> type:
    key = (binding.__name__, fd_kind)
    cls = _BOUND_CLASSES.get(key)
    if cls is None:
        mixin_name = _MIXINS.get(fd_kind)
        if mixin_name is None:
            raise AttributeError(f"the generated wrappers have no class for {fd_kind} fds")
        package, _, module = binding.__name__.rpartition(".")
        try:
            wrappers = importlib.import_module(f"{package}.ioctls_{module}")
        except ImportError:
            raise AttributeError(f"binding {binding.__name__} has no generated wrappers module") from None
        mixin = getattr(wrappers, mixin_name)
        cls = _BOUND_CLASSES[key] = type(mixin_name, (_BoundIoctls, mixin), {"__slots__": ()})
    return cls
