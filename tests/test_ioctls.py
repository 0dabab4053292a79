"""Every ioctl of the newest binding for this host's arch, against KVM_CHECK_EXTENSION on the real /dev/kvm.

Each ioctl has one row in ROWS (a small setup and a call through its generated wrapper) or, when api.rst
documents it for other arches only, is covered by the generic other-arch test. Capability reported:
the call must succeed or fail with an errno the documentation gives for that situation (never ENOTTY).
Capability absent: the wrapper must raise CapabilityError without issuing the ioctl.
The same generated wrappers are reachable from the ergonomic objects as `obj.ioctls`.

Exceptions (exercised, but allowed an errno other rows would not accept), with the reason:
- KVM_MEMORY_ENCRYPT_OP / _REG_REGION / _UNREG_REGION: ENOTTY when the VM has no memory encryption
  (SEV/TDX); api.rst: "If the platform supports creating encrypted VMs ...". Not capability-gated.
- KVM_GET_NR_MMU_PAGES: removed from the kernel (v5.x), ENOTTY/EINVAL on current kernels although
  KVM_CAP_MMU_SHADOW_CACHE_CONTROL is still reported.
"""

from __future__ import annotations

import errno
import mmap
import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import kvm
from kvm import _fd
from kvm.errors import CapabilityError, KvmError, UnavailableError

if not os.path.exists("/dev/kvm") or not os.access("/dev/kvm", os.R_OK | os.W_OK):
    pytest.skip("no usable /dev/kvm", allow_module_level=True)

from generated_fds import B, C, W, Device, Sys, Vcpu, Vm, ffi  # noqa: E402

ARCH = B.ARCH


class Ctx:
    """The fds and resources one row needs; closed after the row."""

    def __init__(self) -> None:
        self.sys = Sys(os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC), B)
        self._fds: list[int] = []
        self._maps: list[mmap.mmap] = []
        self._vm: Vm | None = None
        self._vcpu: Vcpu | None = None

    def new_vm(self, irqchip: bool = False) -> Vm:
        vm = Vm(self.sys.create_vm(), B, self.sys)
        if irqchip:
            vm.create_irqchip()
        return vm

    @property
    def vm(self) -> Vm:
        if self._vm is None:
            self._vm = self.new_vm()
        return self._vm

    @property
    def vcpu(self) -> Vcpu:
        if self._vcpu is None:
            self._vcpu = self.new_vcpu(self.vm)
        return self._vcpu

    def new_vcpu(self, vm: Vm, vcpu_id: int = 0) -> Vcpu:
        return Vcpu(vm.create_vcpu(vcpu_id), B, vm)

    def memory(self, vm: Vm, slot: int = 0, gpa: int = 0, size: int = 0x10000, flags: int = 0,
               code: bytes = b"") -> int:
        m = mmap.mmap(-1, size)
        m[: len(code)] = code
        self._maps.append(m)
        addr = int(ffi.cast("uintptr_t", ffi.from_buffer(m)))
        vm.set_user_memory_region(slot=slot, flags=flags, guest_phys_addr=gpa, memory_size=size, userspace_addr=addr)
        return addr

    def eventfd(self) -> int:
        fd = os.eventfd(0, os.EFD_CLOEXEC)
        self._fds.append(fd)
        return fd

    def own(self, fd: int) -> int:
        self._fds.append(fd)
        return fd

    def close(self) -> None:
        self.sys.close()
        for fd in self._fds:
            os.close(fd)
        for m in self._maps:
            try:
                m.close()
            except BufferError:
                pass


Row = Callable[[Ctx], object]
ROWS: dict[str, tuple[Row, tuple[int, ...]]] = {}  # ioctl -> (call, errnos the docs allow for this setup)
ENOTTY_OK = {  # ioctl -> why ENOTTY is the documented answer here
    "KVM_MEMORY_ENCRYPT_OP": "no memory-encrypted VM type on this host",
    "KVM_MEMORY_ENCRYPT_REG_REGION": "no memory-encrypted VM type on this host",
    "KVM_MEMORY_ENCRYPT_UNREG_REGION": "no memory-encrypted VM type on this host",
    "KVM_GET_NR_MMU_PAGES": "removed from the kernel; still encoded in linux/kvm.h",
}


