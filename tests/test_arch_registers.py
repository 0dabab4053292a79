"""kvm.arm64 and kvm.riscv64: register ids, the records their methods hand to the kernel, their objects.

- Against gcc: for each bundled arm64 and riscv64 binding, the register ids the helpers compute and the
  bytes the methods marshal (`struct kvm_vcpu_init`, `struct kvm_one_reg` and the register it points to,
  `struct kvm_device_attr`, the finalize argument) are compared byte for byte with what the arch's gcc
  makes of the same headers through the kernel's own macros (KVM_REG_ARM_CORE_REG, ARM64_SYS_REG,
  KVM_REG_RISCV_CORE_REG, ...). The methods run on a stand-in for the kernel that records each ioctl's
  argument; the records it answers with (`struct kvm_reg_list`, register values) are gcc's bytes, which
  the methods must decode. The C is compiled to an object and read back as in test_gcc_oracle.py.
- Without KVM: argument checks and the ioctls each method issues, on the same stand-in.
- With /dev/kvm: objects of an arm64 or riscv64 binding have their arch's methods and no x86 ones (on
  any host); on an arm64 host, a guest stores to MMIO after vGICv3, init with PSCI 0.2, PC and PSTATE.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import pathlib
import subprocess
import sys
import tempfile
from collections.abc import Callable
from types import ModuleType
from typing import Any

import pytest

import kvm
import kvm.generated as g
from kvm import arm64, marshal, riscv64
from kvm.device import Attributes
from kvm_bindgen import inputs
from kvm_bindgen.arches import ARCHES, host_arch
from test_gcc_oracle import _flags, _run, compiler_for, elf_symbols

BINDINGS = [(kernel, arch) for kernel, _release, arch in g.BUNDLED if arch in ("arm64", "riscv64")]
EXAMPLE = pathlib.Path(__file__).resolve().parent.parent / "examples" / "arm64_mmio.py"

V128 = 0x0123456789ABCDEF_FEDCBA9876543210
C_V128 = "((((unsigned __int128)0x0123456789ABCDEFULL) << 64) | 0xFEDCBA9876543210ULL)"


# ---------------------------------------------------------------------------------------------
# A stand-in for the kernel behind the arch mixins


@dataclasses.dataclass
class Call:
    name: str
    record: bytes  # the argument's bytes (a record, or the int an `int *` points to); b"" for a by-value int
    addr: int = 0  # for a kvm_one_reg / kvm_device_attr: its `addr`,
    pointee: bytes = b""  # and the bytes there (the register, the attribute)


class FakeFd:
    """Issues no ioctl: records each one, then lets `answers[name](arg)` play the kernel's part."""

    _fd = -1  # (closed, for KvmFd.__del__)

    def __init__(self, binding: ModuleType, answers: dict[str, Callable[[Any], None]] | None = None,
                 calls: list[Call] | None = None, **attrs: Any) -> None:
        self._binding = binding
        self._ffi = binding.ffi
        self.answers = answers or {}
        self.calls = [] if calls is None else calls
        vars(self).update(attrs)

    def _ioctl(self, name: str, arg: Any = 0) -> int:
        ffi = self._ffi
        call = Call(name, bytes(ffi.buffer(arg)) if isinstance(arg, ffi.CData) else b"")
        kind = ffi.typeof(arg).item.cname if isinstance(arg, ffi.CData) else None
        if kind in ("struct kvm_one_reg", "struct kvm_device_attr") and arg.addr:
            size = marshal.reg_size(self._binding.CONSTANTS, int(arg.id)) if kind == "struct kvm_one_reg" else marshal.ATTR_BYTES
            call.addr, call.pointee = int(arg.addr), bytes(ffi.buffer(ffi.cast("char *", arg.addr), size))
        self.calls.append(call)
        if name in self.answers:
            self.answers[name](arg)
        return 0


class FakeArm64Vm(FakeFd, arm64.Arm64Vm):
    def create_device(self, type: int) -> Any:
        self.calls.append(Call("create_device", type.to_bytes(4, sys.byteorder)))
        return FakeDevice(self._binding, self.answers, self.calls)


class FakeDevice(FakeFd, Attributes):
    def close(self) -> None:
        self.calls.append(Call("close", b""))


class FakeArm64Vcpu(FakeFd, arm64.Arm64Vcpu):
    pass


class FakeRiscv64Vcpu(FakeFd, riscv64.Riscv64Vcpu):
    pass


def answer_reg_list(ffi: Any, data: bytes) -> Callable[[Any], None]:
    """KVM_GET_REG_LIST's answer: `data`, a whole `struct kvm_reg_list` (the request must have room for it)."""
    def answer(arg: Any) -> None:
        assert len(ffi.buffer(arg)) >= len(data)
        ffi.memmove(arg, data, len(data))
    return answer


def answer_registers(ffi: Any, values: dict[int, bytes]) -> Callable[[Any], None]:
    """KVM_GET_ONE_REG's answer: the bytes of register `id` written at `addr`."""
    def answer(arg: Any) -> None:
        ffi.memmove(ffi.cast("char *", arg.addr), values[int(arg.id)], len(values[int(arg.id)]))
    return answer


