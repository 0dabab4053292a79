"""`mypy --strict` passes on the generated wrappers and on a sample of user code typed against them."""

from __future__ import annotations

import pathlib
import textwrap

import pytest

api = pytest.importorskip("mypy.api")

from kvm.generated import load  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
HOST = load().__name__.rsplit(".", 1)[1]  # e.g. linux_7_2_x86_64

# cffi ships no type information (and types-cffi is not a test dependency): its backend is Any to mypy.
CONFIG = """\
[mypy]
strict = True
python_version = 3.11
[mypy-_cffi_backend]
ignore_missing_imports = True
# The hand-written runtime is checked by its own tests; here it is only what the generated code imports.
[mypy-kvm]
follow_imports = silent
[mypy-kvm.*]
follow_imports = silent
[mypy-kvm.generated.*]
follow_imports = normal
"""

USER_CODE = f"""\
from __future__ import annotations

from kvm.generated import load
from kvm.generated.ioctls_{HOST} import CData, SystemIoctls, VcpuIoctls, VmIoctls


def boot(system: SystemIoctls, vm: VmIoctls, vcpu: VcpuIoctls, host_addr: int) -> dict[int, int]:
    binding = load()
    assert system.get_api_version() == 12
    slots: int = system.check_extension(binding.Cap.NR_MEMSLOTS)
    new_vm_fd: int = system.create_vm()
    vm.set_user_memory_region(slot=0, flags=0, guest_phys_addr=0, memory_size=0x1000, userspace_addr=host_addr)
    vcpu_fd: int = vm.create_vcpu(0)
    vcpu.set_cpuid2(system.get_supported_cpuid())
    regs: CData = vcpu.get_regs()
    regs.rip = 0x1000
    vcpu.set_regs(regs)
    vcpu.set_regs(rip=0, rflags=2)
    vcpu.set_signal_mask(None)
    bitmap: bytes = vm.get_dirty_log(0)
    indices: list[int] = system.get_msr_index_list()
    written: int = vcpu.set_msrs({{0x174: 0}})
    exit_code: int = vcpu.run()
    return vcpu.get_msrs(indices[:4]) if slots and new_vm_fd and vcpu_fd and bitmap and written + exit_code else {{}}
"""

WRONG_CODE = f"""\
from kvm.generated.ioctls_{HOST} import SystemIoctls, VcpuIoctls, VmIoctls


def wrong(system: SystemIoctls, vm: VmIoctls, vcpu: VcpuIoctls) -> None:
    vm.create_vcpu("0")
    msrs: list[int] = vcpu.get_msrs([0x10])
    system.get_msr_index_list(5)
"""


CAPS_CODE = f"""\
from __future__ import annotations

from kvm.generated.caps_{HOST} import SystemCaps, VcpuCaps, VmCaps, X2apicApi, X86DisableExits


def configure(system: SystemCaps, vm: VmCaps, vcpu: VcpuCaps) -> int:
    vcpus: int = system.max_vcpus.check()
    present: bool = vm.irqchip.check()
    features: X2apicApi = vm.x2apic_api.check()
    vm.x2apic_api.enable(features=features & X2apicApi.USE_32BIT_IDS)
    vm.x86_disable_exits.enable(exits=X86DisableExits.HLT | X86DisableExits.PAUSE)
    vm.dirty_log_ring.enable(size=1 << 16)
    vm.exception_payload.enable()
    vm.vm_copy_enc_context_from.enable(fd=vm.owner)
    vcpu.enforce_pv_feature_cpuid.enable(enable=False)
    names = [cap.NAME for cap in vm if cap.check()]
    return vcpus if present and names else 0
"""

WRONG_CAPS_CODE = f"""\
from kvm.generated.caps_{HOST} import SystemCaps, VcpuCaps, VmCaps


def wrong(system: SystemCaps, vm: VmCaps, vcpu: VcpuCaps) -> None:
    vcpu.x2apic_api.enable(features=1)
    vm.x2apic_api.enable(features="1")
    vm.dirty_log_ring.enable()
    flag: bool = system.max_vcpus.check()
"""


def _source_tree(tmp_path: pathlib.Path) -> pathlib.Path:
    """kvm/ with kvm/generated/ as installed, a tree of symlinks (the wheel's own typing, py.typed included,
    is checked from a real install in tests/test_packaging.py)."""
    src = tmp_path / "src"
    package = src / "kvm"
    package.mkdir(parents=True)  # src/ may exist already
    for path in (ROOT / "kvm").glob("*.py"):
        (package / path.name).symlink_to(path)
    (package / "generated").symlink_to(ROOT / "generated", target_is_directory=True)
    return src