def row(*names: str, ok: tuple[int, ...] = ()) -> Callable[[Row], Row]:
    def register(fn: Row) -> Row:
        for name in names:
            ROWS[name] = (fn, ok)
        return fn

    return register


# -- system -------------------------------------------------------------------------------------------

row("KVM_GET_API_VERSION")(lambda c: c.sys.get_api_version() == 12 or pytest.fail("API version"))
row("KVM_CREATE_VM")(lambda c: c.own(c.sys.create_vm()))
row("KVM_GET_VCPU_MMAP_SIZE")(lambda c: c.sys.get_vcpu_mmap_size() >= 4096 or pytest.fail("mmap size"))
row("KVM_GET_MSR_INDEX_LIST")(lambda c: c.sys.get_msr_index_list())
row("KVM_GET_MSR_FEATURE_INDEX_LIST")(lambda c: c.sys.get_msr_feature_index_list())
row("KVM_GET_SUPPORTED_CPUID")(lambda c: c.sys.get_supported_cpuid().nent > 0 or pytest.fail("no cpuid"))
row("KVM_GET_EMULATED_CPUID")(lambda c: c.sys.get_emulated_cpuid())
row("KVM_X86_GET_MCE_CAP_SUPPORTED")(lambda c: c.sys.x86_get_mce_cap_supported())


@row("KVM_CHECK_EXTENSION")
def _check_extension(c: Ctx) -> None:
    assert c.sys.check_extension(B.Cap.USER_MEMORY) == 1
    assert c.vm.check_extension(int(B.Cap.USER_MEMORY)) >= 0


@row("KVM_GET_SUPPORTED_HV_CPUID")
def _hv_cpuid(c: Ctx) -> None:
    c.sys.get_supported_hv_cpuid()
    c.vcpu.get_supported_hv_cpuid()


@row("KVM_GET_MSRS")
def _get_msrs(c: Ctx) -> None:
    if c.sys.check_extension(B.Cap.GET_MSR_FEATURES) > 0:
        features = c.sys.get_msr_feature_index_list()
        assert len(c.sys.get_msrs(features[:1])) == len(features[:1])
    assert 0x10 in c.vcpu.get_msrs([0x10])  # IA32_TIME_STAMP_COUNTER


# -- vm -----------------------------------------------------------------------------------------------

row("KVM_CREATE_VCPU")(lambda c: c.own(c.vm.create_vcpu(1)))
row("KVM_CREATE_IRQCHIP")(lambda c: c.vm.create_irqchip())
row("KVM_SET_USER_MEMORY_REGION")(lambda c: c.memory(c.vm))
row("KVM_SET_TSS_ADDR")(lambda c: c.vm.set_tss_addr(0xFFFBD000))
row("KVM_SET_IDENTITY_MAP_ADDR")(lambda c: c.vm.set_identity_map_addr(0xFFFBC000))
row("KVM_SET_BOOT_CPU_ID")(lambda c: c.vm.set_boot_cpu_id(0))
row("KVM_GET_CLOCK")(lambda c: c.vm.get_clock())
row("KVM_SET_CLOCK")(lambda c: c.vm.set_clock(clock=1_000_000))
row("KVM_SET_NR_MMU_PAGES")(lambda c: c.vm.set_nr_mmu_pages(64))
row("KVM_GET_NR_MMU_PAGES", ok=(errno.ENOTTY, errno.EINVAL))(lambda c: c.vm.get_nr_mmu_pages())
row("KVM_X86_SET_MSR_FILTER")(lambda c: c.vm.x86_set_msr_filter(flags=0))
row("KVM_SET_PMU_EVENT_FILTER")(lambda c: c.vm.set_pmu_event_filter([], action=0))
row("KVM_IRQ_LINE")(lambda c: c.new_vm(irqchip=True).irq_line(irq=4, level=1))
row("KVM_IRQ_LINE_STATUS")(lambda c: c.new_vm(irqchip=True).irq_line_status(irq=4, level=1))
row("KVM_GET_IRQCHIP")(lambda c: c.new_vm(irqchip=True).get_irqchip(chip_id=0))
row("KVM_SET_IRQCHIP")(lambda c: (lambda vm: vm.set_irqchip(vm.get_irqchip(chip_id=2)))(c.new_vm(irqchip=True)))
row("KVM_CREATE_PIT")(lambda c: c.new_vm(irqchip=True).create_pit())
row("KVM_CREATE_PIT2")(lambda c: c.new_vm(irqchip=True).create_pit2(flags=0))
row("KVM_SIGNAL_MSI")(lambda c: (lambda vm: (c.new_vcpu(vm), vm.signal_msi(address_lo=0xFEE00000, data=0x30)))(
    c.new_vm(irqchip=True)))
