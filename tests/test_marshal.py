"""The one marshalling layer (kvm/marshal.py): the ergonomic classes and the generated wrappers give the
same results for the same ioctl, arguments are checked exactly, and KVM_RUN's memory-fault answer
becomes a MemoryFaultExit."""

from __future__ import annotations

import errno
import sys

import pytest

import kvm
from kvm import marshal

from guests import real_mode_guest

X86 = kvm.generated.ARCH == "x86_64"


def _bytes(ffi, cdata) -> bytes:
    return bytes(ffi.buffer(cdata))


@pytest.mark.skipif(not X86, reason="compares the x86 register sets")
def test_ergonomic_and_generated_paths_agree_on_a_real_vcpu(system, vm):
    mem, vcpu = real_mode_guest(vm, bytes([0xF4]))
    ffi = vcpu.ffi
    raw = vcpu.ioctls
    for ergonomic, generated in ((lambda: vcpu.regs, raw.get_regs), (lambda: vcpu.sregs, raw.get_sregs),
                                 (lambda: vcpu.fpu, raw.get_fpu), (lambda: vcpu.xcrs, raw.get_xcrs),
                                 (lambda: vcpu.debugregs, raw.get_debugregs),
                                 (lambda: vcpu.vcpu_events, raw.get_vcpu_events)):
        assert _bytes(ffi, ergonomic()) == _bytes(ffi, generated())
    # a write through one path reads back through the other
    vcpu.regs = {"rax": 0x1234, "rbx": 0x5678}
    assert (raw.get_regs().rax, raw.get_regs().rbx) == (0x1234, 0x5678)
    raw.set_regs(rcx=7)
    assert vcpu.regs.rcx == 7
    assert vcpu.get_cpuid() == kvm.x86.cpuid_entries(raw.get_cpuid2())
    assert system.msr_index_list() == system.ioctls.get_msr_index_list()
    assert system.supported_cpuid() == kvm.x86.cpuid_entries(system.ioctls.get_supported_cpuid())
    indices = system.msr_index_list()[:8]
    assert vcpu.get_msrs(indices) == raw.get_msrs(indices)
    assert vcpu.mp_state == raw.get_mp_state().mp_state
    # XSAVE: both paths set it through marshal.xsave_set, which refuses a record shorter than the state
    state = max(vm.check_extension("KVM_CAP_XSAVE2"), ffi.sizeof("struct kvm_xsave"))
    blob = bytes(ffi.buffer(vcpu.xsave))
    raw.set_xsave(blob, state)
    assert bytes(ffi.buffer(vcpu.xsave)) == blob
    for setter in (lambda short: raw.set_xsave(short, state + 4), lambda short: setattr(vcpu, "xsave", short[:100])):
        with pytest.raises(ValueError, match="xsave"):
            setter(blob)


def test_attribute_paths_agree(system):
    """`get_attr` is the generated `get_device_attr` read as an int; `has_attr` is `has_device_attr`."""
    c = system.binding.CONSTANTS
    if "KVM_X86_GRP_SYSTEM" not in c or system.check_extension("KVM_CAP_SYS_ATTRIBUTES") <= 0:
        pytest.skip("no system attributes on this host (KVM_CAP_SYS_ATTRIBUTES)")
    group, attr = c["KVM_X86_GRP_SYSTEM"], c["KVM_X86_XCOMP_GUEST_SUPP"]
    assert system.has_attr(group, attr) is system.ioctls.has_device_attr(group, attr) is True
    assert system.get_attr(group, attr) == int.from_bytes(system.ioctls.get_device_attr(group, attr), sys.byteorder)
    assert system.has_attr(group, 0xFFFF) is system.ioctls.has_device_attr(group, 0xFFFF) is False


def test_integers_are_checked_exactly_with_the_argument_named(vm):
    with pytest.raises(TypeError, match=r"id must be an int, not float"):
        vm.create_vcpu(1.9)
    with pytest.raises(TypeError, match=r"must be an int, not bool"):
        vm.create_vcpu(True)
    with pytest.raises(ValueError, match=r"id must be in 0..2\*\*32-1, not -1"):
        vm.create_vcpu(-1)
    with pytest.raises(ValueError, match=r"slot must be in 0..2\*\*32-1, not 4294967296"):
        vm.ioctls.set_user_memory_region(slot=2**32, memory_size=0)
    with pytest.raises(TypeError, match=r"guest_phys_addr must be an int"):
        vm.ioctls.set_user_memory_region(slot=0, guest_phys_addr=1.5)
    assert vm.vcpus == [] and vm.memory == []


@pytest.mark.skipif(not X86, reason="uses the x86 register sets")
def test_records_of_another_type_or_size_are_refused(vm):
    vcpu = vm.create_vcpu(0)
    before = bytes(vcpu.ffi.buffer(vcpu.sregs))
    with pytest.raises(TypeError, match="must be a struct kvm_sregs cdata, not a struct kvm_regs"):
        vcpu.sregs = vcpu.regs
    with pytest.raises(ValueError, match=r"must be \d+ bytes \(a struct kvm_regs\), not 0"):
        vcpu.regs = b""
    with pytest.raises(ValueError, match=r"must be \d+ bytes"):
        vcpu.regs = bytes(10_000)
    with pytest.raises(TypeError, match="has no member 'nope'"):
        vcpu.regs = {"nope": 1}
    with pytest.raises(ValueError, match=r"struct kvm_regs.rip must be in 0..2\*\*64-1"):
        vcpu.regs = {"rip": 2**64}
    assert bytes(vcpu.ffi.buffer(vcpu.sregs)) == before


@pytest.mark.skipif(not X86, reason="uses x86's struct kvm_cpuid2")
def test_flexible_array_counts_must_fit_their_allocation(system):
    ffi = system.ffi
    short = ffi.new("struct kvm_cpuid2 *", {"entries": 1})
    short.nent = 100  # says 100 entries, has room for 1: the kernel would read past it
    with pytest.raises(ValueError, match="says 100 entries but has room for 1"):
        marshal.flex_set(lambda name, arg: pytest.fail("issued"), ffi, "KVM_SET_CPUID2", "struct kvm_cpuid2",
                         "nent", "entries", short)


def test_memory_fault_is_returned_as_an_exit_decoded_from_kvm_run(vm):
    """KVM_RUN failing with EFAULT or EHWPOISON while exit_reason says KVM_EXIT_MEMORY_FAULT is how a
    private-memory fault reaches user space. This host cannot produce one (no KVM_CAP_MEMORY_ATTRIBUTES),
    so the vCPU's real kvm_run page is filled as the kernel fills it and handed to the run loop's
    failure path."""
    c = vm.binding.CONSTANTS
    vcpu = vm.create_vcpu(0)
    run = vcpu.kvm_run
    run.exit_reason = c["KVM_EXIT_MEMORY_FAULT"]
    run.memory_fault.flags = c["KVM_MEMORY_EXIT_FLAG_PRIVATE"]
    run.memory_fault.gpa = 0x12345000
    run.memory_fault.size = 0x1000
    for err in (errno.EFAULT, kvm.vcpu.EHWPOISON):
        fault = vcpu._run_failed(err)
        assert type(fault) is kvm.MemoryFaultExit
        assert (fault.gpa, fault.size, fault.private) == (0x12345000, 0x1000, True)
    run.exit_reason = c["KVM_EXIT_IO"]
    with pytest.raises(kvm.KvmError) as info:
        vcpu._run_failed(errno.EFAULT)  # EFAULT with another exit reason is an error
    assert info.value.errno == errno.EFAULT and info.value.ioctl == "KVM_RUN"
