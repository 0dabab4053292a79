"""Dirty page tracking: the dirty log bitmap, manual protect with KVM_CLEAR_DIRTY_LOG, the dirty ring."""

from __future__ import annotations

import pytest

import kvm
from guests import WRITE_PAGE_3, real_mode_guest, require_cap

C = kvm.generated.CONSTANTS


def test_dirty_log_bitmap(vm):
    mem, vcpu = real_mode_guest(vm, WRITE_PAGE_3, flags=C["KVM_MEM_LOG_DIRTY_PAGES"])
    vm.get_dirty_log(mem)  # start from a clean log
    assert isinstance(vcpu.run(), kvm.HltExit)
    bitmap = vm.get_dirty_log(mem)
    assert len(bitmap) == 8  # 16 pages round up to one u64
    assert bitmap[0] & (1 << 3)  # page 3 (0x3000) was written
    assert vm.get_dirty_log(mem)[0] & (1 << 3) == 0  # reading the log cleared it
    mem.write(0x1000, WRITE_PAGE_3)
    vcpu.regs = {"rip": 0x1000}
    assert isinstance(vcpu.run(), kvm.HltExit)
    assert 0x3000 in vm.dirty_pages(mem)


def test_clear_dirty_log(vm):
    require_cap(vm, "MANUAL_DIRTY_LOG_PROTECT2")
    vm.enable_manual_dirty_log_protect()
    mem, vcpu = real_mode_guest(vm, WRITE_PAGE_3, flags=C["KVM_MEM_LOG_DIRTY_PAGES"])
    assert isinstance(vcpu.run(), kvm.HltExit)
    assert 0x3000 in vm.dirty_pages(mem)
    assert 0x3000 in vm.dirty_pages(mem)  # manual protect: reading does not clear
    vm.clear_dirty_log(mem, 0, 16)
    assert 0x3000 not in vm.dirty_pages(mem)


def test_dirty_ring(vm):
    size = vm.check_extension("KVM_CAP_DIRTY_LOG_RING")
    if size <= 0:
        pytest.skip("host lacks KVM_CAP_DIRTY_LOG_RING")
    ring_bytes = min(size, 4096 * 16)
    vm.enable_dirty_ring(ring_bytes)
    mem, vcpu = real_mode_guest(vm, WRITE_PAGE_3, flags=C["KVM_MEM_LOG_DIRTY_PAGES"])
    assert isinstance(vcpu.run(), kvm.HltExit)
    entries = vcpu.harvest_dirty_ring()
    assert kvm.DirtyGfn(mem.slot, 3) in entries
    assert vm.reset_dirty_rings() >= len(entries)
    assert vcpu.harvest_dirty_ring() == []
