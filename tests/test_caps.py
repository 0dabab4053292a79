"""Typed capabilities (kvm/caps.py, generated/caps_*.py).

On the real /dev/kvm, for the host's binding: every capability the host reports is checked through its
wrapper against KVM_CHECK_EXTENSION on the same fd; every one KVM_ENABLE_CAP takes on this arch is enabled
through its wrapper on a fresh VM or vCPU, with an argument from VALID below (success, or the errno that
table names and why); every absent one refuses with CapabilityError, without issuing the ioctl. For every
bundled binding: each capability has its wrapper, and every fact and flag name it uses comes from the
binding's own CAPS and CONSTANTS.
"""

from __future__ import annotations

import enum
import errno
import importlib
import inspect
import types
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import kvm
import kvm.generated as g
from kvm.caps import format_value

HOST = g.load()


def caps_module(binding: types.ModuleType) -> types.ModuleType:
    package, _, module = binding.__name__.rpartition(".")
    return importlib.import_module(f"{package}.caps_{module}")


def attr_name(cap: str) -> str:
    return cap.removeprefix("KVM_CAP_").lower()


def on_arch(spec: Any, arch: str) -> bool:
    return spec.arches is None or arch in spec.arches


@pytest.fixture()
def system() -> Iterator[kvm.Kvm]:
    with kvm.Kvm() as k:
        yield k


# ---------------------------------------------------------------------------------------------
# The host: check() against KVM_CHECK_EXTENSION, enable() on fresh objects


def _decoded(spec: Any, typed: Any, raw: int) -> None:
    if spec.check == "bool":
        assert typed is (raw > 0), spec.name
        # a presence answering more than 1 is a count or a set of bits the table should type
        assert raw in (0, 1), f"{spec.name} answers {raw}: type it in codegen/caps_table.py"
    elif spec.check == "int":
        assert type(typed) is int and typed == raw, spec.name
    else:
        assert isinstance(typed, enum.IntFlag) and int(typed) == raw, spec.name
        named = sum(value for _, _, value in spec.flags)
        assert raw & ~named == 0, f"{spec.name}: bits {raw & ~named:#x} have no name in the binding"


def test_check_is_check_extension_decoded_on_every_fd_kind(system: kvm.Kvm) -> None:
    with system.create_vm() as vm:
        vcpu = vm.create_vcpu(0)
        for obj in (system, vm, vcpu):
            caps = {cap.NAME: cap for cap in obj.caps}
            assert set(caps) == set(HOST.CAPS)
            for name, spec in HOST.CAPS.items():
                cap = caps[name]
                assert (cap.NAME, cap.NUMBER, cap.SECTION) == (name, spec.value, spec.section)
                _decoded(spec, cap.check(), obj.check_extension(spec.value))


def _prepare_irqchip(vm: kvm.Vm) -> None:
    vm.ioctls.create_irqchip()


