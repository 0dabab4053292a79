"""The run loop's hot path, in both implementations: the compiled kvm._speedups and kvm._pure.

The Field/Runner/ExitBase checks run each implementation side by side on a plain buffer standing in
for kvm_run (no KVM needed); the guest checks use whichever implementation `kvm` picked (tox runs the
whole suite a second time with KVM_PURE_PYTHON=1, so real guests go through both).
"""

from __future__ import annotations

import errno
import importlib
import os
import shutil
import struct
import sys
import types

import pytest

import kvm
import kvm._accel
import kvm._pure
import kvm.generated
from kvm.exits import EXIT_CLASSES, _field_arguments, dispatch_table, reason_names

from guests import real_mode_guest

try:
    speedups: types.ModuleType | None = importlib.import_module("kvm._speedups")
except ImportError:
    speedups = None

IMPLEMENTATIONS = [pytest.param(kvm._pure, id="pure")] + [
    pytest.param(speedups, id="native",
                 marks=pytest.mark.skipif(speedups is None, reason="kvm._speedups was not built (no C compiler at install)"))
]

PAGE = 4096


def test_compiled_fast_path_is_in_use_where_it_can_be_built():
    if os.environ.get("KVM_PURE_PYTHON"):
        assert not kvm._accel.NATIVE
        pytest.skip("KVM_PURE_PYTHON is set: this run checks the pure-Python path")
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("no C compiler on this machine: the install used the pure-Python path")
    assert speedups is not None, "a C compiler exists but kvm._speedups was not built: see the pip install log"
    assert kvm._accel.NATIVE and kvm._accel.Runner is speedups.Runner


class _Page:
    """A stand-in vCPU whose Runner covers a plain buffer instead of a kvm_run mapping."""

    def __init__(self, impl: types.ModuleType, size: int = PAGE) -> None:
        self.buffer = bytearray(size)
        self._runner = impl.Runner(-1, 0, memoryview(self.buffer), (), _Page._fail, _Page._fail,
                                   _Page._unusable, 8)

    def _fail(self, *args: object) -> None:
        raise AssertionError("not reached")

    def _unusable(self) -> None:
        raise kvm.ClosedError("stand-in vCPU")

    def put(self, offset: int, fmt: str, value: object) -> None:
        struct.pack_into("=" + fmt, self.buffer, offset, value)