# ---------------------------------------------------------------------------------------------
# What gcc is asked: our bytes, and the C that must make the same


@dataclasses.dataclass(frozen=True)
class Check:
    label: str
    ours: bytes
    c_type: str
    c_init: str  # an initializer of c_type


def id_check(label: str, ours: int, c_expr: str) -> Check:
    return Check(label, ours.to_bytes(8, sys.byteorder), "__u64", f"(__u64)({c_expr})")


def call_checks(label: str, call: Call, c_type: str, c_init: str, pointee_type: str | None = None,
                pointee_init: str = "") -> list[Check]:
    """The record of `call` against `c_init` (whose `@ADDR`, a host pointer, is taken from the call),
    and the bytes it points to against `pointee_init`."""
    out = [Check(f"{label}: {c_type}", call.record, c_type, c_init.replace("@ADDR", f"{call.addr:#x}ULL"))]
    if pointee_type is not None:
        out.append(Check(f"{label}: the {pointee_type} at addr", call.pointee, pointee_type, pointee_init))
    return out


def reg_list_answer(ids: list[str]) -> tuple[str, str]:
    """A `struct kvm_reg_list` of `ids` (C expressions), laid out by gcc (a flexible array has no initializer)."""
    words = [f"[offsetof(struct kvm_reg_list, n) / 8] = {len(ids)}"]
    words += [f"[offsetof(struct kvm_reg_list, reg) / 8 + {i}] = {reg_id}" for i, reg_id in enumerate(ids)]
    return f"union {{ struct kvm_reg_list list; __u64 w[{1 + len(ids)}]; }}", f"{{ .w = {{ {', '.join(words)} }} }}"


def core_expr(name: str) -> str:
    """The id of arm64 core register `name` as api.rst and the selftests spell it."""
    size = "KVM_REG_SIZE_U128" if "vregs" in name else "KVM_REG_SIZE_U32" if name in ("fp_regs.fpsr", "fp_regs.fpcr") \
        else "KVM_REG_SIZE_U64"
    return f"KVM_REG_ARM64 | {size} | KVM_REG_ARM_CORE | KVM_REG_ARM_CORE_REG({name})"


ARM64_CORE = ([f"regs.regs[{i}]" for i in range(31)] + ["regs.sp", "regs.pc", "regs.pstate", "sp_el1", "elr_el1"]
              + [f"spsr[{i}]" for i in range(5)] + [f"fp_regs.vregs[{i}]" for i in range(32)]
              + ["fp_regs.fpsr", "fp_regs.fpcr"])
SYS_REGS = [(3, 0, 0, 0, 5), (3, 0, 1, 0, 0), (3, 0, 2, 0, 0), (3, 0, 12, 0, 0), (3, 3, 14, 0, 2), (3, 3, 14, 3, 1),
            (2, 0, 0, 0, 4), (3, 4, 1, 1, 0), (0, 0, 0, 0, 0), (3, 7, 15, 15, 7)]
SYS_REG_CONSTANTS = {"KVM_REG_ARM_TIMER_CTL": (3, 3, 14, 3, 1), "KVM_REG_ARM_PTIMER_CTL": (3, 3, 14, 2, 1),
                     "KVM_REG_ARM_PTIMER_CVAL": (3, 3, 14, 2, 2), "KVM_REG_ARM_PTIMER_CNT": (3, 3, 14, 0, 1)}