# capability -> (keyword arguments from the check() answer and the VM, errnos api.rst documents for this
# situation or leaves general, with why, a step run on the fresh VM first)
Valid = tuple[Callable[[Any, kvm.Vm], dict[str, Any]], dict[int, str], Callable[[kvm.Vm], None] | None]
_OTHER_VM = "the source VM, made here, has no memory-encryption context: EINVAL, an error api.rst leaves general"
VALID: dict[str, Valid] = {
    "KVM_CAP_DISABLE_QUIRKS": (lambda c, vm: {"quirks": 1}, {}, None),
    "KVM_CAP_DISABLE_QUIRKS2": (lambda c, vm: {"quirks": c}, {}, None),  # "must be a subset of" check()
    "KVM_CAP_SPLIT_IRQCHIP": (lambda c, vm: {"routes": 24}, {}, None),  # the IOAPIC's 24 pins
    "KVM_CAP_MAX_VCPU_ID": (lambda c, vm: {"max_id": c}, {}, None),
    "KVM_CAP_X2APIC_API": (lambda c, vm: {"features": c}, {}, None),
    "KVM_CAP_X86_DISABLE_EXITS": (lambda c, vm: {"exits": c}, {}, None),  # "pass the KVM_CHECK_EXTENSION result"
    "KVM_CAP_MSR_PLATFORM_INFO": (lambda c, vm: {"enable": True}, {}, None),
    "KVM_CAP_EXCEPTION_PAYLOAD": (lambda c, vm: {"enable": True}, {}, None),
    "KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2": (lambda c, vm: {"flags": c}, {}, None),
    "KVM_CAP_HALT_POLL": (lambda c, vm: {"ns": 200_000}, {}, None),
    "KVM_CAP_X86_USER_SPACE_MSR": (lambda c, vm: {"events": 0b111}, {}, None),  # every KVM_MSR_EXIT_REASON_*
    "KVM_CAP_DIRTY_LOG_RING": (lambda c, vm: {"size": 1 << 16}, {}, None),  # a power of two, at most check()
    "KVM_CAP_DIRTY_LOG_RING_ACQ_REL": (lambda c, vm: {"size": 1 << 16}, {}, None),
    "KVM_CAP_DIRTY_LOG_RING_WITH_BITMAP": (lambda c, vm: {}, {}, lambda vm: vm.caps.dirty_log_ring_acq_rel.enable(size=1 << 16)),
    "KVM_CAP_X86_BUS_LOCK_EXIT": (lambda c, vm: {"policy": 1 << max(int(c).bit_length() - 1, 0)}, {}, None),  # one mode
    "KVM_CAP_SGX_ATTRIBUTE": (lambda c, vm: {"fd": 0}, {errno.EINVAL: "fd 0 is not an SGX attribute file"}, None),
    "KVM_CAP_VM_COPY_ENC_CONTEXT_FROM": (lambda c, vm: {"fd": vm.system.create_vm()}, {errno.EINVAL: _OTHER_VM}, None),
    "KVM_CAP_VM_MOVE_ENC_CONTEXT_FROM": (lambda c, vm: {"fd": vm.system.create_vm()}, {errno.EINVAL: _OTHER_VM}, None),
    "KVM_CAP_EXIT_HYPERCALL": (lambda c, vm: {"hypercalls": c}, {}, None),  # "must be a subset of" check()
    "KVM_CAP_EXIT_ON_EMULATION_FAILURE": (lambda c, vm: {"enable": True}, {}, None),
    "KVM_CAP_PMU_CAPABILITY": (lambda c, vm: {"flags": c}, {}, None),
    "KVM_CAP_X86_TRIPLE_FAULT_EVENT": (lambda c, vm: {"enable": True}, {}, None),
    "KVM_CAP_X86_NOTIFY_VMEXIT": (lambda c, vm: {"flags": c, "window": 128_000}, {}, None),
    "KVM_CAP_VM_DISABLE_NX_HUGE_PAGES": (lambda c, vm: {}, {errno.EPERM: "without CAP_SYS_BOOT"}, None),
    "KVM_CAP_X86_APIC_BUS_CYCLES_NS": (lambda c, vm: {"ns": c}, {}, _prepare_irqchip),  # ENXIO without one
    "KVM_CAP_HYPERV_SYNIC": (lambda c, vm: {}, {}, None),
    "KVM_CAP_HYPERV_SYNIC2": (lambda c, vm: {}, {}, None),
    "KVM_CAP_HYPERV_DIRECT_TLBFLUSH": (lambda c, vm: {}, {errno.ENOTTY: "KVM is not running on Hyper-V"}, None),
    "KVM_CAP_HYPERV_ENFORCE_CPUID": (lambda c, vm: {"enable": True}, {}, None),
    "KVM_CAP_ENFORCE_PV_FEATURE_CPUID": (lambda c, vm: {"enable": True}, {}, None),
    "KVM_CAP_HYPERV_ENLIGHTENED_VMCS": (lambda c, vm: {"address": 0}, {errno.EFAULT: "address 0 to write to",
                                                                        errno.ENOTTY: "not a VMX host"}, None),
}


def _enable_ables() -> list[tuple[str, str]]:
    return sorted((name, fd) for name, spec in HOST.CAPS.items() if on_arch(spec, HOST.ARCH) for fd in spec.enable_on)


@pytest.mark.parametrize("name,fd", _enable_ables())
def test_enable_through_the_typed_wrapper(system: kvm.Kvm, name: str, fd: str) -> None:
    with system.create_vm() as vm:
        obj: kvm.Vm | kvm.Vcpu = vm
        valid = VALID.get(name)
        if fd == "vcpu":
            obj = vm.create_vcpu(0)
        cap = getattr(obj.caps, attr_name(name))
        if not cap.check():
            with pytest.raises(kvm.CapabilityError) as absent:
                cap.enable(**(valid[0](0, vm) if valid else {}))
            assert absent.value.errno is None and absent.value.capability == name  # not issued
            _TALLY["absent"].add(name)
            return
        assert valid is not None, f"{name} is reported: give it a valid argument in VALID"
        arguments, documented, prepare = valid
        if prepare is not None:
            prepare(vm)
        try:
            cap.enable(**arguments(cap.check(), vm))
        except kvm.KvmError as e:
            assert e.errno in documented, f"{name}: {e}"
        _TALLY["enabled"].add(name)


