"""How each kind of argument crosses the ioctl boundary, and the one place ioctl input is checked.

Every ioctl goes through a function of this module, whether it is issued by a generated wrapper
(`generated/ioctls_*.py`, `obj.ioctls.get_regs()`) or by the hand-written classes (`vcpu.regs`): one
call, one behaviour. Each function takes:

- `ioctl`: a callable `(name, arg) -> int` issuing ioctl `name` on one fd (a `KvmFd._ioctl`): it checks
  the capability and the arch, and raises `KvmError` on failure;
- `ffi`: the binding's cffi FFI, which knows the records of its kernel version and arch;
- the ioctl's name, the record type, and the caller's arguments, which are checked here exactly: an
  integer is an `int` (not a bool, not a float) within the range of the field it fills, and a
  sequence or buffer is bounded before anything is allocated. A bad argument raises TypeError or
  ValueError naming the argument, the value and what is allowed; nothing is issued.

Kinds of argument: by value (`by_value`), a pointer to one integer (`scalar_*`), a record in, out or
both (`struct_*`), a record ending in a flexible array (`flex_set`, and the E2BIG protocols
`index_list`, `grow`, `sized_get`), the MSR lists, the signal mask, the dirty bitmaps, one register by
id (`one_reg_*`), device attributes (`attr_*`) and returned file descriptors (`new_fd`).
"""

from __future__ import annotations

import errno
import itertools
import mmap
import os
import sys
from collections.abc import Iterable, Mapping, Sequence

from . import _sys
from .errors import KvmError

TYPE_CHECKING = False
if TYPE_CHECKING:  # (names for type checkers only: `typing` is not imported at run time, see kvm/_namedtuple.py)
    from collections.abc import Callable
    from typing import Any, Protocol, TypeAlias

    CData: TypeAlias = Any  # a cffi cdata (e.g. a `struct kvm_regs *`)

    class Record(Protocol):
        """What type checkers know of a record the ergonomic layer returns, a cffi cdata such as a `struct
        kvm_regs *`: members are read and written as attributes, elements by index (cffi carries no static
        types, so the values are Any)."""

        def __getattr__(self, name: str) -> Any: ...

        def __setattr__(self, name: str, value: Any) -> None: ...

        def __getitem__(self, index: int) -> Any: ...

    Ioctl: TypeAlias = Callable[[str, Any], int]

_PAGE_SIZE = mmap.PAGESIZE  # the unit of KVM's dirty bitmaps: one bit per page of the running kernel
MAX_ENTRIES = 1 << 16  # largest flexible array an argument may hold, or an E2BIG loop grows to
MAX_BYTES = 1 << 26  # largest buffer allocated for one argument
ULONG_MAX = (1 << 64) - 1  # the widest by-value argument (an unsigned long on 64-bit Linux)
_BYTES = (bytes, bytearray, memoryview)


# -- checking -------------------------------------------------------------------------------------

def integer(value: Any, what: str, low: int, high: int) -> int:
    """`value` when it is an int (not a bool) in low..high, else TypeError/ValueError naming `what`."""
    if value.__class__ is not int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{what} must be an int, not {type(value).__name__} ({value!r})")
        value = int(value)  # an IntEnum / IntFlag member
    if not low <= value <= high:
        raise ValueError(f"{what} must be in {_span(low, high)}, not {value}")
    checked: int = value
    return checked


def required(fields: dict[str, Any]) -> dict[str, Any]:
    """`fields` of a record whose members the caller must all give: None is refused, naming the member
    (to `build`, None means "not given", which would leave the member 0)."""
    for name, value in fields.items():
        if value is None:
            raise TypeError(f"{name} must be given, not None")
    return fields


def boolean(value: Any, what: str) -> bool:
    """`value` when it is a bool, else TypeError naming `what` (a truthy string or None is not a yes or no)."""
    if value.__class__ is not bool:
        raise TypeError(f"{what} must be a bool, not {type(value).__name__} ({value!r})")
    checked: bool = value
    return checked


def count(value: Any, what: str, limit: int) -> int:
    """A non-negative int of at most `limit`."""
    return integer(value, what, 0, limit)


