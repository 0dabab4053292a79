"""Capabilities, limits and errors: check_extension in every form, the capability gate of each fd kind,
vCPU count limits, what KvmError and CapabilityError report."""

from __future__ import annotations

import errno
import os
import resource

import pytest

import kvm

G = kvm.generated
C = G.CONSTANTS


def test_check_extension_asks_the_kernel_every_time(system, vm):
    cap = system.binding.Cap.USER_MEMORY
    for obj in (system, vm):
        assert obj.check_extension(cap) == obj.check_extension(int(cap)) == 1
        assert obj.check_extension("USER_MEMORY") == obj.check_extension("KVM_CAP_USER_MEMORY") == 1
    # Put /dev/null under both fds: an answer kept from the calls above would hide it, a new ioctl fails.
    devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    try:
        for obj in (vm, system):
            os.dup2(devnull, obj.fileno(), inheritable=False)
    finally:
        os.close(devnull)
    for obj in (vm, system):
        for form in (cap, int(cap), "USER_MEMORY"):
            with pytest.raises(kvm.KvmError, match="KVM_CHECK_EXTENSION .*ENOTTY"):
                obj.check_extension(form)


def test_check_extension_by_number_name_or_member_and_after_close():
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        pytest.skip("/dev/kvm is absent or not usable by this user")
    k = kvm.Kvm()
    cap = k.binding.CONSTANTS["KVM_CAP_USER_MEMORY"]
    assert k.check_extension(cap) == k.check_extension("USER_MEMORY") == 1
    assert k.check_extension(k.binding.Cap.USER_MEMORY) == 1
    assert k.check_extension(2**31 - 1) == 0  # a capability no kernel has
    with pytest.raises(LookupError, match="KVM_CAP_NO_SUCH_THING"):
        k.check_extension("NO_SUCH_THING")
    with pytest.raises(ValueError, match="cap must be in 0..2"):
        k.check_extension(2**64)
    taken = k.check_extension
    k.close()
    for call in (taken, k.check_extension):
        with pytest.raises(kvm.ClosedError):
            call(cap)


def test_each_fd_kind_checks_its_own_capability(vm, monkeypatch):
    """KVM_ENABLE_CAP needs KVM_CAP_ENABLE_CAP_VM on a VM and KVM_CAP_ENABLE_CAP on a vCPU (api.rst 4.37)."""
    vcpu = vm.create_vcpu(0)
    asked: list[tuple[str, int]] = []
    for obj in (vm, vcpu._cap_owner()):
        real = obj._query_cap
        monkeypatch.setattr(obj, "_query_cap", lambda value, real=real, obj=obj: asked.append((obj.fd_kind, value))
                            or real(value))
    spec = G.IOCTLS["KVM_ENABLE_CAP"]
    for obj in (vm, vcpu):
        asked.clear()
        obj._passed.pop("KVM_ENABLE_CAP", None)  # (gates passed are shared by the fds of a kind: check it anew)
        try:
            obj._ioctl("KVM_ENABLE_CAP", G.ffi.new("struct kvm_enable_cap *"))  # cap 0: refused by the kernel
        except (kvm.KvmError, kvm.CapabilityError):
            pass
        assert C[spec.capability_for(obj.fd_kind)] in [value for _, value in asked], obj.fd_kind
    assert spec.capability_for("vm") == "KVM_CAP_ENABLE_CAP_VM" and spec.capability_for("vcpu") == "KVM_CAP_ENABLE_CAP"


def test_error_and_capability_reporting(system, vm):
    with pytest.raises(kvm.KvmError) as info:
        vm.create_vcpu(1 << 30)
    err = info.value
    assert isinstance(err, OSError)
    assert (err.ioctl, err.fd_kind, err.errno) == ("KVM_CREATE_VCPU", "vm", errno.EINVAL)
    assert str(err) == "KVM_CREATE_VCPU on vm fd: EINVAL (Invalid argument)"
    absent = [
        spec for spec in G.IOCTLS.values()
        if "vm" in spec.fd and spec.capability_for("vm") in C and vm.check_extension(spec.capability_for("vm")) == 0
        and (spec.arches is None or G.ARCH in spec.arches)
    ]
    if not absent:
        pytest.skip("every vm ioctl's capability is present on this host")
    spec = absent[0]
    with pytest.raises(kvm.CapabilityError) as info:
        vm._ioctl(spec.name, 0)
    capability = spec.capability_for("vm")
    assert info.value.capability == capability and info.value.ioctl == spec.name
    assert capability in str(info.value) and spec.name in str(info.value)


def test_max_vcpus(system, vm):
    max_vcpus = system.check_extension("KVM_CAP_MAX_VCPUS") or system.check_extension("KVM_CAP_NR_VCPUS")
    max_id = system.check_extension("KVM_CAP_MAX_VCPU_ID") or max_vcpus
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = max_vcpus + 64 + len(os.listdir("/proc/self/fd"))
    if soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            pytest.skip(f"RLIMIT_NOFILE hard limit {hard} is below the {needed} fds {max_vcpus} vCPUs need")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    try:
        with pytest.raises(kvm.KvmError) as info:
            vm.create_vcpu(max_id)  # ids are 0 .. max_id-1
        assert info.value.errno == errno.EINVAL
        vcpus = [vm.create_vcpu(i) for i in range(max_vcpus)]
        assert len(vm.vcpus) == max_vcpus
        with pytest.raises(kvm.KvmError) as info:
            vm.create_vcpu(max_vcpus)
        assert info.value.errno == errno.EINVAL
        with pytest.raises(kvm.KvmError) as info:
            vm.create_vcpu(0)
        assert info.value.errno in (errno.EEXIST, errno.EINVAL)
        for v in vcpus:
            v.close()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
