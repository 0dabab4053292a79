"""Interrupts and eventfds: the in-kernel irqchip, irq lines, irqfd, ioeventfd, the PIT, GSI routing, MSI."""

from __future__ import annotations

import errno
import time

import pytest

import kvm
from guests import real_mode_guest, require_cap

C = kvm.generated.CONSTANTS


def test_ioeventfd_pio(vm):
    require_cap(vm, "IOEVENTFD")
    efd = vm.ioeventfd(0x50, 1, pio=True)
    code = bytes([
        0xB0, 0x01,  # mov al, 1
        0xE6, 0x50,  # out 0x50, al    (signals the eventfd, no exit)
        0xE6, 0x51,  # out 0x51, al    (exits)
        0xF4,        # hlt
    ])
    _, vcpu = real_mode_guest(vm, code)
    exit = vcpu.run()
    assert isinstance(exit, kvm.IoExit) and exit.port == 0x51
    assert efd.read() == 1
    vm.ioeventfd_remove(efd, 0x50, 1, pio=True)
    efd.close()


def test_irqchip_irq_line_irqfd_and_pit(vm):
    require_cap(vm, "IRQCHIP")
    vm.create_irqchip()
    master = C["KVM_IRQCHIP_PIC_MASTER"]
    chip = vm.get_irqchip(master)
    assert chip.chip_id == master
    chip.chip.pic.imr = 0xF0
    vm.set_irqchip(chip)
    assert vm.get_irqchip(master).chip.pic.imr == 0xF0
    vm.irq_line(3, 1)
    assert vm.get_irqchip(master).chip.pic.irr & (1 << 3)
    vm.irq_line(3, 0)
    ioapic = vm.get_irqchip(C["KVM_IRQCHIP_IOAPIC"])
    assert ioapic.chip_id == C["KVM_IRQCHIP_IOAPIC"]
    if vm.check_extension("KVM_CAP_IRQFD") > 0:
        efd = vm.irqfd(5)
        efd.notify()
        deadline = time.monotonic() + 2  # KVM may inject an irqfd from a work queue: poll briefly
        while not vm.get_irqchip(master).chip.pic.irr & (1 << 5) and time.monotonic() < deadline:
            time.sleep(0.001)
        assert vm.get_irqchip(master).chip.pic.irr & (1 << 5)
        vm.irqfd_remove(efd, 5)
        efd.close()
    if vm.check_extension("KVM_CAP_PIT2") > 0 and vm.check_extension("KVM_CAP_PIT_STATE2") > 0:
        vm.create_pit2()
        state = vm.pit2
        state.channels[0].count = 0x1234
        state.channels[0].mode = 2
        vm.pit2 = state
        again = vm.pit2
        assert (again.channels[0].count, again.channels[0].mode) == (0x1234, 2)


def test_gsi_routing_and_msi(vm):
    require_cap(vm, "IRQ_ROUTING")
    vm.create_irqchip()
    vm.set_gsi_routing([kvm.IrqchipRoute(4, C["KVM_IRQCHIP_IOAPIC"], 4), kvm.MsiRoute(40, 0xFEE00000, 0x31)])
    vm.irq_line(4, 1)
    vm.irq_line(4, 0)
    if vm.check_extension("KVM_CAP_SIGNAL_MSI") > 0:
        vm.create_vcpu(0)
        assert vm.signal_msi(0xFEE00000, 0x30) >= 0
    with pytest.raises(kvm.KvmError) as info:
        vm.set_gsi_routing([kvm.IrqchipRoute(1, 7, 0)])  # there is no irqchip 7
    assert info.value.errno == errno.EINVAL


def test_eventfd_counter_limits():
    """An eventfd's counter holds at most 2**64 - 2: a notify() that would pass it adds nothing and raises
    StateError on a non-blocking eventfd; values outside 1..2**64-2 are refused naming `value`."""
    with kvm.EventFd() as efd:
        efd.notify(2**64 - 3)
        with pytest.raises(kvm.StateError, match="maximum"):
            efd.notify(2)
        efd.notify(1)  # exactly the maximum still fits
        assert efd.read() == 2**64 - 2
        assert efd.read() == 0
        for bad in (0, 2**64 - 1, -1):
            with pytest.raises(ValueError, match="value"):
                efd.notify(bad)