def arm64_checks(b: ModuleType) -> tuple[list[Check], dict[str, tuple[str, str]]]:
    """The checks of an arm64 binding, and the answers (label -> C type, initializer) the decoding needs."""
    c = b.CONSTANTS
    checks = [id_check(f"core {name}", arm64.core_reg_id(b, name), core_expr(name)) for name in ARM64_CORE]
    checks += [id_check(f"sys {enc}", arm64.sys_reg_id(b, *enc), f"ARM64_SYS_REG{enc}") for enc in SYS_REGS]
    checks += [id_check(f"sys {enc} is {name}", arm64.sys_reg_id(b, *enc), name) for name, enc in SYS_REG_CONSTANTS.items()]

    vm = FakeArm64Vm(b, {"KVM_ARM_PREFERRED_TARGET": lambda rec: setattr(rec, "target", c["KVM_ARM_TARGET_GENERIC_V8"])})
    vcpu = FakeArm64Vcpu(b, vm=vm)
    vcpu.init()
    vcpu.init([c["KVM_ARM_VCPU_POWER_OFF"]], target=c["KVM_ARM_TARGET_CORTEX_A57"], pmu=True, sve=True, ptrauth=True)
    vcpu.init([40, 223], target=0, psci_0_2=False)
    vcpu.pc = 0x4000_1000
    vcpu.set_core_reg("fp_regs.vregs[7]", V128)
    vcpu.set_core_reg("fp_regs.fpcr", 0x0300_0000)
    vcpu.finalize()
    vcpu.pmu_init(23)
    vm.create_vgic_v3(0x0800_0000, 0x080A_0000, nr_irqs=128)
    inits = [call for call in vcpu.calls if call.name == "KVM_ARM_VCPU_INIT"]
    sets = [call for call in vcpu.calls if call.name == "KVM_SET_ONE_REG"]
    attrs = [call for call in vcpu.calls + vm.calls if call.name == "KVM_SET_DEVICE_ATTR"]
    assert [call.name for call in vm.calls] == ["KVM_ARM_PREFERRED_TARGET", "create_device"] + ["KVM_SET_DEVICE_ATTR"] * 4

    init = "struct kvm_vcpu_init"
    checks += call_checks("init()", inits[0], init, "{ .target = KVM_ARM_TARGET_GENERIC_V8, "
                          ".features = { 1u << KVM_ARM_VCPU_PSCI_0_2 } }")
    checks += call_checks("init(every named feature)", inits[1], init, "{ .target = KVM_ARM_TARGET_CORTEX_A57, "
                          ".features = { (1u << KVM_ARM_VCPU_POWER_OFF) | (1u << KVM_ARM_VCPU_PSCI_0_2) | "
                          "(1u << KVM_ARM_VCPU_PMU_V3) | (1u << KVM_ARM_VCPU_SVE) | "
                          "(1u << KVM_ARM_VCPU_PTRAUTH_ADDRESS) | (1u << KVM_ARM_VCPU_PTRAUTH_GENERIC) } }")
    checks += call_checks("init([40, 223])", inits[2], init,
                          "{ .target = 0, .features = { [40 / 32] = 1u << (40 % 32), [223 / 32] = 1u << (223 % 32) } }")
    one_reg = "struct kvm_one_reg"
    checks += call_checks("pc = ", sets[0], one_reg, f"{{ .id = {core_expr('regs.pc')}, .addr = @ADDR }}",
                          "__u64", "0x40001000")
    checks += call_checks("set_core_reg(vregs[7])", sets[1], one_reg,
                          f"{{ .id = {core_expr('fp_regs.vregs[7]')}, .addr = @ADDR }}", "unsigned __int128", C_V128)
    checks += call_checks("set_core_reg(fpcr)", sets[2], one_reg,
                          f"{{ .id = {core_expr('fp_regs.fpcr')}, .addr = @ADDR }}", "__u32", "0x03000000")
    finalize = next(call for call in vcpu.calls if call.name == "KVM_ARM_VCPU_FINALIZE")
    checks += call_checks("finalize()", finalize, "int", "KVM_ARM_VCPU_SVE")
    attr = "struct kvm_device_attr"
    irq = dataclasses.replace(attrs[0], pointee=attrs[0].pointee[:4])  # the kernel reads an int
    checks += call_checks("pmu_init: irq", irq, attr, "{ .group = KVM_ARM_VCPU_PMU_V3_CTRL, "
                          ".attr = KVM_ARM_VCPU_PMU_V3_IRQ, .addr = @ADDR }", "int", "23")
    checks += call_checks("pmu_init: init", attrs[1], attr,
                          "{ .group = KVM_ARM_VCPU_PMU_V3_CTRL, .attr = KVM_ARM_VCPU_PMU_V3_INIT }")
    checks.append(Check("create_vgic_v3: device type", vm.calls[1].record, "__u32", "KVM_DEV_TYPE_ARM_VGIC_V3"))
    checks += call_checks("create_vgic_v3: distributor", attrs[2], attr, "{ .group = KVM_DEV_ARM_VGIC_GRP_ADDR, "
                          ".attr = KVM_VGIC_V3_ADDR_TYPE_DIST, .addr = @ADDR }", "__u64", "0x08000000")
    checks += call_checks("create_vgic_v3: redistributors", attrs[3], attr, "{ .group = KVM_DEV_ARM_VGIC_GRP_ADDR, "
                          ".attr = KVM_VGIC_V3_ADDR_TYPE_REDIST, .addr = @ADDR }", "__u64", "0x080A0000")
    nr_irqs = dataclasses.replace(attrs[4], pointee=attrs[4].pointee[:4])  # the kernel reads a u32
    checks += call_checks("create_vgic_v3: nr_irqs", nr_irqs, attr,
                          "{ .group = KVM_DEV_ARM_VGIC_GRP_NR_IRQS, .addr = @ADDR }", "__u32", "128")
    checks += call_checks("create_vgic_v3: init", attrs[5], attr,
                          "{ .group = KVM_DEV_ARM_VGIC_GRP_CTRL, .attr = KVM_DEV_ARM_VGIC_CTRL_INIT }")

    answers = {
        "reg list": reg_list_answer([core_expr("regs.pc"), "ARM64_SYS_REG(3, 0, 0, 0, 5)", "KVM_REG_ARM_TIMER_CNT"]),
        "v7": ("unsigned __int128", C_V128),
    }
    return checks, answers


def arm64_decode(b: ModuleType, answers: dict[str, bytes]) -> None:
    """The methods read gcc's records as the kernel would write them."""
    ffi = b.ffi
    vcpu = FakeArm64Vcpu(b, {"KVM_GET_REG_LIST": answer_reg_list(ffi, answers["reg list"]),
                             "KVM_GET_ONE_REG": answer_registers(ffi, {arm64.vreg(b, 7): answers["v7"]})})
    assert kvm.Vcpu.reg_list(vcpu) == [arm64.core_reg_id(b, "pc"), arm64.sys_reg_id(b, 3, 0, 0, 0, 5),
                                       b.CONSTANTS["KVM_REG_ARM_TIMER_CNT"]]
    assert vcpu.get_core_reg("fp_regs.vregs[7]") == V128


