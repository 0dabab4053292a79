"""Devices and attributes: KVM_CREATE_DEVICE, device attributes, /dev/kvm's system attributes."""

from __future__ import annotations

import errno

import pytest

import kvm
from guests import require_cap

G = kvm.generated
C = G.CONSTANTS


def test_create_device(vm):
    require_cap(vm, "DEVICE_CTRL")
    vfio = G.DeviceType.VFIO
    try:
        vm.create_device(vfio, test=True)
    except kvm.KvmError as exc:
        if exc.errno == errno.ENODEV:
            pytest.skip("KVM_DEV_TYPE_VFIO is not available on this host (ENODEV)")
        raise
    with vm.create_device(vfio) as device:
        assert device.fd_kind == "device" and device.type == vfio
        assert device.has_attr(0x7FFF, 0) is False
    assert device.closed


def test_system_attributes(system):
    """/dev/kvm answers KVM_HAS/GET_DEVICE_ATTR (x86: the XSAVE features a guest may be given)."""
    require_cap(system, "SYS_ATTRIBUTES")
    if "KVM_X86_GRP_SYSTEM" not in C:
        pytest.skip(f"no system attribute group known to this binding for {G.ARCH}")
    group, attr = C["KVM_X86_GRP_SYSTEM"], C["KVM_X86_XCOMP_GUEST_SUPP"]
    assert system.has_attr(group, attr) is True
    assert system.get_attr(group, attr) & 0b11 == 0b11  # x87 and SSE state
    assert system.has_attr(group, 0x7FFF) is False
    assert not hasattr(system, "set_attr")  # api.rst: no set on /dev/kvm