row("KVM_REGISTER_COALESCED_MMIO")(lambda c: c.vm.register_coalesced_mmio(addr=0x100000, size=0x1000))
row("KVM_CREATE_GUEST_MEMFD", ok=(errno.EINVAL,))(lambda c: c.own(c.vm.create_guest_memfd(size=0x10000)))
row("KVM_MEMORY_ENCRYPT_OP", ok=(errno.ENOTTY, errno.EINVAL))(lambda c: (c.vm.memory_encrypt_op(0),
                                                                         c.vcpu.memory_encrypt_op(0)))
row("KVM_MEMORY_ENCRYPT_REG_REGION", ok=(errno.ENOTTY, errno.EINVAL))(
    lambda c: c.vm.memory_encrypt_reg_region(addr=c.memory(c.vm), size=0x10000))
row("KVM_MEMORY_ENCRYPT_UNREG_REGION", ok=(errno.ENOTTY, errno.EINVAL))(
    lambda c: c.vm.memory_encrypt_unreg_region(addr=c.memory(c.vm), size=0x10000))
row("KVM_SET_MEMORY_ATTRIBUTES")(lambda c: c.vm.set_memory_attributes(address=0, size=0x1000, attributes=0))
row("KVM_HYPERV_EVENTFD")(lambda c: c.vm.hyperv_eventfd(conn_id=1, fd=c.eventfd()))
row("KVM_XEN_HVM_CONFIG")(lambda c: c.vm.xen_hvm_config(flags=0))
row("KVM_XEN_HVM_GET_ATTR")(lambda c: c.vm.xen_hvm_get_attr(type=0))
row("KVM_XEN_HVM_SET_ATTR")(lambda c: c.vm.xen_hvm_set_attr(type=0))
row("KVM_XEN_HVM_EVTCHN_SEND", ok=(errno.EINVAL, errno.ENOENT))(lambda c: c.vm.xen_hvm_evtchn_send(port=1))
row("KVM_XEN_VCPU_GET_ATTR", ok=(errno.EINVAL, errno.ENOENT))(lambda c: c.vcpu.xen_vcpu_get_attr(type=0))
row("KVM_XEN_VCPU_SET_ATTR", ok=(errno.EINVAL, errno.ENOENT))(lambda c: c.vcpu.xen_vcpu_set_attr(type=0))


@row("KVM_UNREGISTER_COALESCED_MMIO")
def _unregister_coalesced(c: Ctx) -> None:
    c.vm.register_coalesced_mmio(addr=0x100000, size=0x1000)
    c.vm.unregister_coalesced_mmio(addr=0x100000, size=0x1000)


@row("KVM_SET_USER_MEMORY_REGION2")
def _memory2(c: Ctx) -> None:
    m = mmap.mmap(-1, 0x10000)
    c._maps.append(m)
    addr = int(ffi.cast("uintptr_t", ffi.from_buffer(m)))
    c.vm.set_user_memory_region2(slot=1, guest_phys_addr=0x100000, memory_size=0x10000, userspace_addr=addr)


@row("KVM_GET_DIRTY_LOG")
def _dirty_log(c: Ctx) -> None:
    c.memory(c.vm, flags=int(B.MemoryRegionFlag.LOG_DIRTY_PAGES))
    assert len(c.vm.get_dirty_log(0)) == 8  # the 16-page slot's bitmap, sized from the slot as registered
    with pytest.raises(ValueError, match="slot 0x1 has no memory registered"):
        c.vm.get_dirty_log(1)  # nothing registered there: no buffer the kernel could overrun


@row("KVM_CLEAR_DIRTY_LOG")
def _clear_dirty_log(c: Ctx) -> None:
    c.vm.enable_cap(cap=B.Cap.MANUAL_DIRTY_LOG_PROTECT2, args=[1])
    c.memory(c.vm, size=0x40000, flags=int(B.MemoryRegionFlag.LOG_DIRTY_PAGES))
    c.vm.get_dirty_log(0)
    c.vm.clear_dirty_log(0, 0, 64)