def items(values: Any, what: str, limit: int = MAX_ENTRIES) -> list[Any]:
    """The items of iterable `values` as a list, reading at most `limit` + 1 of them: more than `limit`
    (an endless iterator included) is refused, naming `what`, before any other work."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise TypeError(f"{what} must be an iterable, not {type(values).__name__}")
    out = list(itertools.islice(values, limit + 1))
    if len(out) > limit:
        raise ValueError(f"{what} holds more than {limit} items, the most it may hold")
    return out


def _span(low: int, high: int) -> str:
    def show(n: int) -> str:
        return f"2**{n.bit_length()}-1" if n > 0xFFFF and (n + 1) & n == 0 else str(n)

    return f"{'-' + show(-low - 1) + '-1' if low < -0xFFFF else low}..{show(high)}"


def _int_range(ffi: Any, ctype: Any) -> tuple[int, int]:
    bits = 8 * ffi.sizeof(ctype)
    if int(ffi.cast(ctype, -1)) < 0:
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


def _members(ctype: Any) -> dict[str, Any]:
    """The members of a record type reachable by name, anonymous unions and structs flattened (as cffi does)."""
    out: dict[str, Any] = {}
    for name, field in ctype.fields or ():
        if name:
            out[name] = field.type
        elif field.type.kind in ("struct", "union"):
            out.update(_members(field.type))
    return out


# (record type, member) -> (member type, low, high) with low/high its integer range (None: not an integer);
# record types are unique per FFI, so they are keys of their own
_MEMBER_CHECKS: dict[tuple[Any, str], tuple[Any, int | None, int | None]] = {}


def _member_check(ffi: Any, record: Any, name: str, what: str) -> tuple[Any, int | None, int | None]:
    found = _MEMBER_CHECKS.get((record, name))
    if found is None:
        members = _members(record)
        if name not in members:
            raise TypeError(f"{what}: {record.cname} has no member {name!r}")
        ctype = members[name]
        if ctype.kind == "primitive" and ctype.cname not in ("float", "double", "char", "_Bool"):
            found = (ctype, *_int_range(ffi, ctype))
        else:
            found = (ctype, None, None)
        _MEMBER_CHECKS[(record, name)] = found
    return found


def assign(ffi: Any, target: CData, name: str, value: Any, what: str) -> None:
    """Set member `name` of record `target` to `value`, checked exactly against the member's type:
    an int within the range of an integer member, a mapping of members for a nested record, a
    sequence (or bytes) no longer than an array member, a cdata of the right type."""
    record = ffi.typeof(target)
    if record.kind == "pointer":
        record = record.item
    ctype, low, high = _member_check(ffi, record, name, what)
    if low is not None and high is not None:
        if value.__class__ is not int or not low <= value <= high:  # (the common case needs no label)
            value = integer(value, f"{what}.{name}", low, high)
        setattr(target, name, value)
        return
    label = f"{what}.{name}"
    if ctype.kind in ("struct", "union") and isinstance(value, Mapping):
        sub = getattr(target, name)
        for key, item in value.items():
            assign(ffi, ffi.addressof(sub), key, item, label)
    elif ctype.kind == "array" and not isinstance(value, ffi.CData):
        array_assign(ffi, getattr(target, name), ctype, value, label)
    elif ctype.kind == "pointer" and value.__class__ is int:
        setattr(target, name, ffi.cast(ctype, integer(value, label, 0, ULONG_MAX)))
    else:
        if isinstance(value, ffi.CData) and ffi.typeof(value) is not ctype:
            raise TypeError(f"{label} must be a {ctype.cname}, not a {ffi.typeof(value).cname}")
        try:
            setattr(target, name, value)
        except (TypeError, OverflowError, ValueError) as exc:
            raise TypeError(f"{label} ({ctype.cname}): {exc}") from None


def array_assign(ffi: Any, target: CData, ctype: Any, value: Any, what: str) -> None:
    """Fill array `target` (of type `ctype`) from bytes or a sequence no longer than it; the rest is zeroed."""
    length = ctype.length
    item = ctype.item
    if isinstance(value, _BYTES) and ffi.sizeof(item) == 1:
        data = bytes(value)
        if len(data) > length:
            raise ValueError(f"{what} holds {length} bytes, not {len(data)}")
        ffi.memmove(target, data.ljust(length, b"\0"), length)
        return
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise TypeError(f"{what} must be a sequence of at most {length} items, not {type(value).__name__}")
    if len(value) > length:
        raise ValueError(f"{what} holds {length} items, not {len(value)}")
    ffi.memmove(target, bytes(ffi.sizeof(ctype)), ffi.sizeof(ctype))
    if item.kind == "primitive" and item.cname not in ("float", "double", "_Bool"):
        low, high = _int_range(ffi, item)
        for i, element in enumerate(value):
            target[i] = integer(element, f"{what}[{i}]", low, high)
    elif item.kind in ("struct", "union"):
        for i, element in enumerate(value):
            fill(ffi, ffi.addressof(target, i), element, f"{what}[{i}]")
    elif item.kind == "array":
        for i, element in enumerate(value):
            array_assign(ffi, target[i], item, element, f"{what}[{i}]")
    else:
        for i, element in enumerate(value):
            try:
                target[i] = element
            except (TypeError, OverflowError, ValueError, IndexError) as exc:
                raise TypeError(f"{what}[{i}] ({item.cname}): {exc}") from None


def fill(ffi: Any, target: CData, value: Any, what: str) -> None:
    """Copy `value` into the record `target` points to: a cdata of the same record, a mapping of
    members, or a bytes-like of exactly its size."""
    ctype = ffi.typeof(target).item
    if isinstance(value, Mapping):
        for key, item in value.items():
            assign(ffi, target, key, item, what)
    elif isinstance(value, ffi.CData):
        source = record_pointer(ffi, ctype.cname, value, what)
        ffi.memmove(target, source, ffi.sizeof(ctype))
    elif isinstance(value, _BYTES):
        data = bytes(value)
        if len(data) != ffi.sizeof(ctype):
            raise ValueError(f"{what} must be {ffi.sizeof(ctype)} bytes (a {ctype.cname}), not {len(data)}")
        ffi.memmove(target, data, len(data))
    else:
        raise TypeError(f"{what} must be a {ctype.cname} cdata, a mapping of its members or its bytes, "
                        f"not {type(value).__name__}")


def refuse_unsized(pointer: Any, what: str, cname: str, item: str) -> None:
    """Refuse a pointer (of C type `cname`, to `item`) that ffi.from_buffer() made: cffi reports sizeof(item)
    for it whatever the size of the buffer under it, so nothing could check that the kernel's bytes fit."""
    if pointer.__class__ is _sys.FROM_BUFFER:
        raise TypeError(f"{what}: a {cname} made by ffi.from_buffer() does not say how large its buffer is (cffi "
                        f"reports sizeof({item})): pass a record of ffi.new(), or, where raw bytes are taken, "
                        "ffi.from_buffer(\"char[]\", buffer)")