def riscv_fields(ffi: Any, ctype: str) -> list[str]:
    return [name for name, _ in ffi.typeof(ctype).fields if not name.startswith("__pad")]


def riscv_extensions(b: ModuleType, kind: str) -> list[str]:
    prefix = f"KVM_RISCV_{kind}_EXT_"
    return sorted(name for name in b.CONSTANTS if name.startswith(prefix) and name != prefix + "MAX")


def riscv_ext_expr(kind: str, ext: str) -> str:
    return f"KVM_REG_RISCV | KVM_REG_SIZE_U64 | KVM_REG_RISCV_{kind}_EXT | KVM_REG_RISCV_{kind}_SINGLE | {ext}"


def riscv64_checks(b: ModuleType) -> tuple[list[Check], dict[str, tuple[str, str]]]:
    ffi = b.ffi
    ulong = "KVM_REG_RISCV | KVM_REG_SIZE_U64"  # KVM_REG_SIZE_ULONG of the selftests, on a 64-bit arch
    checks = [id_check(f"core regs.{name}", riscv64.core_reg_id(b, name), f"{ulong} | KVM_REG_RISCV_CORE | "
                       f"KVM_REG_RISCV_CORE_REG(regs.{name})") for name in riscv_fields(ffi, "struct user_regs_struct")]
    checks.append(id_check("core mode", riscv64.core_reg_id(b, "mode"),
                           f"{ulong} | KVM_REG_RISCV_CORE | KVM_REG_RISCV_CORE_REG(mode)"))
    for ctype, macro in (("struct kvm_riscv_csr", "KVM_REG_RISCV_CSR_GENERAL | KVM_REG_RISCV_CSR_REG"),
                         ("struct kvm_riscv_aia_csr", "KVM_REG_RISCV_CSR_AIA | KVM_REG_RISCV_CSR_AIA_REG"),
                         ("struct kvm_riscv_smstateen_csr",
                          "KVM_REG_RISCV_CSR_SMSTATEEN | KVM_REG_RISCV_CSR_SMSTATEEN_REG")):
        checks += [id_check(f"csr {name}", riscv64.csr_reg_id(b, name), f"{ulong} | KVM_REG_RISCV_CSR | {macro}({name})")
                   for name in riscv_fields(ffi, ctype)]
    checks += [id_check(f"timer {name}", riscv64.timer_reg_id(b, name), "KVM_REG_RISCV | KVM_REG_SIZE_U64 | "
                        f"KVM_REG_RISCV_TIMER | KVM_REG_RISCV_TIMER_REG({name})")
               for name in riscv_fields(ffi, "struct kvm_riscv_timer")]
    checks += [id_check(f"config {name}", riscv64.config_reg_id(b, name),
                        f"{ulong} | KVM_REG_RISCV_CONFIG | KVM_REG_RISCV_CONFIG_REG({name})")
               for name in riscv_fields(ffi, "struct kvm_riscv_config")]
    checks += [id_check(f"isa {ext}", riscv64.isa_ext_id(b, ext), riscv_ext_expr("ISA", ext))
               for ext in riscv_extensions(b, "ISA")]
    checks += [id_check(f"sbi {ext}", riscv64.sbi_ext_id(b, ext), riscv_ext_expr("SBI", ext))
               for ext in riscv_extensions(b, "SBI")]

    vcpu = FakeRiscv64Vcpu(b)
    vcpu.pc = 0x8020_0000
    vcpu.enable_isa_ext("ZBB", False)
    vcpu.enable_sbi_ext("HSM")
    one_reg = "struct kvm_one_reg"
    checks += call_checks("pc = ", vcpu.calls[0], one_reg, f"{{ .id = {ulong} | KVM_REG_RISCV_CORE | "
                          "KVM_REG_RISCV_CORE_REG(regs.pc), .addr = @ADDR }", "unsigned long", "0x80200000")
    checks += call_checks("enable_isa_ext(ZBB, False)", vcpu.calls[1], one_reg,
                          f"{{ .id = {riscv_ext_expr('ISA', 'KVM_RISCV_ISA_EXT_ZBB')}, .addr = @ADDR }}",
                          "unsigned long", "0")
    checks += call_checks("enable_sbi_ext(HSM)", vcpu.calls[2], one_reg,
                          f"{{ .id = {riscv_ext_expr('SBI', 'KVM_RISCV_SBI_EXT_HSM')}, .addr = @ADDR }}",
                          "unsigned long", "1")
    answers = {"reg list": reg_list_answer([
                   f"{ulong} | KVM_REG_RISCV_CORE | KVM_REG_RISCV_CORE_REG(regs.pc)",
                   riscv_ext_expr("ISA", "KVM_RISCV_ISA_EXT_A"), riscv_ext_expr("ISA", "KVM_RISCV_ISA_EXT_ZBB"),
                   riscv_ext_expr("SBI", "KVM_RISCV_SBI_EXT_HSM"),
                   f"{ulong} | KVM_REG_RISCV_ISA_EXT | KVM_REG_RISCV_ISA_MULTI_EN | 0", riscv_ext_expr("ISA", "200")]),
               "one": ("unsigned long", "1"), "zero": ("unsigned long", "0")}
    return checks, answers


