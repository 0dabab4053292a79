"""vCPU and VM state round trips: regs, sregs, fpu, debug registers, events, xsave, xcrs, MSRs, CPUID,
the local APIC, mp_state; the VM clock and TSS address."""

from __future__ import annotations

import errno

import pytest

import kvm
from guests import require_cap

G = kvm.generated


def test_register_round_trips(vm):
    vcpu = vm.create_vcpu(0)
    vcpu.regs = {"rax": 0x1111, "rbx": 0x2222, "rip": 0x3333, "rflags": 0x2}
    regs = vcpu.regs
    assert (regs.rax, regs.rbx, regs.rip, regs.rflags) == (0x1111, 0x2222, 0x3333, 0x2)
    fpu = vcpu.fpu
    fpu.fcw = 0x27F
    vcpu.fpu = fpu
    assert vcpu.fpu.fcw == 0x27F
    if vm.check_extension("KVM_CAP_DEBUGREGS") > 0:
        vcpu.debugregs = {"db": [0x1000, 0x2000, 0, 0]}
        assert list(vcpu.debugregs.db)[:2] == [0x1000, 0x2000]
    if vm.check_extension("KVM_CAP_VCPU_EVENTS") > 0:
        events = vcpu.vcpu_events
        assert events.exception.injected == 0
        vcpu.vcpu_events = events
    if vm.check_extension("KVM_CAP_XSAVE") > 0:
        blob = vcpu.xsave
        vcpu.xsave = blob
        assert bytes(kvm.generated.ffi.buffer(vcpu.xsave.region))[:2] == bytes(kvm.generated.ffi.buffer(blob.region))[:2]
    if vm.check_extension("KVM_CAP_XCRS") > 0:
        xcrs = vcpu.xcrs
        vcpu.xcrs = xcrs
    assert vcpu.mp_state == G.MpState.RUNNABLE
    vcpu.mp_state = G.MpState.RUNNABLE
    with pytest.raises(kvm.KvmError) as info:
        vcpu.mp_state = G.MpState.HALTED  # only with an in-kernel local APIC
    assert info.value.errno == errno.EINVAL


def test_sregs_validation_errors(vm):
    vcpu = vm.create_vcpu(0)
    sregs = vcpu.sregs
    sregs.cr0 = (sregs.cr0 | (1 << 31)) & ~1  # PG without PE
    with pytest.raises(kvm.KvmError) as info:
        vcpu.sregs = sregs
    assert (info.value.ioctl, info.value.fd_kind, info.value.errno) == ("KVM_SET_SREGS", "vcpu", errno.EINVAL)
    assert str(info.value) == "KVM_SET_SREGS on vcpu fd: EINVAL (Invalid argument)"
    with pytest.raises(kvm.KvmError) as info:
        vcpu.sregs = {"efer": 1 << 10}  # LMA without LME and paging
    assert info.value.errno == errno.EINVAL
    assert vcpu.sregs.cr0 & (1 << 31) == 0  # nothing was applied


def test_msr_round_trip(system, vm):
    vcpu = vm.create_vcpu(0)
    wanted = {0x174: 0x10, 0x175: 0xFFFF1000, 0x176: 0x401000}  # IA32_SYSENTER_CS/ESP/EIP
    assert set(wanted) <= set(system.msr_index_list())
    assert vcpu.set_msrs(wanted) == len(wanted)
    assert vcpu.get_msrs(wanted) == wanted
    # the kernel stops at the first MSR it refuses: both paths return the prefix it read / the count it wrote
    for path in (vcpu, vcpu.ioctls):
        assert path.get_msrs([0x174, 0xDEADBEEF, 0x175]) == {0x174: 0x10}
        assert path.set_msrs({0x175: 0x2000, 0xDEADBEEF: 1, 0x176: 0x3000}) == 1
        assert vcpu.get_msrs([0x175, 0x176]) == {0x175: 0x2000, 0x176: 0x401000}  # the first stays written
        vcpu.set_msrs({0x175: 0xFFFF1000})
    with pytest.raises(ValueError, match="MSR 0xdeadbeef was refused"):
        vcpu.msrs = {0x174: 0x10, 0xDEADBEEF: 1}


def test_cpuid_set_get_and_e2big(system, vm):
    require_cap(system, "EXT_CPUID")
    supported = system.supported_cpuid()
    assert any(e.function == 0 for e in supported)
    vcpu = vm.create_vcpu(0)
    vcpu.cpuid = supported
    with pytest.raises(kvm.KvmError) as info:
        vcpu.get_cpuid(max_entries=1)
    assert info.value.errno == errno.E2BIG and info.value.ioctl == "KVM_GET_CPUID2"
    got = vcpu.cpuid
    # KVM may drop leaves it does not keep per vCPU; every leaf it returns was set
    assert {(e.function, e.index) for e in got} <= {(e.function, e.index) for e in supported}
    assert {1, 7} <= {e.function for e in got}
    leaf0 = next(e for e in got if e.function == 0)
    assert leaf0 == next(e for e in supported if e.function == 0)  # vendor and max leaf unchanged


def test_lapic_round_trip(vm):
    require_cap(vm, "IRQCHIP")
    vm.create_irqchip()
    vcpu = vm.create_vcpu(0)
    ffi = G.ffi
    state = vcpu.lapic
    regs = ffi.buffer(state.regs)
    assert regs[0x20 + 3] == b"\x00"  # APIC ID of vCPU 0 (xAPIC: bits 31:24 of the ID register)
    version = bytes(regs[0x30:0x34])
    regs[0x80:0x81] = b"\x20"  # TPR
    vcpu.lapic = state
    again = ffi.buffer(vcpu.lapic.regs)
    assert again[0x80] == b"\x20"
    assert bytes(again[0x30:0x34]) == version


def test_mp_state_round_trip(vm):
    require_cap(vm, "IRQCHIP")
    require_cap(vm, "MP_STATE")
    vm.create_irqchip()
    vcpu = vm.create_vcpu(0)
    assert vcpu.mp_state == G.MpState.RUNNABLE
    vcpu.mp_state = G.MpState.HALTED
    assert vcpu.mp_state == G.MpState.HALTED


def test_clock_and_tss(vm):
    require_cap(vm, "ADJUST_CLOCK")
    vm.clock = 10**12
    now = vm.clock
    assert 10**12 <= now < 10**12 + 10 * 10**9
    if vm.check_extension("KVM_CAP_SET_TSS_ADDR") > 0:
        vm.set_tss_addr(0xFFFBD000)
    if vm.check_extension("KVM_CAP_SET_IDENTITY_MAP_ADDR") > 0:
        vm.set_identity_map_addr(0xFFFBC000)