@row("KVM_ENABLE_CAP", ok=(errno.EINVAL,))
def _enable_cap(c: Ctx) -> None:
    c.vm.enable_cap(cap=B.Cap.HALT_POLL, args=[0]) if c.vm.check_extension(B.Cap.HALT_POLL) else None
    c.vcpu.enable_cap(cap=B.Cap.HYPERV_ENFORCE_CPUID, args=[0])


@row("KVM_GET_STATS_FD")
def _stats_fd(c: Ctx) -> None:
    c.own(c.vm.get_stats_fd())
    c.own(c.vcpu.get_stats_fd())


@row("KVM_GET_TSC_KHZ")
def _tsc_khz(c: Ctx) -> None:
    assert c.vcpu.get_tsc_khz() > 0
    c.vm.get_tsc_khz()


@row("KVM_SET_TSC_KHZ")
def _set_tsc_khz(c: Ctx) -> None:
    c.vcpu.set_tsc_khz(c.vcpu.get_tsc_khz())
    c.vm.set_tsc_khz(c.vm.get_tsc_khz())


@row("KVM_IRQFD")
def _irqfd(c: Ctx) -> None:
    vm = c.new_vm(irqchip=True)
    fd = c.eventfd()
    vm.irqfd(fd=fd, gsi=4)
    vm.irqfd(fd=fd, gsi=4, flags=C["KVM_IRQFD_FLAG_DEASSIGN"])


@row("KVM_IOEVENTFD")
def _ioeventfd(c: Ctx) -> None:
    fd = c.eventfd()
    c.vm.ioeventfd(addr=0x200000, len=4, fd=fd, flags=0)
    c.vm.ioeventfd(addr=0x200000, len=4, fd=fd, flags=C["KVM_IOEVENTFD_FLAG_DEASSIGN"])


@row("KVM_SET_GSI_ROUTING")
def _gsi_routing(c: Ctx) -> None:
    vm = c.new_vm(irqchip=True)
    vm.set_gsi_routing([{"gsi": 24, "type": C["KVM_IRQ_ROUTING_MSI"],
                         "u": {"msi": {"address_lo": 0xFEE00000, "data": 0x31}}}])


@row("KVM_GET_PIT", "KVM_SET_PIT", "KVM_GET_PIT2", "KVM_SET_PIT2", "KVM_REINJECT_CONTROL")
def _pit(c: Ctx) -> None:
    vm = c.new_vm(irqchip=True)
    vm.create_pit2(flags=0)
    vm.set_pit(vm.get_pit())
    vm.set_pit2(vm.get_pit2())
    vm.reinject_control(pit_reinject=0)


@row("KVM_RESET_DIRTY_RINGS")
def _dirty_rings(c: Ctx) -> None:
    vm = c.new_vm()
    vm.enable_cap(cap=B.Cap.DIRTY_LOG_RING, args=[0x10000])
    assert vm.reset_dirty_rings() == 0


@row("KVM_CREATE_DEVICE", "KVM_GET_DEVICE_ATTR", "KVM_SET_DEVICE_ATTR", "KVM_HAS_DEVICE_ATTR",
     ok=(errno.ENXIO, errno.EBADF, errno.ENODEV, errno.EINVAL))