def _exit_class(impl: types.ModuleType, **fields: object) -> type:
    cls = type("Probe", (impl.ExitBase,), {"__slots__": ()})
    for name, field in fields.items():
        setattr(cls, name, field)
    return cls


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_field_reads_integers_of_every_width(impl):
    page = _Page(impl)
    fields = {f"u{w}": impl.Field(f"u{w}", "int", 64 + 8 * i, w) for i, w in enumerate((1, 2, 4, 8))}
    fields["s4"] = impl.Field("s4", "int", 128, 4, signed=True)
    fields["flag"] = impl.Field("flag", "bool", 136, 2)
    for (offset, fmt, value) in ((64, "B", 0xAB), (72, "H", 0xBEEF), (80, "I", 0xDEADBEEF),
                                 (88, "Q", 0x0123456789ABCDEF), (128, "i", -5), (136, "H", 0x100)):
        page.put(offset, fmt, value)
    exit = _exit_class(impl, **fields)(page)
    assert (exit.u1, exit.u2, exit.u4, exit.u8) == (0xAB, 0xBEEF, 0xDEADBEEF, 0x0123456789ABCDEF)
    assert exit.s4 == -5 and exit.flag is True
    assert exit.vcpu is page
    page.put(80, "I", 7)  # fields are read when asked, from the page as it is then
    assert exit.u4 == 7


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_decoded_members_hold_what_the_page_held_at_decoding(impl):
    page = _Page(impl)
    port = impl.Field("port", "int", 64, 2)
    value = impl.Field("value", "value", 16, 8, indirect=True, length_offset=24, length_width=1)
    Probe = type("Probe", (impl.ExitBase,), {"__slots__": (), "_decoders": (port, value)})
    Probe.port = impl.ExitBase.decoded_member(Probe, "port", 0)
    Probe.alias = impl.ExitBase.decoded_member(Probe, "alias", 0)
    Probe.value = impl.ExitBase.decoded_member(Probe, "value", 1)
    page.put(64, "H", 0x3F8)
    page.put(16, "Q", 1000)
    page.put(24, "B", 4)
    page.put(1000, "I", 0xCAFE)
    exit = Probe(page)  # decodes
    assert (exit.port, exit.alias, exit.value) == (0x3F8, 0x3F8, 0xCAFE)
    page.put(64, "H", 0x60)
    assert exit.port == 0x3F8  # decoded values stay until the next decoding
    exit._decode()
    assert (exit.port, exit.value) == (0x60, 0xCAFE)
    with pytest.raises(AttributeError, match="port is read-only"):
        exit.port = 1
    with pytest.raises(AttributeError, match="value is read-only"):
        del exit.value
    page.put(24, "B", 16)  # an element size no integer has: decoding fails, naming the field
    with pytest.raises(ValueError, match="value: an element of 16 bytes"):
        exit._decode()


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_decoding_overlapping_fields_and_fields_outside_the_page(impl):
    page = _Page(impl)
    fields = (impl.Field("word", "int", 64, 2), impl.Field("high", "int", 65, 1),
              impl.Field("flag", "bool", 72, 1), impl.Field("signed", "int", 80, 4, signed=True))
    Probe = type("Probe", (impl.ExitBase,), {"__slots__": (), "_decoders": fields})
    for i, name in enumerate(("word", "high", "flag", "signed")):
        setattr(Probe, name, impl.ExitBase.decoded_member(Probe, name, i))
    page.put(64, "H", 0xBEEF)
    page.put(72, "B", 3)
    page.put(80, "i", -2)
    exit = Probe(page)
    assert (exit.word, exit.high, exit.flag, exit.signed) == (0xBEEF, page.buffer[65], True, -2)
    Far = type("Far", (impl.ExitBase,), {"__slots__": (), "_decoders": (impl.Field("far", "int", PAGE - 2, 4),)})
    with pytest.raises(ValueError, match="far.*outside"):
        Far(page)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_decoded_members_refuse_bad_plans(impl):
    with pytest.raises(ValueError, match="index 8"):
        impl.ExitBase.decoded_member(type("Probe", (impl.ExitBase,), {}), "x", 8)
    with pytest.raises(TypeError, match="ExitBase"):
        impl.ExitBase.decoded_member(object, "x", 0)
    page = _Page(impl)
    with pytest.raises(TypeError, match=r"_decoders\[0\] is not a Field"):
        type("Probe", (impl.ExitBase,), {"_decoders": ("port",)})(page)
    with pytest.raises(TypeError, match="at most 8"):
        type("Probe", (impl.ExitBase,), {"_decoders": (impl.Field("x", "int", 0, 1),) * 9})(page)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_field_spans_and_values(impl):
    page = _Page(impl)
    Probe = _exit_class(
        impl,
        data=impl.Field("data", "bytes", 16, 8, indirect=True, length_offset=24, length_width=1,
                        times_offset=28, times_width=4),
        value=impl.Field("value", "value", 16, 8, indirect=True, length_offset=24, length_width=1),
        inline=impl.Field("inline", "bytes", 40, 0, length_offset=48, length_width=4),
    )
    page.put(16, "Q", 1000)  # data at offset 1000
    page.put(24, "B", 2)     # elements of 2 bytes
    page.put(28, "I", 3)     # 3 of them
    page.buffer[1000:1006] = b"\x01\x02\x03\x04\x05\x06"
    page.buffer[40:43] = b"xyz"
    page.put(48, "I", 3)
    exit = Probe(page)
    assert bytes(exit.data) == b"\x01\x02\x03\x04\x05\x06"
    assert exit.value == int.from_bytes(b"\x01\x02", sys.byteorder)
    assert bytes(exit.inline) == b"xyz"
    exit.data[0:2] = b"\xAA\xBB"  # the span is a writable view of the page
    assert page.buffer[1000:1002] == b"\xAA\xBB"


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_field_never_reads_outside_the_page(impl):
    page = _Page(impl)
    Probe = _exit_class(
        impl,
        far=impl.Field("far", "int", PAGE - 2, 4),
        data=impl.Field("data", "bytes", 16, 8, indirect=True, length_offset=24, length_width=4),
        value=impl.Field("value", "value", 16, 8, indirect=True, length_offset=24, length_width=1),
    )
    exit = Probe(page)
    with pytest.raises(ValueError, match="far.*outside"):
        exit.far
    page.put(16, "Q", PAGE - 4)
    page.put(24, "I", 16)
    with pytest.raises(ValueError, match="data.*outside"):
        exit.data
    page.put(16, "Q", 2**63 + 5)  # a huge offset must not wrap around
    with pytest.raises(ValueError, match="outside"):
        exit.data
    page.put(16, "Q", 0)
    page.put(24, "I", 9)  # a 9-byte element is not an integer
    with pytest.raises(ValueError, match="9 bytes"):
        exit.value


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_field_rejects_bad_declarations_and_writes(impl):
    for kwargs in ({"kind": "int", "offset": 0, "width": 3}, {"kind": "float", "offset": 0, "width": 4},
                   {"kind": "int", "offset": -1, "width": 4}, {"kind": "bytes", "offset": 0, "width": 0}):
        with pytest.raises(ValueError):
            impl.Field("f", **kwargs)
    page = _Page(impl)
    exit = _exit_class(impl, f=impl.Field("f", "int", 0, 4))(page)
    with pytest.raises(AttributeError, match="read-only"):
        exit.f = 1
    holder = type("Holder", (), {"f": impl.Field("f", "int", 0, 4)})()
    with pytest.raises(TypeError, match="reads an exit"):
        holder.f


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_runner_checks_its_arguments(impl):
    view = memoryview(bytearray(PAGE))
    ok = (lambda *a: None)
    with pytest.raises(TypeError, match="exit class"):
        impl.Runner(-1, 0, view, (int,), ok, ok, ok, 8)
    with pytest.raises(ValueError, match="reason_offset"):
        impl.Runner(-1, 0, view, (), ok, ok, ok, PAGE - 2)
    with pytest.raises(BufferError, match="not writable"):
        impl.Runner(-1, 0, memoryview(bytes(PAGE)), (), ok, ok, ok, 8)  # read-only page
    with pytest.raises(TypeError, match="_runner"):
        impl.ExitBase(object())


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_half_made_runners_and_fields_raise_instead_of_crashing(impl):
    """Objects made with __new__ only, or whose __init__ failed, and offsets near the top of the address
    space: each is an exception, never a read of freed, unmapped or unallocated memory."""
    ok = (lambda *a: None)

    class Vcpu:
        _runner: object = None

    with pytest.raises(ValueError, match="offsets must be at most"):
        impl.Field("far", "int", sys.maxsize - 3, 8)
    with pytest.raises(ValueError, match="offsets must be at most"):
        impl.Field("far", "bytes", 0, 0, length_offset=sys.maxsize - 3, length_width=4)
    failed = impl.Runner.__new__(impl.Runner)
    with pytest.raises(ValueError, match="reason_offset"):
        failed.__init__(-1, 0, memoryview(bytearray(64)), (), ok, ok, ok, 100)
    for runner in (failed, impl.Runner.__new__(impl.Runner)):
        Vcpu._runner = runner
        with pytest.raises(TypeError, match="_runner"):
            impl.ExitBase(Vcpu())
    if impl is not kvm._pure:  # the pure Field has no half-made state
        blank = impl.Field.__new__(impl.Field)
        assert "not initialised" in repr(blank)
        Vcpu._runner = impl.Runner(-1, 0, memoryview(bytearray(PAGE)), (), ok, ok, ok, 8)
        probe = _exit_class(impl, f=blank)
        with pytest.raises(ValueError, match="never initialised"):
            probe(Vcpu()).f


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_a_closed_runner_refuses_to_run(impl):
    page = _Page(impl)
    with pytest.raises(kvm.ClosedError):
        page._runner(page)
    page._runner.close()
    assert page._runner.closed
    with pytest.raises(kvm.ClosedError):
        page._runner(page)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_ioctl_by_value_returns_result_or_negative_errno(impl, system):
    number = system.binding.IOCTLS["KVM_CHECK_EXTENSION"].number
    cap = system.binding.CONSTANTS["KVM_CAP_USER_MEMORY"]
    assert impl.ioctl(system.fileno(), number, cap) == 1
    assert impl.ioctl(-1, number, cap) == -9  # EBADF


