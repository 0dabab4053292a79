"""Hypothesis drives every generated wrapper of the host binding with random arguments.

Wrong types, huge and negative numbers, short and oversized buffers, cdata of the wrong type, random
keyword fields, on live fds and on closed ones: only typed Python exceptions, no crash, no hang, no fd
leak. KVM_RUN is driven on closed fds only: a random guest state may legitimately run forever.
"""

from __future__ import annotations

import errno
import inspect
import os
from collections.abc import Iterator
from typing import Any

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from kvm.errors import KvmError  # noqa: E402

if not os.access("/dev/kvm", os.R_OK | os.W_OK):
    pytest.skip("no usable /dev/kvm", allow_module_level=True)

from generated_fds import B, C, W, Device, Sys, Vcpu, Vm, ffi  # noqa: E402

# What a wrapper may raise on bad input: KvmError (an OSError: the kernel refused, incl. CapabilityError),
# ClosedError (a ValueError), and the argument errors of Python and cffi.
TYPED = (KvmError, TypeError, ValueError, OverflowError, KeyError, IndexError, AttributeError, LookupError)
LIVE_EXCLUDED = {"KVM_RUN"}
FD_RETURNING = {"KVM_CREATE_VM", "KVM_CREATE_VCPU", "KVM_GET_STATS_FD", "KVM_CREATE_GUEST_MEMFD"}
CASES = {"run": 0, "raised": 0, "returned": 0}


class Fds:
    """Live system/vm/vcpu/device objects (renewed every RENEW cases) and closed ones."""

    RENEW = 150

    def __init__(self) -> None:
        self.used = 0
        self.live: dict[str, Any] = {}
        self.closed = self._make()
        for obj in self.closed.values():
            if obj is not None:
                obj.close()
        self.closed["system"].close()

    def _make(self) -> dict[str, Any]:
        system = Sys(os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC), B)
        vm = Vm(system.create_vm(), B, system)
        vm.create_irqchip()
        vcpu = Vcpu(vm.create_vcpu(0), B, vm)
        device = None
        try:
            device = Device(vm.create_device(type=C["KVM_DEV_TYPE_VFIO"]).fd, B, vm)
        except KvmError:
            pass
        return {"system": system, "vm": vm, "vcpu": vcpu, "device": device}

    def get(self, kind: str, live: bool) -> Any:
        if not live:
            return self.closed[kind]
        if not self.live or self.used >= self.RENEW:
            self.close()
            self.live = self._make()
            self.used = 0
        self.used += 1
        return self.live[kind]

    def close(self) -> None:
        if self.live:
            self.live["system"].close()  # children first
            self.live = {}


def _cdata() -> st.SearchStrategy[Any]:
    names = ["struct kvm_regs", "struct kvm_sregs", "struct kvm_msrs", "struct kvm_cpuid2", "struct kvm_enable_cap",
             "struct kvm_userspace_memory_region", "struct kvm_irq_level", "struct kvm_device_attr"]
    return st.one_of(
        st.sampled_from(names).map(lambda n: ffi.new(n + " *")),
        st.integers(0, 64).map(lambda n: ffi.new("char[]", max(n, 1))),  # short or oversized raw buffers
        st.sampled_from(names).map(lambda n: ffi.new(n + " *")[0]),
    )


def _values() -> st.SearchStrategy[Any]:
    ints = st.one_of(st.integers(-(2**70), 2**70), st.integers(-1, 4096), st.sampled_from([0, 1, 2**31 - 1, 2**32,
                                                                                          2**63, 2**64 - 1, -2**63]))
    return st.one_of(
        ints, st.none(), st.booleans(), st.floats(allow_nan=True), st.text(max_size=8), st.binary(max_size=80),
        st.lists(ints, max_size=6), st.dictionaries(st.sampled_from(["index", "data", "gsi", "x", "function"]), ints,
                                                    max_size=3),
        st.lists(st.dictionaries(st.sampled_from(["index", "data", "gsi", "type", "function"]), ints, max_size=3),
                 max_size=4),
        _cdata(),
    )