def riscv64_decode(b: ModuleType, answers: dict[str, bytes]) -> None:
    ffi = b.ffi
    values = {riscv64.isa_ext_id(b, "A"): answers["one"], riscv64.isa_ext_id(b, "ZBB"): answers["zero"],
              riscv64.isa_ext_id(b, 0) | 200: answers["one"]}  # an extension newer than the binding
    vcpu = FakeRiscv64Vcpu(b, {"KVM_GET_REG_LIST": answer_reg_list(ffi, answers["reg list"]),
                               "KVM_GET_ONE_REG": answer_registers(ffi, values)})
    assert vcpu.isa_extensions() == {"A": True, "ZBB": False, "200": True}
    assert [call.name for call in vcpu.calls] == ["KVM_GET_REG_LIST"] + ["KVM_GET_ONE_REG"] * 3


# ---------------------------------------------------------------------------------------------
# Asking gcc


@dataclasses.dataclass
class OracleResult:
    compared: int
    mismatches: list[tuple[str, str, str]]  # (label, ours hex, gcc's hex)
    answers: dict[str, bytes]  # gcc's records for the methods to decode


@functools.cache
def oracle(kernel: str, arch: str) -> OracleResult:
    compiler = compiler_for(ARCHES[arch])
    if isinstance(compiler, str):
        pytest.skip(compiler)
    try:
        tree = inputs.bundled_tree(inputs.load_manifest()[kernel], arch)
    except inputs.InputError as e:
        pytest.skip(f"headers not available: {e}")
    checks, answers = (arm64_checks if arch == "arm64" else riscv64_checks)(g.load(kernel, arch))
    lines = ["#include <stddef.h>", "#include <linux/kvm.h>", "#include <asm/kvm.h>"]
    lines += [f"const {check.c_type} oracle_c{i} = {check.c_init};" for i, check in enumerate(checks)]
    lines += [f"const {c_type} oracle_a{i} = {c_init};" for i, (c_type, c_init) in enumerate(answers.values())]
    with tempfile.TemporaryDirectory(prefix="arch-registers-") as workdir:
        pathlib.Path(workdir, "regs.c").write_text("\n".join(lines) + "\n")
        proc = _run([compiler.command, *_flags(compiler, tree), "-c", "regs.c", "-o", "regs.o"], workdir)
        assert proc.returncode == 0, f"{compiler.command} failed:\n{proc.stderr[:4000]}"
        symbols = elf_symbols(pathlib.Path(workdir, "regs.o").read_bytes())
    mismatches = [(check.label, check.ours.hex(), symbols[f"oracle_c{i}"].hex()) for i, check in enumerate(checks)
                  if check.ours != symbols[f"oracle_c{i}"]]
    return OracleResult(len(checks), mismatches, {label: symbols[f"oracle_a{i}"] for i, label in enumerate(answers)})


@pytest.mark.parametrize(("kernel", "arch"), BINDINGS, ids=[f"{k}-{a}" for k, a in BINDINGS])
def test_ids_and_records_agree_with_gcc(kernel: str, arch: str) -> None:
    result = oracle(kernel, arch)
    shown = "\n".join(f"  {label}: ours {ours}, gcc {theirs}" for label, ours, theirs in result.mismatches[:40])
    assert not result.mismatches, f"{len(result.mismatches)} of {result.compared} differ from gcc's:\n{shown}"


@pytest.mark.parametrize(("kernel", "arch"), BINDINGS, ids=[f"{k}-{a}" for k, a in BINDINGS])
def test_methods_decode_gcc_records(kernel: str, arch: str) -> None:
    (arm64_decode if arch == "arm64" else riscv64_decode)(g.load(kernel, arch), oracle(kernel, arch).answers)


def test_arm64_guest_code_is_what_the_assembler_makes() -> None:
    """The scenario's hand-assembled instructions, against the arm64 assembler (through gcc)."""
    compiler = compiler_for(ARCHES["arm64"])
    if isinstance(compiler, str):
        pytest.skip(compiler)
    source = ".data\n.globl guest\nguest:\n" + "\n".join(asm for _, asm in GUEST) + "\n.size guest, . - guest\n"
    with tempfile.TemporaryDirectory(prefix="arm64-guest-") as workdir:
        pathlib.Path(workdir, "guest.S").write_text(source)
        proc = _run([compiler.command, "-c", "guest.S", "-o", "guest.o"], workdir)
        assert proc.returncode == 0, proc.stderr
        assert elf_symbols(pathlib.Path(workdir, "guest.o").read_bytes())["guest"] == GUEST_CODE


# ---------------------------------------------------------------------------------------------
# The Python side, without KVM

B = g.load("7.2", "arm64")
R = g.load("7.2", "riscv64")