def test_exit_fields_have_one_layout_per_arch_across_kernel_versions():
    """Exit classes are shared by every binding of the host's arch: kvm_run is ABI, so its fields must
    sit at the same place in every bundled kernel version of an arch (arches differ: s390x's header is
    longer). The host's fields are the ones installed."""
    layouts: dict[str, dict[tuple[str, str], tuple[object, ...]]] = {}
    for kernel, _release, arch in kvm.generated.BUNDLED:
        binding = kvm.generated.load(kernel, arch)
        names = reason_names(binding)
        for short in names.values():
            cls = EXIT_CLASSES.get(short)
            for klass in (cls.__mro__ if cls is not None else ()):
                for name, spec in vars(klass).get("_payloads", {}).items():
                    arguments = _field_arguments(binding.ffi, name, spec)
                    seen = layouts.setdefault(arch, {}).setdefault((klass.__name__, name), arguments)
                    assert seen == arguments, f"{klass.__name__}.{name} moved in Linux {kernel} {arch}"
    host = kvm.generated.ARCH
    dispatch_table(kvm.generated.load(None, host))
    port = next(field for field in kvm.IoExit._decoders if field.name == "IoExit.port")
    assert layouts[host][("IoExit", "port")][2] == port.offset
    assert layouts[host][("MmioExit", "data")][2] == kvm.MmioExit.data.offset
    assert len(layouts) >= 2 and layouts["s390x"][("IoExit", "port")] != layouts["x86_64"][("IoExit", "port")]