def record_pointer(ffi: Any, ctype: str, arg: Any, what: str = "arg") -> CData:
    """`arg` as a `ctype *`: a `ctype *` cdata as it is, a `ctype` cdata (a member, an array item) by
    address; anything else, including a pointer to another record, is refused."""
    if not isinstance(arg, ffi.CData):
        raise TypeError(f"{what} must be a {ctype} cdata, not {type(arg).__name__}")
    kind = ffi.typeof(arg)
    if kind is ffi.typeof(ctype + " *"):
        if arg == ffi.NULL:
            raise ValueError(f"{what} is a NULL {ctype} pointer")
        refuse_unsized(arg, what, ctype + " *", ctype)
        return arg
    if kind is ffi.typeof(ctype):
        return ffi.addressof(arg)
    raise TypeError(f"{what} must be a {ctype} cdata, not a {kind.cname}")


def build(ffi: Any, ctype: str, arg: Any, fields: Mapping[str, Any], what: str = "arg") -> CData:
    """`arg` (a `ctype` cdata, or None for a new zeroed one) with the members in `fields` that are not
    None set, each checked against its type."""
    pointer = ffi.new(ctype + " *") if arg is None else record_pointer(ffi, ctype, arg, what)
    for name, value in fields.items():
        if value is not None:
            assign(ffi, pointer, name, value, ctype)
    return pointer


# -- by value, scalars, records -------------------------------------------------------------------

def by_value(ioctl: Ioctl, name: str, value: Any = 0, what: str = "arg") -> int:
    """An ioctl whose argument is an integer passed by value; returns its (non-negative) result."""
    return ioctl(name, integer(value, what, 0, ULONG_MAX))


def new_fd(fd: int) -> int:
    """A file descriptor an ioctl returned, made close-on-exec (KVM_CREATE_GUEST_MEMFD's is not)."""
    os.set_inheritable(fd, False)
    return fd


