"""VM- and vCPU-level features on real /dev/kvm: memory, dirty logging, rings, stats, irqchip, state
round trips, limits and error reporting."""

from __future__ import annotations

import errno
import os
import resource
import time

import pytest

import kvm
from guests import *  # noqa: F403  (fixtures: system, vm)
from guests import real_mode_guest, require_cap

G = kvm.generated
C = G.CONSTANTS
PAGE = 4096

WRITE_PAGE_3 = bytes([
    0xC6, 0x06, 0x00, 0x30, 0x55,  # mov byte [0x3000], 0x55
    0xF4,                          # hlt
])


# -- memory ---------------------------------------------------------------------------------------


def test_guest_memory_bounds_and_views(vm):
    mem = vm.add_memory(0x100000, 0x4000)
    assert (mem.slot, mem.guest_addr, mem.size, mem.end) == (0, 0x100000, 0x4000, 0x104000)
    mem.write(0x100010, b"hello")
    assert mem.read(0x100010, 5) == b"hello"
    view = mem.view(0x100000, 0x20)
    view[0:2] = b"hi"
    assert mem.read(0x100000, 2) == b"hi"
    mem.write_int(0x100100, 0x1122334455667788)
    assert mem.read_int(0x100100, 8) == 0x1122334455667788
    for addr, length in [(0xFFFFF, 1), (0x103FFF, 2), (0x104000, 1), (0x100000, -1)]:
        with pytest.raises(kvm.GuestMemoryError):
            mem.read(addr, length)
    with pytest.raises(kvm.GuestMemoryError):
        mem.write(0x103FFE, b"abc")
    with pytest.raises(kvm.GuestMemoryError):
        mem.view(0x103000, 0x2000)
    assert mem.read(0x103FFE, 2) == b"\0\0"  # the failed write wrote nothing
    del view


def test_memfd_and_file_backed_memory(vm, tmp_path):
    mem = vm.add_memory(0, 0x10000, memfd=True)
    assert mem.fd >= 0
    mem.write(0x1000, WRITE_PAGE_3)
    os.pwrite(mem.fd, b"\xAA", 0x3001)  # the memfd is the guest's memory
    vcpu = vm.create_vcpu(0)
    kvm.x86.setup_real_mode(vcpu, entry=0x1000)
    assert isinstance(vcpu.run(), kvm.HltExit)
    assert os.pread(mem.fd, 2, 0x3000) == b"\x55\xAA"
    path = tmp_path / "ram.img"
    path.write_bytes(b"\x5A" * 0x2000)
    fmem = vm.add_memory(0x20000, 0x2000, file=str(path))
    assert fmem.read(0x20000, 2) == b"\x5A\x5A"
    fmem.write(0x20001, b"\x01")
    fmem.close()
    assert path.read_bytes()[:2] == b"\x5A\x01"
    assert [m.slot for m in vm.memory] == [0]


def test_remove_memory_and_slot_reuse(vm):
    a = vm.add_memory(0, 0x1000)
    b = vm.add_memory(0x1000, 0x1000)
    assert (a.slot, b.slot) == (0, 1)
    vm.remove_memory(a)
    assert a.closed and [m.slot for m in vm.memory] == [1]
    c = vm.add_memory(0x8000, 0x1000)
    assert c.slot == 0
    with pytest.raises(kvm.ClosedError):
        a.read(0, 1)


def test_memory_slot_limits_and_invalid_flags(vm):
    nr = vm.check_extension("KVM_CAP_NR_MEMSLOTS")
    assert nr > 0
    with pytest.raises(kvm.KvmError) as info:
        vm.add_memory(0, PAGE, slot=nr)  # slot numbers are 0 .. nr-1
    assert info.value.errno == errno.EINVAL and info.value.ioctl == "KVM_SET_USER_MEMORY_REGION"
    top = vm.add_memory(0, PAGE, slot=nr - 1)
    assert top.slot == nr - 1
    with pytest.raises(kvm.KvmError) as info:
        vm.add_memory(0, PAGE)  # overlaps slot nr-1
    assert info.value.errno == errno.EEXIST
    with pytest.raises(kvm.KvmError) as info:
        vm.add_memory(0x10000, PAGE, flags=1 << 7)  # no such KVM_MEM_* flag
    assert info.value.errno == errno.EINVAL
    with pytest.raises(kvm.KvmError) as info:
        vm.add_memory(0x10000, PAGE + 1)  # not a whole number of pages
    assert info.value.errno == errno.EINVAL
    with pytest.raises(kvm.KvmError) as info:
        vm.add_memory(0x10800, PAGE)  # guest address not page aligned
    assert info.value.errno == errno.EINVAL
    assert [m.slot for m in vm.memory] == [nr - 1]


def test_guest_memfd_basics(vm):
    require_cap(vm, "GUEST_MEMFD")
    try:
        gmem = vm.create_guest_memfd(0x10000)
    except kvm.KvmError as exc:
        if exc.errno == errno.EINVAL:
            pytest.skip("KVM_CAP_GUEST_MEMFD is reported but this VM type refuses guest_memfd (EINVAL)")
        raise
    assert os.fstat(gmem.fileno()).st_size == 0x10000
    with pytest.raises(kvm.KvmError) as info:
        vm.create_guest_memfd(0x10000, flags=1 << 40)  # unknown flag
    assert info.value.errno == errno.EINVAL
    mem = vm.add_memory(0, 0x10000, guest_memfd=gmem)
    assert mem.flags & C["KVM_MEM_GUEST_MEMFD"]
    assert mem.guest_memfd is gmem
    vm.remove_memory(mem)
    gmem.close()
    assert gmem.closed


# -- dirty logging --------------------------------------------------------------------------------


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


# -- coalesced MMIO / PIO -------------------------------------------------------------------------