def test_arm64_core_register_names() -> None:
    for short, full in (("pc", "regs.pc"), ("sp", "regs.sp"), ("pstate", "regs.pstate"), ("regs[3]", "regs.regs[3]")):
        assert arm64.core_reg_id(B, short) == arm64.core_reg_id(B, full)
    assert [arm64.x(B, n) for n in range(31)] == [arm64.core_reg_id(B, f"regs.regs[{n}]") for n in range(31)]
    assert arm64.vreg(B, 31) == arm64.core_reg_id(B, "fp_regs.vregs[31]")
    sizes = {name: marshal.reg_size(B.CONSTANTS, arm64.core_reg_id(B, name)) for name in ("pc", "fp_regs.vregs[0]", "fp_regs.fpsr")}
    assert sizes == {"pc": 8, "fp_regs.vregs[0]": 16, "fp_regs.fpsr": 4}
    for bad, error in (("regs", "not one register"), ("fp_regs", "not one register"), ("fp_regs.vregs", "not one"),
                       ("regs[31]", "no element 31"), ("spsr[5]", "no element 5"), ("x0", "no member 'x0'"),
                       ("regs.pc.lo", "no member"), ("pc[0]", "no element 0"), ("", "no member")):
        with pytest.raises(ValueError, match=error):
            arm64.core_reg_id(B, bad)
    with pytest.raises(TypeError, match="name must be a str"):
        arm64.core_reg_id(B, 3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"n must be in 0\.\.30, not 31"):
        arm64.x(B, 31)
    with pytest.raises(TypeError, match="n must be an int"):
        arm64.vreg(B, True)


def test_arm64_sys_reg_fields_are_checked() -> None:
    assert arm64.sys_reg_id(B, 3, 3, 14, 3, 1) == B.CONSTANTS["KVM_REG_ARM_TIMER_CTL"]
    for args, error in (((4, 0, 0, 0, 0), r"op0 must be in 0\.\.3, not 4"), ((3, 8, 0, 0, 0), r"op1 must be in 0\.\.7"),
                        ((3, 0, 16, 0, 0), r"crn must be in 0\.\.15"), ((3, 0, 0, -1, 0), r"crm must be in 0\.\.15"),
                        ((3, 0, 0, 0, 8), r"op2 must be in 0\.\.7")):
        with pytest.raises(ValueError, match=error):
            arm64.sys_reg_id(B, *args)
    with pytest.raises(TypeError, match="op0 must be an int"):
        arm64.sys_reg_id(B, 3.0, 0, 0, 0, 0)  # type: ignore[arg-type]


def test_arm64_vcpu_init_record() -> None:
    c = B.CONSTANTS
    record = arm64.vcpu_init_record(B, 5, [c["KVM_ARM_VCPU_POWER_OFF"]], sve=True)
    assert (record.target, list(record.features)) == (5, [1 << c["KVM_ARM_VCPU_POWER_OFF"] | 1 << c["KVM_ARM_VCPU_PSCI_0_2"]
                                                          | 1 << c["KVM_ARM_VCPU_SVE"]] + [0] * 6)
    assert arm64.feature_bits(B, psci_0_2=False) == []
    assert arm64.feature_bits(B, psci_0_2=False, ptrauth=True) == sorted(
        [c["KVM_ARM_VCPU_PTRAUTH_ADDRESS"], c["KVM_ARM_VCPU_PTRAUTH_GENERIC"]])
    for kwargs, exc, error in (({"target": -1}, ValueError, "target must be in"),
                               ({"target": 1 << 32}, ValueError, "target must be in"),
                               ({"target": "5"}, TypeError, "target must be an int"),
                               ({"features": [224]}, ValueError, r"features\[0\] must be in 0\.\.223, not 224"),
                               ({"features": [2, "x"]}, TypeError, r"features\[1\] must be an int"),
                               ({"features": "ab"}, TypeError, "features must be an iterable"),
                               ({"features": 3}, TypeError, "features must be an iterable"),
                               ({"pmu": 1}, TypeError, "pmu must be a bool"),
                               ({"psci_0_2": None}, TypeError, "psci_0_2 must be a bool")):
        with pytest.raises(exc, match=error):
            arm64.vcpu_init_record(B, **{"target": 0, **kwargs})


def test_arm64_methods_issue_their_ioctls() -> None:
    c = B.CONSTANTS
    vm = FakeArm64Vm(B, {"KVM_ARM_PREFERRED_TARGET": lambda rec: setattr(rec, "target", 7)})
    vcpu = FakeArm64Vcpu(B, vm=vm)
    vcpu.init(target=3)
    assert (vm.calls, [call.name for call in vcpu.calls]) == ([], ["KVM_ARM_VCPU_INIT"])
    vcpu.init(pmu=True)
    assert [call.name for call in vm.calls] == ["KVM_ARM_PREFERRED_TARGET"]
    record = B.ffi.new("struct kvm_vcpu_init *")
    B.ffi.memmove(record, vcpu.calls[-1].record, B.ffi.sizeof(record[0]))
    assert record.target == 7
    with pytest.raises(TypeError, match="feature must be an int"):
        vcpu.finalize("sve")  # type: ignore[arg-type]
    vcpu.finalize(c["KVM_ARM_VCPU_SVE"])
    assert vcpu.calls[-1].record == c["KVM_ARM_VCPU_SVE"].to_bytes(4, sys.byteorder)
    with pytest.raises(ValueError, match="irq must be in"):
        vcpu.pmu_init(-1)
    with pytest.raises(ValueError, match="must be in"):
        vcpu.pc = 1 << 64
    with pytest.raises(ValueError, match=r"must be in 0\.\.2\*\*32-1"):
        vcpu.set_core_reg("fp_regs.fpsr", 1 << 32)
    assert len(vcpu.calls) == 3  # none of the refused calls reached the kernel

    registers = {arm64.core_reg_id(B, "pc"): (0x1234).to_bytes(8, sys.byteorder)}
    vcpu = FakeArm64Vcpu(B, {"KVM_GET_ONE_REG": answer_registers(B.ffi, registers)})
    assert vcpu.pc == 0x1234