def scalar_in(ioctl: Ioctl, ffi: Any, name: str, ctype: str, value: Any, what: str = "value") -> int:
    """The kernel reads one integer of `ctype` through the pointer; returns the ioctl's result."""
    low, high = _int_range(ffi, ctype)
    return ioctl(name, ffi.new(ctype + " *", integer(value, what, low, high)))


def scalar_out(ioctl: Ioctl, ffi: Any, name: str, ctype: str) -> int:
    """The kernel writes one integer of `ctype` through the pointer: that integer."""
    pointer = ffi.new(ctype + " *")
    ioctl(name, pointer)
    return int(pointer[0])


def scalar_inout(ioctl: Ioctl, ffi: Any, name: str, ctype: str, value: Any, what: str = "value") -> int:
    """The kernel reads `value` and writes an integer of `ctype` back over it: that integer."""
    low, high = _int_range(ffi, ctype)
    pointer = ffi.new(ctype + " *", integer(value, what, low, high))
    ioctl(name, pointer)
    return int(pointer[0])


def struct_out(ioctl: Ioctl, ffi: Any, name: str, ctype: str) -> CData:
    """A new `ctype *` the kernel filled."""
    pointer = ffi.new(ctype + " *")
    ioctl(name, pointer)
    return pointer


def struct_in(ioctl: Ioctl, ffi: Any, name: str, ctype: str, arg: Any = None,
              fields: Mapping[str, Any] = {}) -> int:
    """The kernel reads a `ctype`: `arg` (a cdata of it) or a new one, with `fields` set; returns the result."""
    return ioctl(name, build(ffi, ctype, arg, fields))


def struct_inout(ioctl: Ioctl, ffi: Any, name: str, ctype: str, arg: Any = None,
                 fields: Mapping[str, Any] = {}) -> CData:
    """The kernel reads and updates a `ctype`: returns the `ctype *` it updated."""
    pointer = build(ffi, ctype, arg, fields)
    ioctl(name, pointer)
    return pointer


# -- flexible arrays and the E2BIG protocols -----------------------------------------------------

def flex_set(ioctl: Ioctl, ffi: Any, name: str, ctype: str, count_field: str, array: str, entries: Any,
             fields: Mapping[str, Any] = {}) -> int:
    """A `ctype` whose flexible array `array` holds `entries` (a sequence of cdata or mappings), with
    `count_field` set to their number; or a ready `ctype` cdata, whose count must fit its allocation."""
    if isinstance(entries, ffi.CData):
        pointer = build(ffi, ctype, entries, fields, "entries")
        _check_flex_allocation(ffi, ctype, array, pointer, int(getattr(pointer, count_field)))
        return ioctl(name, pointer)
    if isinstance(entries, (str, bytes)) or not isinstance(entries, Iterable):
        raise TypeError(f"entries must be a sequence of entries or a {ctype} cdata, not {type(entries).__name__}")
    rows = items(entries, "entries")
    pointer = ffi.new(ctype + " *", {array: len(rows)})
    setattr(pointer, count_field, len(rows))
    slots = getattr(pointer, array)
    for i, item in enumerate(rows):
        fill(ffi, ffi.addressof(slots, i), item, f"entries[{i}]")
    for key, value in fields.items():
        if value is not None:
            assign(ffi, pointer, key, value, ctype)
    return ioctl(name, pointer)


def _check_flex_allocation(ffi: Any, ctype: str, array: str, pointer: Any, declared: int) -> None:
    """Refuse a ready cdata whose count says more entries than are allocated behind it (cffi knows the
    size of what `ffi.new` allocated; of anything else, only the fixed part)."""
    entry = dict(ffi.typeof(ctype).fields)[array].type.item
    room = (len(ffi.buffer(pointer)) - ffi.offsetof(ctype, array)) // ffi.sizeof(entry)
    if declared > room:
        raise ValueError(f"entries: the {ctype} says {declared} entries but has room for {room}")


def index_list(ioctl: Ioctl, ffi: Any, name: str, ctype: str, count_field: str, array: str, start: int) -> list[int]:
    """E2BIG protocol where the kernel writes the count it needs into `count_field`; returns the list."""
    size = start
    while True:
        pointer = ffi.new(ctype + " *", {count_field: size, array: size})
        try:
            ioctl(name, pointer)
        except KvmError as exc:
            needed = int(getattr(pointer, count_field))
            if exc.errno != errno.E2BIG or needed <= size or needed > MAX_ENTRIES:
                raise
            size = needed
            continue
        found = min(int(getattr(pointer, count_field)), size)
        values = getattr(pointer, array)
        return [int(values[i]) for i in range(found)]