def _device(c: Ctx) -> None:
    # vCPU attributes: KVM_VCPU_TSC_CTRL / KVM_VCPU_TSC_OFFSET
    c.vcpu.has_device_attr(C["KVM_VCPU_TSC_CTRL"], C["KVM_VCPU_TSC_OFFSET"])
    offset = c.vcpu.get_device_attr(C["KVM_VCPU_TSC_CTRL"], C["KVM_VCPU_TSC_OFFSET"])
    c.vcpu.set_device_attr(C["KVM_VCPU_TSC_CTRL"], C["KVM_VCPU_TSC_OFFSET"], offset)
    created = c.vm.create_device(type=C["KVM_DEV_TYPE_VFIO"])
    device = Device(created.fd, B, c.vm)
    with pytest.raises(KvmError) as e:  # no such VFIO file: documented failures only
        device.set_device_attr(C["KVM_DEV_VFIO_FILE"], C["KVM_DEV_VFIO_FILE_ADD"], (1 << 31) - 1)
    assert e.value.errno in (errno.EBADF, errno.EINVAL, errno.ENXIO)
    device.has_device_attr(C["KVM_DEV_VFIO_FILE"], C["KVM_DEV_VFIO_FILE_ADD"])
    # /dev/kvm (KVM_CAP_SYS_ATTRIBUTES, GET and HAS only): the XSAVE features a guest may be given
    if "system" in B.IOCTLS["KVM_GET_DEVICE_ATTR"].fd:
        assert c.sys.has_device_attr(C["KVM_X86_GRP_SYSTEM"], C["KVM_X86_XCOMP_GUEST_SUPP"]) is True
        xcr0 = int.from_bytes(c.sys.get_device_attr(C["KVM_X86_GRP_SYSTEM"], C["KVM_X86_XCOMP_GUEST_SUPP"]), "little")
        assert xcr0 & 0b11 == 0b11  # x87 and SSE state, always
    # The VM fd last: it needs KVM_CAP_VM_ATTRIBUTES, which x86 hosts without VM attributes do not report.
    c.vm.has_device_attr(0, 0)


# -- vcpu ---------------------------------------------------------------------------------------------

row("KVM_GET_REGS")(lambda c: c.vcpu.get_regs())
row("KVM_SET_REGS")(lambda c: c.vcpu.set_regs(c.vcpu.get_regs(), rip=0x1000))
row("KVM_GET_SREGS")(lambda c: c.vcpu.get_sregs())
row("KVM_SET_SREGS")(lambda c: c.vcpu.set_sregs(c.vcpu.get_sregs()))
row("KVM_GET_SREGS2")(lambda c: c.vcpu.get_sregs2())
row("KVM_SET_SREGS2")(lambda c: c.vcpu.set_sregs2(c.vcpu.get_sregs2()))
row("KVM_GET_FPU")(lambda c: c.vcpu.get_fpu())
row("KVM_SET_FPU")(lambda c: c.vcpu.set_fpu(c.vcpu.get_fpu()))
row("KVM_TRANSLATE")(lambda c: c.vcpu.translate(linear_address=0x1000))
row("KVM_INTERRUPT")(lambda c: c.vcpu.interrupt(irq=0x20))
row("KVM_SET_CPUID")(lambda c: c.vcpu.set_cpuid([]))
row("KVM_SET_CPUID2")(lambda c: c.vcpu.set_cpuid2(c.sys.get_supported_cpuid()))
row("KVM_GET_CPUID2")(lambda c: (c.vcpu.set_cpuid2(c.sys.get_supported_cpuid()), c.vcpu.get_cpuid2()))
row("KVM_SET_MSRS")(lambda c: c.vcpu.set_msrs({0x174: 0}) == 1 or pytest.fail("MSR not written"))
row("KVM_SET_SIGNAL_MASK")(lambda c: (c.vcpu.set_signal_mask([10]), c.vcpu.set_signal_mask(None)))
row("KVM_GET_MP_STATE")(lambda c: c.vcpu.get_mp_state())
row("KVM_SET_MP_STATE")(lambda c: c.vcpu.set_mp_state(c.vcpu.get_mp_state()))
row("KVM_GET_VCPU_EVENTS")(lambda c: c.vcpu.get_vcpu_events())
row("KVM_SET_VCPU_EVENTS")(lambda c: c.vcpu.set_vcpu_events(c.vcpu.get_vcpu_events()))
row("KVM_GET_DEBUGREGS")(lambda c: c.vcpu.get_debugregs())
row("KVM_SET_DEBUGREGS")(lambda c: c.vcpu.set_debugregs(c.vcpu.get_debugregs()))
row("KVM_GET_XSAVE")(lambda c: c.vcpu.get_xsave())
row("KVM_SET_XSAVE")(lambda c: c.vcpu.set_xsave(c.vcpu.get_xsave()))
row("KVM_GET_XSAVE2")(lambda c: c.vcpu.get_xsave2(c.vm.check_extension(B.Cap.XSAVE2)))
row("KVM_GET_XCRS")(lambda c: c.vcpu.get_xcrs())
row("KVM_SET_XCRS")(lambda c: c.vcpu.set_xcrs(c.vcpu.get_xcrs()))
row("KVM_SET_GUEST_DEBUG")(lambda c: c.vcpu.set_guest_debug(control=0))
row("KVM_GET_REG_LIST")(lambda c: c.vcpu.get_reg_list())
row("KVM_KVMCLOCK_CTRL", ok=(errno.EINVAL,))(lambda c: c.vcpu.kvmclock_ctrl())  # EINVAL: guest set no pvclock
row("KVM_SMI")(lambda c: c.vcpu.smi())
row("KVM_GET_NESTED_STATE")(lambda c: c.vcpu.get_nested_state())
row("KVM_SET_NESTED_STATE")(lambda c: c.vcpu.set_nested_state(c.vcpu.get_nested_state()))
row("KVM_PRE_FAULT_MEMORY")(lambda c: (c.memory(c.vm), c.vcpu.pre_fault_memory(gpa=0, size=0x1000)))
row("KVM_TPR_ACCESS_REPORTING", ok=(errno.EINVAL, errno.ENXIO))(lambda c: c.vcpu.tpr_access_reporting(enabled=0))
row("KVM_SET_VAPIC_ADDR", ok=(errno.EINVAL, errno.ENXIO))(lambda c: c.vcpu.set_vapic_addr(vapic_addr=0))
# ENOENT: x86 has no ONE_REG ids for this vCPU model; EINVAL: id of an unknown class
row("KVM_GET_ONE_REG", ok=(errno.ENOENT, errno.EINVAL))(lambda c: c.vcpu.get_one_reg(0x6030000000000000))
row("KVM_SET_ONE_REG", ok=(errno.ENOENT, errno.EINVAL))(lambda c: c.vcpu.set_one_reg(0x6030000000000000, 0))