def test_arm64_vgic_v3_is_created_set_up_and_initialized_in_order() -> None:
    c = B.CONSTANTS
    vm = FakeArm64Vm(B)
    vm.create_vgic_v3(0x0800_0000, 0x080A_0000)
    groups = [(int.from_bytes(call.record[4:8], sys.byteorder), int.from_bytes(call.record[8:16], sys.byteorder))
              for call in vm.calls[1:]]
    assert groups == [(c["KVM_DEV_ARM_VGIC_GRP_ADDR"], c["KVM_VGIC_V3_ADDR_TYPE_DIST"]),
                      (c["KVM_DEV_ARM_VGIC_GRP_ADDR"], c["KVM_VGIC_V3_ADDR_TYPE_REDIST"]),
                      (c["KVM_DEV_ARM_VGIC_GRP_CTRL"], c["KVM_DEV_ARM_VGIC_CTRL_INIT"])]
    for kwargs, error in (({"dist_addr": -1}, "dist_addr must be in"), ({"redist_addr": 1 << 64}, "redist_addr must be in"),
                          ({"nr_irqs": 1 << 32}, "nr_irqs must be in")):
        vm = FakeArm64Vm(B)
        with pytest.raises(ValueError, match=error):
            vm.create_vgic_v3(**{"dist_addr": 0, "redist_addr": 0x10000, **kwargs})
        assert vm.calls == []

    def refuse(arg: Any) -> None:
        raise kvm.KvmError("KVM_SET_DEVICE_ATTR", "device", 22)

    vm = FakeArm64Vm(B, {"KVM_SET_DEVICE_ATTR": refuse})
    with pytest.raises(kvm.KvmError):
        vm.create_vgic_v3(0x0800_0000, 0x080A_0000)
    assert [call.name for call in vm.calls] == ["create_device", "KVM_SET_DEVICE_ATTR", "close"]


def test_riscv64_register_ids() -> None:
    c = R.CONSTANTS
    assert riscv64.core_reg_id(R, "a0") == riscv64.core_reg_id(R, "regs.a0")
    assert riscv64.core_reg_id(R, "pc") & 0xFF == 0 and riscv64.core_reg_id(R, "ra") & 0xFF == 1
    assert riscv64.isa_ext_id(R, "zbb") == riscv64.isa_ext_id(R, "KVM_RISCV_ISA_EXT_ZBB") \
        == riscv64.isa_ext_id(R, c["KVM_RISCV_ISA_EXT_ZBB"])
    assert riscv64.sbi_ext_id(R, "hsm") == riscv64.sbi_ext_id(R, c["KVM_RISCV_SBI_EXT_HSM"])
    for call, exc, error in ((lambda: riscv64.isa_ext_id(R, "MAX"), ValueError, "no ISA extension 'MAX'"),
                             (lambda: riscv64.isa_ext_id(R, "ZZZ"), ValueError, "no ISA extension 'ZZZ'"),
                             (lambda: riscv64.isa_ext_id(R, c["KVM_RISCV_ISA_EXT_MAX"]), ValueError, "ext must be in"),
                             (lambda: riscv64.sbi_ext_id(R, -1), ValueError, "ext must be in"),
                             (lambda: riscv64.sbi_ext_id(R, 1.0), TypeError, "ext must be an int"),
                             (lambda: riscv64.csr_reg_id(R, "mstatus"), ValueError, "kvm_riscv_csr has no member"),
                             (lambda: riscv64.core_reg_id(R, "regs"), ValueError, "not one register"),
                             (lambda: riscv64.timer_reg_id(R, "period"), ValueError, "no member 'period'")):
        with pytest.raises(exc, match=error):
            call()


