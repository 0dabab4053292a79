"""The path from nothing to a VM's first exit, and what `import kvm` loads for it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import kvm
from guests import KVM_PATH

# mov dx, 0x3f8; mov al, 'A'; 1: out dx, al; jmp 1b   (the guest of bench/baseline.c)
SERIAL_OUT = bytes([0xBA, 0xF8, 0x03, 0xB0, 0x41, 0xEE, 0xEB, 0xFD])


def _first_exit() -> tuple[int, int, int]:
    with kvm.Kvm(KVM_PATH) as k, k.create_vm() as vm:
        mem = vm.add_memory(0, 0x10000)
        mem.write(0x1000, SERIAL_OUT)
        vcpu = vm.create_vcpu(0)
        kvm.x86.setup_real_mode(vcpu, entry=0x1000)
        exit = vcpu.run()
        assert isinstance(exit, kvm.IoExit)
        return exit.port, exit.direction, bytes(exit.data)[0]


def test_vms_in_a_row_each_reach_their_first_exit(system):
    assert _first_exit() == (0x3F8, kvm.IoExit.OUT, ord("A"))
    assert _first_exit() == (0x3F8, kvm.IoExit.OUT, ord("A"))


def test_import_loads_what_the_first_vm_needs():
    code = """if True:
        import sys
        import kvm
        binding = kvm.system.DEFAULT_BINDING
        loaded = [name for name in ("kvm.system", "kvm.vm", "kvm.vcpu", "kvm.exits", "kvm.memory", "kvm.x86",
                                    binding.__name__, binding.__name__.replace(".linux_", "._ffi_linux_"))
                  if name in sys.modules]
        print(len(loaded), "ffi" in vars(binding), "STRUCTS" in vars(binding), "CAPS" in vars(binding))
        print(kvm.generated is sys.modules["kvm.generated"], kvm.Vm is kvm.vm.Vm, kvm.IoExit is kvm.exits.IoExit)
    """
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    # The layer, the default binding and its FFI are loaded; the record layouts and capability table are not.
    assert out.split("\n")[:2] == ["8 True False False", "True True True"]


def test_import_loads_neither_typing_nor_re(tmp_path):
    """`import kvm` imports neither `typing` nor what it drags in on 3.11 (re, contextlib), which cost a
    program ~10 ms. In a bare interpreter (-S: no site module, whose .pth files, such as an editable
    install's, import re and contextlib themselves), on a copy of the package, so that each is checked."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))
    try:
        import run  # (bench/run.py: the copy bench/ measures the import on)
    finally:
        del sys.path[0]
    env = run.package_copy(str(tmp_path), bytecode=False)
    code = ("import sys; import kvm; kvm.Kvm; print(sorted(m for m in "
            "('typing', 're', 'contextlib', 'kvm.caps', 'kvm.arm64') if m in sys.modules))")
    out = run.run_process([*run.BARE, "-c", code], env).stdout
    assert out == "[]\n"


def test_binding_tables_are_built_on_first_use():
    binding = kvm.generated.load("6.1", "arm64")
    structs = binding.STRUCTS
    assert binding.STRUCTS is structs and vars(binding)["STRUCTS"] is structs
    assert binding.CAPS["KVM_CAP_USER_MEMORY"].value == binding.CONSTANTS["KVM_CAP_USER_MEMORY"]
    with pytest.raises(AttributeError, match="NO_SUCH_TABLE"):
        binding.NO_SUCH_TABLE
    from kvm.generated import CAPS, STRUCTS  # the default binding's, through the index module

    default = kvm.system.DEFAULT_BINDING
    assert STRUCTS is default.STRUCTS and CAPS is default.CAPS
    region = "struct kvm_userspace_memory_region"
    assert STRUCTS[region].size == default.ffi.sizeof(region) == 32


def test_a_second_vm_issues_only_the_ioctls_of_its_first_exit(system, monkeypatch):
    """Capability answers and passed gates are shared by the fds of one device and VM type: the second VM
    of a process asks KVM_CHECK_EXTENSION nothing (its first exit makes the system calls C makes)."""
    _first_exit()
    issued: list[str] = []
    # every ioctl but KVM_RUN (the vCPU's Runner) goes through KvmFd._ioctl, but the gates' capability
    # queries: those through _query_cap, which asks the kernel what it was not asked before
    method, query = kvm._fd.KvmFd._ioctl, kvm._fd.KvmFd._query_cap

    def recording(self, name, arg=0):
        issued.append(name)
        return method(self, name, arg)

    def recording_query(self, value):
        if value not in self._cap_answers:
            issued.append("KVM_CHECK_EXTENSION")
        return query(self, value)

    monkeypatch.setattr(kvm._fd.KvmFd, "_ioctl", recording)
    monkeypatch.setattr(kvm._fd.KvmFd, "_query_cap", recording_query)
    _first_exit()
    assert issued == ["KVM_CREATE_VM", "KVM_SET_USER_MEMORY_REGION", "KVM_GET_VCPU_MMAP_SIZE",
                                         "KVM_CREATE_VCPU", "KVM_GET_SREGS", "KVM_SET_SREGS", "KVM_GET_REGS",
                                         "KVM_SET_REGS"]


def test_import_passes_only_the_gates_the_binding_alone_decides():
    binding = kvm.system.DEFAULT_BINDING
    fresh = object()  # (a gate key no fd has used: its state is made now)
    _answers, vm_passed = kvm._fd.shared_gate_state(("vm", fresh), binding, "vm")
    # creating a vCPU needs no capability; registering memory needs KVM_CAP_USER_MEMORY, which only the host
    # can answer
    assert "KVM_CREATE_VCPU" in vm_passed and "KVM_SET_USER_MEMORY_REGION" not in vm_passed
    _answers, vcpu_passed = kvm._fd.shared_gate_state(("vcpu", fresh), binding, "vcpu")
    if binding.ARCH == "x86_64":  # (arm64 and riscv64 have no KVM_GET_REGS: nothing is passed for it there)
        regs = binding.IOCTLS["KVM_GET_REGS"]
        assert vcpu_passed["KVM_GET_REGS"] == (regs.number, binding.ffi.sizeof("struct kvm_regs"))
    else:
        assert "KVM_GET_REGS" not in vcpu_passed
    assert all(binding.IOCTLS[name].capability_for(kind) is None
               for kind, passed in (("vm", vm_passed), ("vcpu", vcpu_passed)) for name in passed)


def _in_a_chroot(vm_binding_preloaded: bool) -> list[str]:
    """Make a VM and vCPU, optionally kvm.preload(), chroot into an empty directory (where no Python file can
    be read), then use what kvm loads on first use; the failures, as "what: error"."""
    import tempfile

    script = f"""if True:
        import os, sys, tempfile
        import kvm
        k = kvm.Kvm(); vm = k.create_vm(); vcpu = vm.create_vcpu(0)
        if {vm_binding_preloaded}:
            kvm.preload()
        os.chroot(sys.argv[1]); os.chdir("/")
        checks = {{
            "ioctls": lambda: vcpu.ioctls.get_regs().rflags,
            "caps": lambda: vm.caps,
            "enum": lambda: kvm.generated.ExitReason.IO,
            "structs": lambda: k.binding.STRUCTS["struct kvm_regs"].size,
            "unavailable": lambda: vm.ioctls._ioctl("KVM_NO_SUCH_IOCTL"),
        }}
        for what, check in checks.items():
            try:
                check()
            except kvm.UnavailableError:
                pass  # (what the unknown ioctl must raise)
            except Exception as exc:
                print(f"{{what}}: {{type(exc).__name__}}")
        vm.close(); k.close()
    """
    with tempfile.TemporaryDirectory() as empty:
        done = subprocess.run([sys.executable, "-c", script, empty], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def test_preload_leaves_nothing_to_import_after_a_chroot(system):
    if os.geteuid() != 0:
        pytest.skip("chroot needs root")
    assert _in_a_chroot(True) == []
    # (without it, what is loaded on first use cannot be: the check above is one that can fail)
    assert len(_in_a_chroot(False)) >= 3


def test_preload_takes_bindings_only():
    with pytest.raises(TypeError, match="binding must be a generated binding module"):
        kvm.preload(binding=kvm)
    kvm.preload(kvm.generated.load("6.1", "arm64"))  # another arch's: its tables and classes, nothing opened
    assert "kvm.arm64" in sys.modules