@row("KVM_GET_LAPIC", "KVM_SET_LAPIC", "KVM_NMI")
def _lapic(c: Ctx) -> None:
    vcpu = c.new_vcpu(c.new_vm(irqchip=True))
    vcpu.set_lapic(vcpu.get_lapic())
    vcpu.nmi()


@row("KVM_X86_SETUP_MCE", "KVM_X86_SET_MCE")
def _mce(c: Ctx) -> None:
    supported = c.sys.x86_get_mce_cap_supported()
    c.vcpu.x86_setup_mce((supported & ~0xFF) | 1)
    c.vcpu.x86_set_mce(bank=0, status=1 << 63)  # MCI_STATUS_VAL, corrected error: recorded only


@row("KVM_RUN", ok=(errno.ENOSPC,))
def _run(c: Ctx) -> None:
    vm = c.new_vm()  # no in-kernel irqchip: hlt exits to user space
    c.memory(vm, code=b"\xf4")
    vcpu = c.new_vcpu(vm)
    sregs = vcpu.get_sregs()
    sregs.cs.base = 0
    sregs.cs.selector = 0
    vcpu.set_sregs(sregs)
    vcpu.set_regs(rip=0, rflags=2)
    vcpu.run()


# -- the parametrized test ----------------------------------------------------------------------------

COUNTS: dict[str, set[str]] = {"exercised": set(), "gated": set(), "other_arch": set(), "skipped": set()}


def _other_arch(spec: Any) -> bool:
    return spec.arches is not None and ARCH not in spec.arches


def _cap_present(ctx: Ctx, spec: Any) -> dict[str, bool]:
    """fd kind -> whether the ioctl's capability on that fd kind is reported where the runtime checks it."""
    vm_answers = ctx.sys.check_extension(B.Cap.CHECK_EXTENSION_VM) > 0
    out = {}
    for kind in spec.fd:
        capability = spec.capability_for(kind)
        owner = ctx.vm if kind != "system" and vm_answers else ctx.sys
        out[kind] = capability is None or owner.check_extension(C[capability]) > 0
    return out


@pytest.fixture()
def syscalls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """Every (fd, request) issued through kvm._fd, KVM_CHECK_EXTENSION excepted."""
    calls: list[tuple[int, int]] = []
    real = _fd._raw_ioctl
    check = B.IOCTLS["KVM_CHECK_EXTENSION"].number

    def spy(fd: int, request: int, arg: Any) -> int:
        if request != check:
            calls.append((fd, request))
        return int(real(fd, request, arg))

    monkeypatch.setattr(_fd, "_raw_ioctl", spy)
    return calls