def _mypy(tmp_path: pathlib.Path, *targets: str) -> tuple[str, int]:
    config = tmp_path / "mypy.ini"
    src = _source_tree(tmp_path)
    config.write_text(CONFIG.replace("strict = True\n", f"strict = True\nmypy_path = {src}\n"))
    out, err, status = api.run(["--config-file", str(config), "--cache-dir", str(tmp_path / "cache"),
                                "--no-error-summary", *targets])
    return out + err, status


def test_generated_wrappers_and_user_code_pass_strict(tmp_path: pathlib.Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "user_code.py").write_text(textwrap.dedent(USER_CODE))
    modules = [f"kvm.generated.{p.stem}" for p in sorted((ROOT / "generated").glob("ioctls_*.py"))] + ["user_code"]
    out, status = _mypy(tmp_path, *[arg for module in modules for arg in ("-m", module)])
    assert status == 0, out


def test_generated_caps_and_user_code_pass_strict(tmp_path: pathlib.Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "caps_code.py").write_text(CAPS_CODE)
    modules = [f"kvm.generated.{p.stem}" for p in sorted((ROOT / "generated").glob("caps_*.py"))] + ["caps_code"]
    out, status = _mypy(tmp_path, *[arg for module in modules for arg in ("-m", module)])
    assert status == 0, out


def test_strict_catches_capability_misuse(tmp_path: pathlib.Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "wrong_caps.py").write_text(WRONG_CAPS_CODE)
    out, status = _mypy(tmp_path, "-m", "wrong_caps")
    assert status == 1
    assert '"X2apicApiCap" has no attribute "enable"' in out  # a VM capability: no enable() on a vCPU
    assert 'Argument "features" to "enable" of "X2apicApiVmCap" has incompatible type "str"' in out
    assert 'Missing named argument "size" for "enable" of "DirtyLogRingVmCap"' in out
    assert 'Incompatible types in assignment (expression has type "int", variable has type "bool")' in out


def test_strict_catches_misuse(tmp_path: pathlib.Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "wrong_code.py").write_text(WRONG_CODE)
    out, status = _mypy(tmp_path, "-m", "wrong_code")
    assert status == 1
    assert 'Argument 1 to "create_vcpu" of "VmIoctls" has incompatible type "str"' in out
    assert "dict[int, int]" in out and "list[int]" in out
    assert 'Too many arguments for "get_msr_index_list"' in out


def test_hand_written_layer_passes_the_project_config(tmp_path: pathlib.Path) -> None:
    """`mypy kvm` with the settings in pyproject.toml (both run-loop implementations included)."""
    out, err, status = api.run(["--config-file", str(ROOT / "pyproject.toml"), "--cache-dir", str(tmp_path / "cache"),
                                str(ROOT / "kvm")])
    assert status == 0, out + err


def test_examples_pass_strict(tmp_path: pathlib.Path) -> None:
    out, err, status = api.run(["--strict", "--cache-dir", str(tmp_path / "cache"), str(ROOT / "examples")])
    assert status == 0, out + err


ERGONOMIC_CODE = """\
import kvm

with kvm.Kvm() as k, k.create_vm() as vm:
    mem = vm.add_memory(0, 0x10000)
    vcpu = vm.create_vcpu(0)
    exit = vcpu.run()
    reveal_type(vcpu.regs)
    reveal_type(k)
    reveal_type(vm)
    reveal_type(mem)
    reveal_type(vcpu)
    reveal_type(exit)
    if isinstance(exit, kvm.IoExit):
        reveal_type(exit.port)
        reveal_type(exit.data)
    if isinstance(exit, kvm.MmioExit):
        reveal_type(exit.is_write)
"""


def test_hand_written_layer_is_strict_and_its_main_calls_are_typed(tmp_path: pathlib.Path) -> None:
    """`mypy --strict` passes on kvm/, and what a user's first program touches is typed, not Any."""
    out, err, status = api.run(["--config-file", str(ROOT / "pyproject.toml"), "--strict",
                                "--cache-dir", str(tmp_path / "cache"), str(ROOT / "kvm")])
    assert status == 0, out + err
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "first.py").write_text(ERGONOMIC_CODE)
    out, _ = _mypy(tmp_path, "-m", "first")
    revealed = [line.split("Revealed type is ", 1)[1] for line in out.splitlines() if "Revealed type is" in line]
    assert revealed == ['"kvm.marshal.Record"', '"kvm.system.Kvm"', '"kvm.vm.Vm"', '"kvm.memory.GuestMemory"', '"kvm.vcpu.Vcpu"',
                        '"kvm.exits.Exit"', '"int"', '"memoryview[int]"', '"bool"'], out