def test_absent_capabilities_refuse_without_an_ioctl(system: kvm.Kvm) -> None:
    """CapabilityError, which only the wrapper's own check raises (a failed ioctl is a KvmError with an errno)."""
    with system.create_vm() as vm:
        absent = [cap for cap in vm.caps if cap.ENABLE_ON == ("vm",) and hasattr(cap, "enable") and not cap.check()]
        for cap in absent:
            with pytest.raises(kvm.CapabilityError) as e:
                cap.enable(**VALID[cap.NAME][0](0, vm)) if cap.NAME in VALID else cap.enable()
            assert e.value.capability == cap.NAME and "was not issued" in str(e.value)


def test_wrappers_are_offered_on_the_right_objects(system: kvm.Kvm) -> None:
    with system.create_vm() as vm:
        vcpu = vm.create_vcpu(0)
        for name, spec in HOST.CAPS.items():
            here = on_arch(spec, HOST.ARCH)
            assert not hasattr(getattr(system.caps, attr_name(name)), "enable"), name
            for obj, fd in ((vm, "vm"), (vcpu, "vcpu")):
                assert hasattr(getattr(obj.caps, attr_name(name)), "enable") == (here and fd in spec.enable_on), name
            _TALLY["other-arch"].update([name] if not here else [])
            _TALLY["checked"].update([name] if vm.check_extension(spec.value) else [])


_TALLY: dict[str, set[str]] = {"checked": set(), "enabled": set(), "absent": set(), "other-arch": set()}


def test_zz_counts(capsys: pytest.CaptureFixture[str]) -> None:
    """The host run's counts; they add up (runs last in this module: pytest keeps definition order)."""
    enable_ables = {name for name, _ in _enable_ables()}
    if not _TALLY["checked"] or not enable_ables <= _TALLY["enabled"] | _TALLY["absent"]:
        pytest.skip("run with the whole module for the counts")
    assert _TALLY["enabled"] | _TALLY["absent"] == enable_ables and not _TALLY["enabled"] & _TALLY["absent"]
    assert not _TALLY["other-arch"] & enable_ables
    with capsys.disabled():
        print(f"\ncapabilities of {HOST.__name__} on this host: " +
              ", ".join(f"{len(names)} {what}" for what, names in _TALLY.items()) +
              f" (of {len(HOST.CAPS)}; {len(enable_ables)} enable-able on {HOST.ARCH})")


# ---------------------------------------------------------------------------------------------
# Arguments are checked before anything is issued


def test_arguments_are_checked_exactly(system: kvm.Kvm) -> None:
    with system.create_vm() as vm:
        caps = vm.caps
        X2apicApi = caps.x2apic_api.FLAGS
        with pytest.raises(ValueError, match=r"KVM_CAP_X2APIC_API: features has bits 0x10 "):
            caps.x2apic_api.enable(features=0x10)
        with pytest.raises(TypeError, match="KVM_CAP_X2APIC_API features must be an int, not bool"):
            caps.x2apic_api.enable(features=True)
        with pytest.raises(TypeError, match="must be a bool, not int"):
            caps.exception_payload.enable(enable=1)
        with pytest.raises(TypeError, match="must be an int, not float"):
            caps.halt_poll.enable(ns=1.5)
        with pytest.raises(ValueError, match=r"KVM_CAP_HALT_POLL ns must be in"):
            caps.halt_poll.enable(ns=1 << 64)
        with pytest.raises(ValueError, match=r"KVM_CAP_DIRTY_LOG_RING size must be in"):
            caps.dirty_log_ring.enable(size=caps.dirty_log_ring.check() * 2)
        with pytest.raises(ValueError, match=r"KVM_CAP_VM_COPY_ENC_CONTEXT_FROM fd must be in"):
            caps.vm_copy_enc_context_from.enable(fd=-1)
        with pytest.raises(TypeError):
            caps.x2apic_api.enable(X2apicApi.USE_32BIT_IDS)  # keyword only
        # nothing was issued: the VM still takes its first (and only) x2APIC setting and dirty ring
        caps.x2apic_api.enable(features=X2apicApi.USE_32BIT_IDS)
        caps.dirty_log_ring.enable(size=1 << 16)