def test_riscv64_methods_check_their_arguments() -> None:
    vcpu = FakeRiscv64Vcpu(R)
    with pytest.raises(TypeError, match="enable must be a bool"):
        vcpu.enable_isa_ext("V", 1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no SBI extension"):
        vcpu.enable_sbi_ext("NOPE")
    with pytest.raises(TypeError, match="must be an int"):
        vcpu.pc = "0x1000"  # type: ignore[assignment]
    assert vcpu.calls == []


# ---------------------------------------------------------------------------------------------
# Objects of an arm64 or riscv64 binding, on /dev/kvm


@pytest.fixture
def kvm_device(system: Any) -> str:
    """The path of a usable /dev/kvm (the test is skipped without one)."""
    return system.path  # type: ignore[no-any-return]


@pytest.mark.parametrize("arch", ["arm64", "riscv64"])
def test_the_classes_of_a_foreign_binding_have_their_arch_methods(arch: str) -> None:
    """The classes kvm composes for another arch's binding (objects of it cannot be made on this host:
    `Kvm(binding=...)` refuses another arch) have that arch's methods and lack the others'."""
    binding = g.load("7.2", arch)
    vm_class, vcpu_class = kvm.arches.for_binding(kvm.Vm, binding), kvm.arches.for_binding(kvm.Vcpu, binding)
    mine = {"arm64": (["preferred_target", "create_vgic_v3"], ["init", "finalize", "pmu_init", "pc", "pstate",
                                                               "get_core_reg", "set_core_reg"]),
            "riscv64": ([], ["pc", "isa_extensions", "enable_isa_ext", "enable_sbi_ext"])}[arch]
    assert all(hasattr(vm_class, name) for name in mine[0]), mine[0]
    assert all(hasattr(vcpu_class, name) for name in mine[1] + ["get_one_reg", "set_one_reg", "reg_list"])
    assert not any(hasattr(vm_class, name) for name in ("set_tss_addr", "create_pit2", "get_clock"))
    assert not any(hasattr(vcpu_class, name) for name in ("lapic", "sregs", "msrs", "get_msrs", "get_cpuid",
                                                          "setup_long_mode"))
    if arch == "riscv64":
        assert not any(hasattr(vcpu_class, name) for name in ("init", "finalize", "pstate"))
        assert not hasattr(vm_class, "preferred_target")
    absent, ioctl = {"arm64": ("regs", "KVM_GET_REGS"), "riscv64": ("fpu", "KVM_GET_FPU")}[arch]
    with pytest.raises(AttributeError, match=f"Vcpu.{absent} is not available: {ioctl} does not exist on {arch}"):
        getattr(vcpu_class, absent)


def test_objects_of_the_host_binding_lack_the_arm64_methods(kvm_device: str) -> None:
    with kvm.Kvm(kvm_device) as system, system.create_vm() as vm:
        if system.arch == "arm64":
            pytest.skip("this host is arm64")
        assert not any(hasattr(type(vm), name) for name in ("preferred_target", "create_vgic_v3"))
        vcpu_class = type(vm.create_vcpu(0))
        assert not any(hasattr(vcpu_class, name) for name in ("init", "finalize", "pmu_init", "pstate"))


# ---------------------------------------------------------------------------------------------
# A guest on an arm64 host

GUEST = [
    (0xD2A20000, "movz x0, #0x1000, lsl #16"),  # x0 = MMIO
    (0xD28ACF01, "movz x1, #0x5678"),
    (0xF2A24681, "movk x1, #0x1234, lsl #16"),  # x1 = 0x12345678
    (0xB9000001, "str w1, [x0]"),
    (0x14000000, "b ."),
]
GUEST_CODE = b"".join(word.to_bytes(4, "little") for word, _ in GUEST)
MMIO = 0x1000_0000
PSTATE_EL1H_DAIF = 0x5 | 0xF << 6  # EL1 on SP_EL1, debug, SError, IRQ and FIQ masked


def test_arm64_guest_stores_to_mmio(kvm_device: str) -> None:
    if host_arch() != "arm64":
        pytest.skip(f"runs an arm64 guest: this host is {os.uname().machine}")
    with kvm.Kvm(kvm_device) as system, system.create_vm() as vm:
        memory = vm.add_memory(0x0, 0x10000)
        memory.write(0x1000, GUEST_CODE)
        vcpu = vm.create_vcpu(0)
        vcpu.init(psci_0_2=True)
        gic = vm.create_vgic_v3(0x0800_0000, 0x080A_0000)
        assert isinstance(gic, kvm.Device)
        vcpu.pc = 0x1000
        vcpu.set_one_reg(arm64.core_reg_id(vcpu.binding, "pstate"), PSTATE_EL1H_DAIF)
        assert (vcpu.get_core_reg("pc"), vcpu.pstate) == (0x1000, PSTATE_EL1H_DAIF)
        assert vcpu.get_one_reg(vcpu.binding.CONSTANTS["KVM_REG_ARM_PSCI_VERSION"]) >= 2 << 16  # PSCI 0.2 or later
        assert arm64.core_reg_id(vcpu.binding, "pc") in vcpu.reg_list()
        exit = vcpu.run()
        assert isinstance(exit, kvm.MmioExit), exit
        assert (exit.phys_addr, exit.len, exit.is_write, exit.value) == (MMIO, 4, True, 0x12345678)
        assert vcpu.pc == 0x1000 + 4 * 3  # stopped at the store


def test_arm64_example(request: pytest.FixtureRequest) -> None:
    if host_arch() == "arm64":
        request.getfixturevalue("kvm_device")  # (skips without KVM)
    proc = subprocess.run([sys.executable, str(EXAMPLE)], capture_output=True, text=True, timeout=60)
    if host_arch() == "arm64":
        assert (proc.returncode, proc.stdout) == (0, "the guest stored 0x12345678 at 0x10000000\n"), proc.stderr
    else:
        assert proc.returncode == 1 and "needs an arm64 host" in proc.stderr and not proc.stdout, proc.stderr