def test_one_exit_object_per_reason_and_it_outlives_close(vm):
    code = bytes([0xB0, 0x41, 0xE6, 0x10, 0xB0, 0x42, 0xE6, 0x11, 0xF4])  # out 0x10 'A'; out 0x11 'B'; hlt
    _, vcpu = real_mode_guest(vm, code)
    first = vcpu.run()
    assert isinstance(first, kvm.IoExit) and (first.port, first.value) == (0x10, 0x41)
    kept = first.snapshot()
    second = vcpu.run()
    assert second is first  # the vCPU reuses one object per reason, decoded anew at each exit
    assert (second.port, second.value) == (0x11, 0x42) and kept["port"] == 0x10
    assert isinstance(vcpu.run(), kvm.HltExit)
    data = second.data
    vcpu.close()
    assert second.port == 0x11 and bytes(data) == b"B"  # the page stays mapped while an exit holds it
    with pytest.raises(kvm.ClosedError):
        vcpu.run()


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_value_ioctl_answers_ints_and_leaves_the_rest_to_its_fallback(impl, system):
    number = system.binding.IOCTLS["KVM_CHECK_EXTENSION"].number
    cap = system.binding.CONSTANTS["KVM_CAP_USER_MEMORY"]
    calls = []

    def fallback(*args):
        calls.append(args)
        return "fallback"

    call = impl.ValueIoctl(system.fileno(), number, fallback)
    assert call(cap) == 1 and call(kvm.generated.Cap.USER_MEMORY) == 1 and calls == []
    assert call("USER_MEMORY") == "fallback" and call(2**64) == "fallback" and call() == "fallback"
    bad = impl.ValueIoctl(-1, number, fallback)
    assert bad(cap) == "fallback"  # the ioctl failed (EBADF): the fallback reports it
    call.close()
    assert call(cap) == "fallback"
    assert calls == [("USER_MEMORY",), (2**64,), (), (cap,), (cap,)]
    with pytest.raises(TypeError):
        impl.ValueIoctl(0, number, None)


class _FdStandIn:
    """What KvmFd._ioctl reads of its object, on a real /dev/kvm fd: the fd, the passed gates, the holders."""

    fd_kind = "system"

    def __init__(self, fd: int, passed: dict[str, tuple[int, int]]) -> None:
        self._fd, self._passed, self._users, self._closing_fd = fd, passed, [], -1
        self.deferred_closes = 0

    def _close_deferred(self) -> None:
        self.deferred_closes += 1
        self._closing_fd = -1


@pytest.fixture
def compiled_ioctl(system):
    """An IoctlMethod over a stand-in of `system` whose fallback records what it was handed (and the
    holders it found: none, since the compiled call leaves before handing over)."""
    if speedups is None:
        pytest.skip("kvm._speedups was not built")
    handed = []

    def fallback(obj, name, arg=0):
        handed.append((name, arg, list(obj._users)))
        return "fallback"

    method = speedups.ioctl_method(fallback, kvm._fd._raw_ioctl, kvm._fd._sys_ffi, kvm._fd._FROM_BUFFER,
                                   kvm._fd._POINTED_ROOM, kvm._fd._EINTR_ANSWERS, kvm.KvmError)
    ioctls = system.binding.IOCTLS
    kvm._fd.note_record_pointer(system.ffi, "struct kvm_msr_list")  # (a `struct kvm_msr_list *` has its room)
    passed = {name: kvm._fd.passed_entry(ioctls[name]) for name in ("KVM_GET_API_VERSION", "KVM_CHECK_EXTENSION",
                                                                      "KVM_GET_MSR_INDEX_LIST")}
    return method, _FdStandIn(system.fileno(), passed), handed


def test_the_compiled_ioctl_issues_a_passed_ioctl_in_one_call(system, compiled_ioctl):
    method, obj, handed = compiled_ioctl
    cap = system.binding.CONSTANTS["KVM_CAP_USER_MEMORY"]
    assert method(obj, "KVM_GET_API_VERSION") == 12 and method(obj, "KVM_CHECK_EXTENSION", cap) == 1
    assert method(obj, "KVM_CHECK_EXTENSION", kvm.generated.Cap.USER_MEMORY) == 1
    with pytest.raises(kvm.KvmError) as info:  # the kernel's answer, reported as the Python method does
        method(obj, "KVM_GET_MSR_INDEX_LIST", system.ffi.new("struct kvm_msr_list *"))
    assert (info.value.ioctl, info.value.fd_kind, info.value.errno) == ("KVM_GET_MSR_INDEX_LIST", "system", errno.E2BIG)
    assert handed == [] and obj._users == [] and obj.deferred_closes == 0