def test_flags_named_outside_the_check_answer_are_refused_naming_them(system: kvm.Kvm) -> None:
    with system.create_vm() as vm:
        cap = vm.caps.disable_quirks  # check() is a presence: the bits allowed are the ones the binding names
        named = sum(int(m) for m in cap.FLAGS)
        unnamed = 1 << named.bit_length()
        with pytest.raises(ValueError, match=rf"bits {unnamed:#x} that are not among those DisableQuirks names"):
            cap.enable(quirks=unnamed)


def test_format_value_names_the_bits() -> None:
    Flags = enum.IntFlag("Flags", {"A": 1, "B": 4})
    assert format_value(Flags(5)) == "A|B"
    assert format_value(Flags(5 | 0x40)) == "A|B|0x40"
    assert format_value(Flags(0)) == ""
    assert format_value(True) == "True" and format_value(12) == "12"


def test_unknown_capabilities_stay_reachable_by_number(system: kvm.Kvm) -> None:
    known = {spec.value for spec in HOST.CAPS.values()}
    unknown = max(known) + 1000
    assert system.check_extension(unknown) == 0
    with system.create_vm() as vm, pytest.raises(kvm.KvmError) as e:
        vm.enable_cap(unknown)
    assert e.value.errno == errno.EINVAL


def test_device_fds_have_no_caps(system: kvm.Kvm) -> None:
    with system.create_vm() as vm:
        device = vm.create_device(HOST.CONSTANTS["KVM_DEV_TYPE_VFIO"])
        assert device is not None
        with pytest.raises(AttributeError, match="device fds do not answer KVM_CHECK_EXTENSION"):
            device.caps


# ---------------------------------------------------------------------------------------------
# Every bundled binding: the wrappers exist, their facts come from api.rst or the table, flag names exist


@pytest.mark.parametrize("kernel,release,arch", g.BUNDLED)
def test_every_capability_of_every_binding_has_its_wrapper(kernel: str, release: str, arch: str) -> None:
    binding = g.load(kernel, arch)
    module = caps_module(binding)
    caps = [name for name in binding.CONSTANTS if name.startswith("KVM_CAP_")]
    assert set(caps) == set(binding.CAPS)
    for name in caps:
        spec = binding.CAPS[name]
        system_cls = getattr(module.SystemCaps, attr_name(name)).cls
        assert (system_cls.NAME, system_cls.NUMBER, system_cls.SECTION) == (name, spec.value, spec.section)
        assert system_cls.__doc__.startswith(f"{name} ({spec.value}): {spec.summary}")
        for fd, caps_cls in (("vm", module.VmCaps), ("vcpu", module.VcpuCaps)):
            cls = getattr(caps_cls, attr_name(name)).cls
            offered = on_arch(spec, arch) and fd in spec.enable_on
            assert hasattr(cls, "enable") == offered, (name, fd)
            if offered:
                keywords = list(inspect.signature(cls.enable).parameters)[1:]
                assert keywords == [p[0] for p in spec.params], name
        sources = dict(spec.sources)
        for fact in ("check", "flags", "params"):
            if fact == "check" and spec.check != "bool" or fact == "flags" and spec.flags or fact == "params" and spec.params:
                assert sources.get(fact) in ("api.rst", "table"), (name, fact)
        if spec.flags:
            flags_cls = getattr(module, "".join(w.capitalize() for w in name.removeprefix("KVM_CAP_").split("_")))
            for member, constant, value in spec.flags:
                assert constant in binding.CONSTANTS, (name, constant)
                assert value in (binding.CONSTANTS[constant], 1 << binding.CONSTANTS[constant]), (name, constant)
                assert int(flags_cls[member]) == value and system_cls.FLAGS is flags_cls, (name, member)


def test_parameter_sources_are_counted(capsys: pytest.CaptureFixture[str]) -> None:
    by_source = {"api.rst": 0, "table": 0}
    flags = {"api.rst": 0, "table": 0}
    for kernel, _, arch in g.BUNDLED:
        binding = g.load(kernel, arch)
        for spec in binding.CAPS.values():
            sources = dict(spec.sources)
            if spec.params:
                by_source[sources["params"]] += len(spec.params)
            if spec.flags:
                flags[sources["flags"]] += 1
    assert by_source["api.rst"] and by_source["table"] and flags["api.rst"] and flags["table"]
    with capsys.disabled():
        print(f"\nenable() parameters over the {len(g.BUNDLED)} bundled bindings: {by_source['api.rst']} from api.rst, "
              f"{by_source['table']} from codegen/caps_table.py; flag sets: {flags['api.rst']} from api.rst, "
              f"{flags['table']} from the table")