def _methods() -> list[tuple[str, str, str]]:
    out = []
    for ioctl, (method, classes) in W.WRAPPERS.items():
        for cls in classes:
            kind = {"SystemIoctls": "system", "VmIoctls": "vm", "VcpuIoctls": "vcpu", "DeviceIoctls": "device"}[cls]
            out.append((ioctl, method, kind))
    return sorted(out)


METHODS = _methods()


@st.composite
def calls(draw: Any) -> tuple[str, str, str, bool, list[Any], dict[str, Any]]:
    ioctl, method, kind = draw(st.sampled_from(METHODS))
    live = ioctl not in LIVE_EXCLUDED and draw(st.booleans())
    fn = getattr(getattr(W, {"system": "SystemIoctls", "vm": "VmIoctls", "vcpu": "VcpuIoctls",
                             "device": "DeviceIoctls"}[kind]), method)
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    for p in list(inspect.signature(fn).parameters.values())[1:]:
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            if p.default is inspect.Parameter.empty or draw(st.booleans()):
                args.append(draw(_values()))
        elif p.kind == p.KEYWORD_ONLY and draw(st.integers(0, 3)) == 0:
            kwargs[p.name] = draw(_values())
    if draw(st.integers(0, 20)) == 0:  # a wrong arity now and then
        args.append(0) if draw(st.booleans()) else args.clear()
    return ioctl, method, kind, live, args, kwargs


def _open_fds() -> set[int]:
    return set(int(n) for n in os.listdir("/proc/self/fd"))


@pytest.fixture(scope="module")
def fds(request: pytest.FixtureRequest) -> Iterator[Fds]:
    before = _open_fds()
    state = Fds()
    yield state
    state.close()
    leaked = _open_fds() - before
    assert not {fd for fd in leaked if os.path.realpath(f"/proc/self/fd/{fd}").startswith("anon_inode:kvm")}, leaked
    line = (f"wrapper fuzz: {CASES['run']} hypothesis cases over {len(METHODS)} wrappers "
            f"({CASES['raised']} raised a typed exception, {CASES['returned']} returned)")
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():
            reporter.write_line("\n" + line)
    else:
        print(line)


def _close_returned(ioctl: str, result: Any, known: set[int]) -> None:
    fd = result if ioctl in FD_RETURNING else None
    if ioctl == "KVM_CREATE_DEVICE" and result is not None:
        fd = int(result.fd)
    if isinstance(fd, int) and fd > 2 and fd not in known:
        os.close(fd)


@settings(max_examples=3000, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(call=calls())
def test_wrappers_take_random_arguments(fds: Fds, call: tuple[str, str, str, bool, list[Any], dict[str, Any]]) -> None:
    ioctl, method, kind, live, args, kwargs = call
    obj = fds.get(kind, live)
    if obj is None:
        return  # no device fd on this host
    before = _open_fds()
    CASES["run"] += 1
    try:
        result = getattr(obj, method)(*args, **kwargs)
    except TYPED as e:
        CASES["raised"] += 1
        if isinstance(e, KvmError):
            assert e.ioctl and e.fd_kind == kind and e.errno != 0
            assert not (e.errno == errno.EFAULT and not live)
        return
    CASES["returned"] += 1
    _close_returned(ioctl, result, before)


def test_closed_fds_raise_closed_error(fds: Fds) -> None:
    from kvm.errors import ClosedError

    for ioctl, method, kind in METHODS:
        obj = fds.get(kind, live=False)
        if obj is None:
            continue
        fn = getattr(obj, method)
        required = [p for p in list(inspect.signature(fn).parameters.values())
                    if p.default is inspect.Parameter.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        args = [[] if "entries" in p.name or "indices" in p.name else 0 for p in required]
        with pytest.raises((ClosedError, TypeError, ValueError)):
            fn(*args)