def test_the_compiled_ioctl_hands_the_rest_to_the_python_method(system, compiled_ioctl):
    method, obj, handed = compiled_ioctl
    ffi = system.ffi
    small = ffi.new("char[2]")
    from_buffer = ffi.from_buffer("struct kvm_msr_list *", bytearray(64))
    assert method(obj, "KVM_CREATE_VM") == "fallback"  # a gate not passed yet
    assert method(obj, "KVM_CHECK_EXTENSION", 2**64) == "fallback"  # out of range: the method says so
    assert method(obj, "KVM_GET_MSR_INDEX_LIST", small) == "fallback"  # its room is checked there
    assert method(obj, "KVM_GET_MSR_INDEX_LIST", from_buffer) == "fallback"  # cffi's type lies about its room
    assert method(obj, "KVM_GET_MSR_INDEX_LIST", b"\0" * 64) == "fallback"  # not a cdata
    assert method(obj, name="KVM_GET_API_VERSION") == "fallback"
    obj._fd = -1
    assert method(obj, "KVM_GET_API_VERSION") == "fallback"  # closed: the method raises ClosedError
    assert [h[:2] for h in handed] == [("KVM_CREATE_VM", 0), ("KVM_CHECK_EXTENSION", 2**64),
                                       ("KVM_GET_MSR_INDEX_LIST", small), ("KVM_GET_MSR_INDEX_LIST", from_buffer),
                                       ("KVM_GET_MSR_INDEX_LIST", b"\0" * 64), ("KVM_GET_API_VERSION", 0),
                                       ("KVM_GET_API_VERSION", 0)]
    assert all(users == [] for _, _, users in handed) and obj._users == []


def test_the_compiled_ioctl_closes_an_fd_a_close_left_to_it(system, compiled_ioctl):
    method, obj, handed = compiled_ioctl
    obj._closing_fd = 1000  # (close() found this thread inside a call: the last holder closes)
    obj._users.append(-1)  # another holder: not the last one
    assert method(obj, "KVM_GET_API_VERSION") == 12 and obj.deferred_closes == 0 and obj._users == [-1]
    obj._users.clear()
    assert method(obj, "KVM_GET_API_VERSION") == 12 and obj.deferred_closes == 1 and obj._closing_fd == -1


def test_every_fd_object_issues_through_the_compiled_ioctl_where_it_is_built(vm):
    if not kvm._accel.NATIVE:
        pytest.skip("the pure-Python run: _ioctl is the Python method")
    assert type(kvm._fd.KvmFd.__dict__["_ioctl"]).__qualname__ == "IoctlMethod"
    assert kvm._fd.KvmFd._ioctl.__wrapped__ is kvm._fd.KvmFd._ioctl_in_python
    vcpu = vm.create_vcpu(0)
    regs = vcpu.regs
    regs.rip = 0x1234
    vcpu.regs = regs
    assert vcpu.regs.rip == 0x1234 and vcpu._users == [] and vm._users == []


def test_the_compiled_ioctl_leaves_as_list_remove_does_whatever_the_holders_list_holds(system, compiled_ioctl):
    method, obj, handed = compiled_ioctl

    class Emptying:
        """An entry whose comparison empties the list under the search (it must not crash the search)."""

        def __eq__(self, other: object) -> bool:
            obj._users.clear()
            return False

        __hash__ = object.__hash__

    obj._users.append(Emptying())
    with pytest.raises(ValueError, match="not in list"):  # (list.remove's own answer)
        method(obj, "KVM_GET_API_VERSION")
    assert obj._users == []


def test_a_failure_to_leave_replaces_the_calls_exception_as_a_finally_block_would(system, compiled_ioctl):
    method, obj, handed = compiled_ioctl

    def failing_close() -> None:
        raise OSError("the deferred close failed")

    obj._close_deferred = failing_close
    obj._closing_fd = 1000
    with pytest.raises(OSError, match="deferred close failed") as info:
        method(obj, "KVM_GET_MSR_INDEX_LIST", system.ffi.new("struct kvm_msr_list *"))  # (E2BIG)
    assert isinstance(info.value.__context__, kvm.KvmError) and info.value.__context__.errno == errno.E2BIG
    assert obj._users == []