def grow(ioctl: Ioctl, ffi: Any, name: str, ctype: str, nent: int | None, start: int) -> CData:
    """E2BIG protocol without a count back (the CPUID tables): a `ctype *` with room for `nent`
    entries, or, with `nent` None, doubled until the kernel's answer fits; `nent` is what it wrote."""
    size = start if nent is None else count(nent, "nent", MAX_ENTRIES)
    while True:
        pointer = ffi.new(ctype + " *", {"nent": size, "entries": size})
        try:
            ioctl(name, pointer)
        except KvmError as exc:
            if exc.errno != errno.E2BIG or nent is not None or size >= MAX_ENTRIES:
                raise
            size = min(max(size * 2, int(pointer.nent)), MAX_ENTRIES)
            continue
        return pointer


def sized_get(ioctl: Ioctl, ffi: Any, name: str, ctype: str, size_field: str, size: int | None) -> CData:
    """E2BIG protocol where the record's `size_field` is its total size in bytes (KVM_GET_NESTED_STATE)."""
    base = ffi.sizeof(ctype)
    want = base if size is None else count(size, "size", MAX_BYTES)
    while True:
        room = max(want, base)
        buffer = ffi.new("char[]", room)
        pointer = ffi.cast(ctype + " *", buffer)
        setattr(pointer, size_field, room)
        try:
            ioctl(name, pointer)
        except KvmError as exc:
            needed = int(getattr(pointer, size_field))
            if exc.errno != errno.E2BIG or size is not None or needed <= room or needed > MAX_BYTES:
                raise
            want = needed
            continue
        return ffi.gc(pointer, lambda _p, _keep=buffer: None)  # the buffer lives as long as the pointer


def xsave2(ioctl: Ioctl, ffi: Any, name: str, size: int) -> CData:
    """KVM_GET_XSAVE2: a `struct kvm_xsave *` of `size` bytes (what KVM_CAP_XSAVE2 reports), at least
    the fixed 4096."""
    base = ffi.sizeof("struct kvm_xsave")
    extra = (max(count(size, "size", MAX_BYTES), base) - base + 3) // 4
    pointer = ffi.new("struct kvm_xsave *", {"extra": extra})
    ioctl(name, pointer)
    return pointer