def test_coalesced_mmio_ring(vm):
    require_cap(vm, "COALESCED_MMIO")
    vm.register_coalesced_mmio(0x20000, 0x1000)
    code = bytes([
        0xB8, 0x00, 0x20,              # mov ax, 0x2000
        0x8E, 0xD8,                    # mov ds, ax
        0xC6, 0x06, 0x10, 0x00, 0xA1,  # mov byte [0x10], 0xa1
        0xC6, 0x06, 0x11, 0x00, 0xA2,  # mov byte [0x11], 0xa2
        0xF4,                          # hlt
    ])
    _, vcpu = real_mode_guest(vm, code)
    assert isinstance(vcpu.run(), kvm.HltExit)  # the writes did not exit
    entries = vm.coalesced_entries()
    assert [(e.phys_addr, e.len, e.pio, e.data) for e in entries] == [
        (0x20010, 1, False, b"\xA1"),
        (0x20011, 1, False, b"\xA2"),
    ]
    assert vm.coalesced_entries() == []
    vm.unregister_coalesced_mmio(0x20000, 0x1000)


def test_coalesced_pio_ring(vm):
    require_cap(vm, "COALESCED_PIO")
    vm.register_coalesced_pio(0x80, 1)
    code = bytes([
        0xB0, 0xB1,  # mov al, 0xb1
        0xE6, 0x80,  # out 0x80, al
        0xB0, 0xB2,  # mov al, 0xb2
        0xE6, 0x80,  # out 0x80, al
        0xF4,        # hlt
    ])
    _, vcpu = real_mode_guest(vm, code)
    assert isinstance(vcpu.run(), kvm.HltExit)
    entries = vm.coalesced_entries()
    assert [(e.phys_addr, e.pio, e.data) for e in entries] == [(0x80, True, b"\xB1"), (0x80, True, b"\xB2")]


# -- eventfds -------------------------------------------------------------------------------------


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


# -- vCPU state round trips -----------------------------------------------------------------------


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


def test_msr_round_trip(system, vm):
    vcpu = vm.create_vcpu(0)
    wanted = {0x174: 0x10, 0x175: 0xFFFF1000, 0x176: 0x401000}  # IA32_SYSENTER_CS/ESP/EIP
    assert set(wanted) <= set(system.msr_index_list())
    vcpu.set_msrs(wanted)
    assert vcpu.get_msrs(wanted) == wanted
    with pytest.raises(kvm.KvmError) as info:
        vcpu.get_msrs([0x174, 0xDEADBEEF])
    assert "0xdeadbeef" in str(info.value)


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


def test_mp_state_round_trip(vm):
    require_cap(vm, "IRQCHIP")
    require_cap(vm, "MP_STATE")
    vm.create_irqchip()
    vcpu = vm.create_vcpu(0)
    assert vcpu.mp_state == G.MpState.RUNNABLE
    vcpu.mp_state = G.MpState.HALTED
    assert vcpu.mp_state == G.MpState.HALTED


# -- stats ----------------------------------------------------------------------------------------


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


# -- limits ---------------------------------------------------------------------------------------


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
        try:
            obj._ioctl("KVM_ENABLE_CAP", G.ffi.new("struct kvm_enable_cap *"))  # cap 0: refused by the kernel
        except (kvm.KvmError, kvm.CapabilityError):
            pass
        assert C[spec.capability_for(obj.fd_kind)] in [value for _, value in asked], obj.fd_kind
    assert spec.capability_for("vm") == "KVM_CAP_ENABLE_CAP_VM" and spec.capability_for("vcpu") == "KVM_CAP_ENABLE_CAP"


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


def test_clock_and_tss(vm):
    require_cap(vm, "ADJUST_CLOCK")
    vm.clock = 10**12
    now = vm.clock
    assert 10**12 <= now < 10**12 + 10 * 10**9
    if vm.check_extension("KVM_CAP_SET_TSS_ADDR") > 0:
        vm.set_tss_addr(0xFFFBD000)
    if vm.check_extension("KVM_CAP_SET_IDENTITY_MAP_ADDR") > 0:
        vm.set_identity_map_addr(0xFFFBC000)


def test_every_generated_wrapper_is_reachable_from_the_objects(system, vm):
    """`obj.ioctls` is the binding's generated mixin of the object's fd kind, bound to its fd and gates."""
    from generated_fds import B, W as wrappers

    assert B is system.binding
    vcpu = vm.create_vcpu(0)
    for obj, mixin in ((system, wrappers.SystemIoctls), (vm, wrappers.VmIoctls), (vcpu, wrappers.VcpuIoctls)):
        bound = obj.ioctls
        assert isinstance(bound, mixin) and bound.owner is obj
        missing = [name for name in vars(mixin) if not name.startswith("_") and not callable(getattr(bound, name))]
        assert not missing
    assert system.ioctls.get_api_version() == 12
    assert vm.ioctls.check_extension(C["KVM_CAP_USER_MEMORY"]) == vm.check_extension("USER_MEMORY")
    vcpu.regs = {"rip": 0x1234}
    assert vcpu.ioctls.get_regs().rip == 0x1234  # the same vCPU
    fd = vm.ioctls.create_vcpu(1)  # the raw form: an fd the caller owns
    try:
        assert fd >= 0 and fd not in (vm.fileno(), vcpu.fileno())
    finally:
        os.close(fd)
    bound = vcpu.ioctls
    vcpu.close()
    with pytest.raises(kvm.ClosedError):
        bound.get_regs()
    if vm.check_extension("GUEST_MEMFD") > 0:  # no generated wrappers for guest_memfd fds
        with pytest.raises(AttributeError, match="guest_memfd"):
            vm.create_guest_memfd(0x1000).ioctls
