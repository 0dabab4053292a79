"""Binary statistics (KVM_GET_STATS_FD) of VMs and vCPUs."""

from __future__ import annotations

import kvm
from guests import real_mode_guest, require_cap


def test_binary_stats(vm):
    require_cap(vm, "BINARY_STATS_FD")
    stats = vm.stats()
    assert "remote_tlb_flush" in stats or len(stats) > 0
    assert all(isinstance(v, (int, tuple)) for v in stats.values())
    _, vcpu = real_mode_guest(vm, bytes([0xE6, 0x10, 0xF4]))  # out 0x10, al ; hlt
    before = vcpu.stats()
    assert isinstance(vcpu.run(), kvm.IoExit)
    assert isinstance(vcpu.run(), kvm.HltExit)
    after = vcpu.stats()
    assert after["exits"] >= before["exits"] + 2
    assert after["halt_exits"] == before["halt_exits"] + 1