def xsave_set(ioctl: Ioctl, ffi: Any, name: str, value: Any, size: int) -> int:
    """KVM_SET_XSAVE of `value`, a `struct kvm_xsave` cdata (as KVM_GET_XSAVE(2) gives) or its bytes. The
    kernel reads as many bytes as the vCPU's XSAVE state holds, `size` (KVM_CHECK_EXTENSION(KVM_CAP_XSAVE2)
    on the VM fd; at most 4096 before AMX), not the 4096 the ioctl number says: a shorter record is
    refused."""
    base = ffi.sizeof("struct kvm_xsave")
    size = count(size, "size", MAX_BYTES)
    if isinstance(value, _BYTES):
        data = bytes(value)
        count(len(data), "len(xsave)", MAX_BYTES)
        if len(data) < base:
            raise ValueError(f"xsave must be at least {base} bytes, not {len(data)}")
        record = ffi.new("struct kvm_xsave *", {"extra": (len(data) - base + 3) // 4})
        ffi.memmove(record, data, len(data))
    else:
        record = record_pointer(ffi, "struct kvm_xsave", value, "xsave")
    held = len(ffi.buffer(record))
    if held < size:
        raise ValueError(f"xsave: this vCPU's XSAVE state is {size} bytes (KVM_CAP_XSAVE2); the record holds {held}")
    return ioctl(name, record)


# -- MSRs -----------------------------------------------------------------------------------------

def msrs_get(ioctl: Ioctl, ffi: Any, name: str, indices: Any) -> dict[int, int]:
    """KVM_GET_MSRS: {index: value} of the MSRs read. The kernel reads them in order and stops at the
    first it cannot read, so the result holds a prefix of `indices`: compare its length to see whether
    all were read (an index missing from the result and every one after it were not)."""
    if isinstance(indices, (str, bytes)) or not isinstance(indices, Iterable):
        raise TypeError(f"indices must be an iterable of MSR numbers, not {type(indices).__name__}")
    wanted = [integer(index, f"indices[{i}]", 0, 0xFFFFFFFF) for i, index in enumerate(items(indices, "indices"))]
    pointer = ffi.new("struct kvm_msrs *", {"nmsrs": len(wanted), "entries": [{"index": i} for i in wanted]})
    done = min(ioctl(name, pointer), len(wanted))
    return {int(pointer.entries[i].index): int(pointer.entries[i].data) for i in range(done)}


def msrs_set(ioctl: Ioctl, ffi: Any, name: str, msrs: Any) -> int:
    """KVM_SET_MSRS: write {index: value}; returns how many were written. The kernel writes them in
    order and stops at the first it refuses: the ones before it stay written."""
    if not isinstance(msrs, Mapping):
        raise TypeError(f"msrs must be a mapping {{index: value}}, not {type(msrs).__name__}")
    count(len(msrs), "the number of MSRs", MAX_ENTRIES)
    entries = [{"index": integer(index, "an MSR index (a key of msrs)", 0, 0xFFFFFFFF),
                "data": integer(value, f"msrs[{index:#x}]", 0, (1 << 64) - 1)}
               for index, value in msrs.items()]
    return ioctl(name, ffi.new("struct kvm_msrs *", {"nmsrs": len(entries), "entries": entries}))


# -- signal mask, dirty bitmaps, registers by id, attributes ---------------------------------------

def signal_mask(ioctl: Ioctl, ffi: Any, name: str, signals: Any, sigset_bytes: int) -> int:
    """KVM_SET_SIGNAL_MASK: the signals blocked while KVM_RUN runs; None removes the mask."""
    if signals is None:
        return ioctl(name, 0)
    if isinstance(signals, (str, bytes)) or not isinstance(signals, Iterable):
        raise TypeError(f"signals must be an iterable of signal numbers, not {type(signals).__name__}")
    bits = 0
    for sig in items(signals, "signals"):
        bits |= 1 << (integer(sig, "signal number", 1, sigset_bytes * 8) - 1)
    mask = list(bits.to_bytes(sigset_bytes, sys.byteorder))
    return ioctl(name, ffi.new("struct kvm_signal_mask *", {"len": sigset_bytes, "sigset": mask}))


def memory_region(ioctl: Ioctl, ffi: Any, name: str, ctype: str, arg: Any, fields: Mapping[str, Any],
                  slot_pages: dict[int, int]) -> int:
    """KVM_SET_USER_MEMORY_REGION(2): as `struct_in`, and once the kernel accepted it, `slot_pages` (the
    VM fd's table) records the slot's size in pages (or forgets a deleted slot): the size of the
    bitmap KVM_GET_DIRTY_LOG will write for it."""
    pointer = build(ffi, ctype, arg, fields)
    result = ioctl(name, pointer)
    slot, size = int(pointer.slot), int(pointer.memory_size)
    if size:
        slot_pages[slot] = -(-size // _PAGE_SIZE)
    else:
        slot_pages.pop(slot, None)
    return result


def bitmap_bytes(npages: int) -> int:
    """The bytes of a dirty bitmap of `npages` pages: the kernel writes whole 64-bit words."""
    return (npages + 63) // 64 * 8


def dirty_log(ioctl: Ioctl, ffi: Any, name: str, slot: Any, slot_pages: Mapping[int, int]) -> bytes:
    """KVM_GET_DIRTY_LOG of `slot`. The kernel writes a bitmap as long as the slot, so the buffer is sized
    from the slot's size as registered on this VM fd (`slot_pages`, kept by `memory_region`), never
    from the caller."""
    slot = integer(slot, "slot", 0, 0xFFFFFFFF)
    if slot not in slot_pages:
        raise ValueError(f"slot {slot:#x} has no memory registered through this VM object "
                         "(its dirty bitmap's size is unknown)")
    nbytes = bitmap_bytes(slot_pages[slot])
    bitmap = ffi.new("char[]", max(nbytes, 8))
    pointer = ffi.new("struct kvm_dirty_log *", {"slot": slot})
    pointer.dirty_bitmap = bitmap
    ioctl(name, pointer)
    data: bytes = ffi.buffer(bitmap, nbytes)[:]
    return data


def clear_dirty_log(ioctl: Ioctl, ffi: Any, name: str, slot: Any, first_page: Any, num_pages: Any,
                    bitmap: Any = None) -> int:
    """KVM_CLEAR_DIRTY_LOG of pages first_page..first_page+num_pages-1 of `slot`: those set in
    `bitmap` (bit i = page first_page+i; None: all of them). The kernel requires `first_page` to be a
    multiple of 64 and `num_pages` too unless the range ends at the end of the slot."""
    slot = integer(slot, "slot", 0, 0xFFFFFFFF)
    first_page = integer(first_page, "first_page", 0, (1 << 64) - 1)
    num_pages = count(num_pages, "num_pages", min(MAX_BYTES * 8, 0xFFFFFFFF))
    nbytes = bitmap_bytes(num_pages)
    if bitmap is None:
        data = (((1 << num_pages) - 1).to_bytes(nbytes, "little") if num_pages else b"")
    elif isinstance(bitmap, _BYTES):
        data = bytes(bitmap)
        if len(data) > nbytes:
            raise ValueError(f"bitmap has {len(data)} bytes; {num_pages} pages take {nbytes}")
        data = data.ljust(nbytes, b"\0")
    else:
        raise TypeError(f"bitmap must be bytes or None, not {type(bitmap).__name__}")
    buffer = ffi.new("char[]", max(nbytes, 8))
    ffi.memmove(buffer, data, len(data))
    pointer = ffi.new("struct kvm_clear_dirty_log *", {"slot": slot, "first_page": first_page,
                                                       "num_pages": num_pages})
    pointer.dirty_bitmap = buffer
    return ioctl(name, pointer)


def reg_size(constants: Mapping[str, int], reg_id: Any) -> int:
    """The bytes of register `reg_id`: 2 to the power of its KVM_REG_SIZE field (1 for U8 up to 256 for
    U2048), read with the binding's KVM_REG_SIZE_MASK and KVM_REG_SIZE_SHIFT."""
    number = integer(reg_id, "reg_id", 0, (1 << 64) - 1)
    return 1 << ((number & constants["KVM_REG_SIZE_MASK"]) >> constants["KVM_REG_SIZE_SHIFT"])


def one_reg_get(ioctl: Ioctl, ffi: Any, constants: Mapping[str, int], name: str, reg_id: Any) -> int:
    """KVM_GET_ONE_REG: the register's value as an unsigned int of its size (in the host's byte order)."""
    size = reg_size(constants, reg_id)
    buffer = ffi.new("char[]", size)
    ioctl(name, ffi.new("struct kvm_one_reg *", {"id": reg_id, "addr": int(ffi.cast("uintptr_t", buffer))}))
    return int.from_bytes(ffi.buffer(buffer, size), sys.byteorder)


def one_reg_set(ioctl: Ioctl, ffi: Any, constants: Mapping[str, int], name: str, reg_id: Any, value: Any) -> int:
    """KVM_SET_ONE_REG: `value`, an unsigned int that fits the register's size."""
    size = reg_size(constants, reg_id)
    data = integer(value, f"value of register {reg_id:#x}", 0, (1 << (8 * size)) - 1).to_bytes(size, sys.byteorder)
    buffer = ffi.new("char[]", data)
    return ioctl(name, ffi.new("struct kvm_one_reg *", {"id": reg_id, "addr": int(ffi.cast("uintptr_t", buffer))}))


def _path_part(part: str) -> tuple[str, int | None] | None:
    """("regs", None) for "regs", ("vregs", 3) for "vregs[3]", None for anything else."""
    name, bracket, index = part.partition("[")
    if not name.isidentifier():
        return None
    if not bracket:
        return name, None
    digits = index[:-1]
    if not index.endswith("]") or not digits.isascii() or not digits.isdigit():
        return None
    return name, int(digits)


def member_layout(ffi: Any, ctype: str, path: str) -> tuple[int, int]:
    """(offset, size) of the one integer member `path` of record `ctype` ("regs.pc", "fp_regs.vregs[3]"),
    from the binding's cffi layout; ValueError for a member or element the record lacks, a record or an array."""
    if not isinstance(path, str):
        raise TypeError(f"name must be a str, not {type(path).__name__}")
    kind = ffi.typeof(ctype)
    steps: list[str | int] = []
    for part in path.split("."):
        parsed = _path_part(part)
        fields = dict(kind.fields or ()) if kind.kind in ("struct", "union") else {}
        if parsed is None or parsed[0] not in fields:
            raise ValueError(f"{ctype} has no member {path!r}")
        member, index = parsed
        kind = fields[member].type
        steps.append(member)
        if index is not None:
            if kind.kind != "array" or index >= kind.length:
                raise ValueError(f"{ctype} has no member {path!r}: {member} has no element {index}")
            kind = kind.item
            steps.append(index)
    if kind.kind != "primitive" and kind is not ffi.typeof("__uint128_t"):
        raise ValueError(f"{ctype}.{path} is a {kind.cname}, not one register: name one of its members or elements")
    return ffi.offsetof(ctype, *steps), ffi.sizeof(kind)


def reg_size_bits(constants: Mapping[str, int], size: int) -> int:
    """The KVM_REG_SIZE_* bits of a register id for a register of `size` bytes."""
    try:
        return constants[f"KVM_REG_SIZE_U{8 * size}"]
    except KeyError:
        raise ValueError(f"no register id encodes a size of {size} bytes") from None



ATTR_BYTES = 8  # what KVM writes for every attribute of at most 64 bits (and it writes no fewer)


def _attr(ffi: Any, group: Any, attr: Any, flags: Any, address: int) -> CData:
    return ffi.new("struct kvm_device_attr *", {
        "flags": integer(flags, "flags", 0, 0xFFFFFFFF), "group": integer(group, "group", 0, 0xFFFFFFFF),
        "attr": integer(attr, "attr", 0, (1 << 64) - 1), "addr": address})


def attr_has(ioctl: Ioctl, ffi: Any, name: str, group: Any, attr: Any, flags: Any = 0) -> bool:
    """KVM_HAS_DEVICE_ATTR: whether the attribute exists here (False when the kernel says ENXIO)."""
    try:
        ioctl(name, _attr(ffi, group, attr, flags, 0))
    except KvmError as exc:
        if exc.errno == errno.ENXIO:
            return False
        raise
    return True


def attr_get(ioctl: Ioctl, ffi: Any, name: str, group: Any, attr: Any, size: Any = ATTR_BYTES, flags: Any = 0) -> bytes:
    """KVM_GET_DEVICE_ATTR: the attribute's first `size` bytes. The buffer is never smaller than
    ATTR_BYTES, as the kernel writes 64-bit attributes whole; larger records need their `size`."""
    size = count(size, "size", MAX_BYTES)
    buffer = ffi.new("char[]", max(size, ATTR_BYTES))
    ioctl(name, _attr(ffi, group, attr, flags, int(ffi.cast("uintptr_t", buffer))))
    data: bytes = ffi.buffer(buffer, size)[:]
    return data


def attr_set(ioctl: Ioctl, ffi: Any, name: str, group: Any, attr: Any, value: Any = None, flags: Any = 0,
             size: Any = ATTR_BYTES) -> int:
    """KVM_SET_DEVICE_ATTR: `value` an int (passed as an unsigned integer of `size` bytes: 1, 2, 4 or 8,
    as the attribute is declared), bytes (passed as they are), or None (address 0: attributes that take
    no value). The buffer is padded to ATTR_BYTES with zeros."""
    if value is None:
        return ioctl(name, _attr(ffi, group, attr, flags, 0))
    if value.__class__ is int or (isinstance(value, int) and not isinstance(value, bool)):
        if size.__class__ is not int or size not in (1, 2, 4, 8):
            raise ValueError(f"size must be 1, 2, 4 or 8 (an int) for an int value, not {size!r}")
        data = integer(value, "value", 0, (1 << (8 * size)) - 1).to_bytes(size, sys.byteorder)
    elif isinstance(value, _BYTES):
        data = bytes(value)
        count(len(data), "len(value)", MAX_BYTES)
    else:
        raise TypeError(f"value must be an int, bytes or None, not {type(value).__name__}")
    buffer = ffi.new("char[]", data.ljust(ATTR_BYTES, b"\0"))
    return ioctl(name, _attr(ffi, group, attr, flags, int(ffi.cast("uintptr_t", buffer))))


__all__ = [
    "ATTR_BYTES", "MAX_BYTES", "MAX_ENTRIES", "ULONG_MAX", "array_assign", "assign",
    "attr_get", "attr_has", "attr_set", "items", "member_layout", "reg_size_bits", "bitmap_bytes", "build", "by_value", "clear_dirty_log", "count",
    "dirty_log", "fill", "memory_region", "flex_set", "grow", "index_list", "integer", "msrs_get", "msrs_set", "new_fd",
    "one_reg_get", "one_reg_set", "xsave_set", "record_pointer", "reg_size", "scalar_in", "scalar_inout", "scalar_out",
    "signal_mask", "sized_get", "struct_in", "struct_inout", "struct_out", "xsave2",
]