@pytest.fixture(scope="module", autouse=True)
def _summary(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    total = len(B.IOCTLS)
    line = (f"ioctls: {total} total, {len(COUNTS['exercised'])} exercised, {len(COUNTS['gated'])} gated off by "
            f"this host, {len(COUNTS['other_arch'])} need another arch"
            + (f", {len(COUNTS['skipped'])} skipped ({', '.join(sorted(COUNTS['skipped']))})"
               if COUNTS["skipped"] else ""))
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is None:
        print(line)
        return
    if capture is not None:
        with capture.global_and_fixture_disabled():
            reporter.write_line("\n" + line)
    else:
        reporter.write_line("\n" + line)


def _generic_call(obj: Any, method: str) -> None:
    """Call a wrapper with the smallest arguments its signature takes (for other-arch and gated rows)."""
    import inspect

    fn = getattr(obj, method)
    args = []
    for p in inspect.signature(fn).parameters.values():
        if p.default is inspect.Parameter.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            args.append([] if "entries" in p.name or "indices" in p.name else 0)
    fn(*args)


@pytest.mark.parametrize("name", sorted(B.IOCTLS))
def test_ioctl(name: str, syscalls: list[tuple[int, int]]) -> None:
    spec = B.IOCTLS[name]
    ctx = Ctx()
    try:
        objects = {"system": lambda: ctx.sys, "vm": lambda: ctx.vm, "vcpu": lambda: ctx.vcpu,
                   "device": lambda: None}
        if _other_arch(spec):
            # another arch's ioctl: no generated wrapper, and the fd refuses it before issuing it
            assert name not in W.WRAPPERS and name not in ROWS
            for kind in spec.fd:
                obj = objects[kind]()
                if obj is None:
                    continue
                syscalls.clear()
                with pytest.raises(UnavailableError, match=f"{name} does not exist on {B.ARCH}"):
                    obj._ioctl(name)
                assert (obj.fileno(), spec.number) not in syscalls, "another arch's ioctl was issued"
            COUNTS["other_arch"].add(name)
            return
        method, _classes = W.WRAPPERS[name]
        present = _cap_present(ctx, spec)
        gated_off = {kind for kind, ok in present.items() if not ok}
        for kind in sorted(gated_off):
            obj = objects[kind]()
            if obj is None:
                continue
            syscalls.clear()
            with pytest.raises(CapabilityError) as e:
                _generic_call(obj, method)
            assert e.value.capability == spec.capability_for(kind) and name in str(e.value)
            assert (obj.fileno(), spec.number) not in syscalls, "a gated-off ioctl was issued"
        if gated_off == set(present):
            COUNTS["gated"].add(name)
            return
        assert name in ROWS, f"{name} has no test row in tests/test_ioctls.py"
        fn, ok = ROWS[name]
        try:
            fn(ctx)
        except CapabilityError as e:  # a row may end on an fd kind this host gates off: really absent?
            owner = ctx.sys if e.checked_on == "system" else ctx.vm
            assert owner.check_extension(C[e.capability]) == 0, e
        except KvmError as e:
            if e.errno == errno.ENOTTY and name not in ENOTTY_OK:
                pytest.fail(f"{e} (ENOTTY: the kernel does not know the ioctl)")
            if e.ioctl != name and e.errno not in ok:
                raise
            if e.errno not in ok:
                raise
        COUNTS["exercised"].add(name)
    finally:
        ctx.close()


def test_every_ioctl_has_a_row() -> None:
    missing = [n for n, s in B.IOCTLS.items() if not _other_arch(s) and n not in ROWS]
    assert not missing, f"no test row for {missing}"
    stray = sorted(set(ROWS) - set(B.IOCTLS))
    assert not stray, f"rows for ioctls not in the binding: {stray}"


def test_every_generated_wrapper_is_reachable_from_the_objects(system, vm):
    """`obj.ioctls` is the binding's generated mixin of the object's fd kind, bound to its fd and gates."""
    assert B is system.binding
    vcpu = vm.create_vcpu(0)
    for obj, mixin in ((system, W.SystemIoctls), (vm, W.VmIoctls), (vcpu, W.VcpuIoctls)):
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
