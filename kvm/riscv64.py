"""riscv64: the objects' riscv64-only methods, and the ids of riscv64 registers.

`Riscv64Vcpu` is mixed into `Vcpu` for riscv64 bindings (see kvm/arches.py). Registers go through
`vcpu.get_one_reg(id)` / `set_one_reg(id, value)` with an id from the functions here, which take the
binding (`vcpu.binding`) and compute it from its constants and record layouts, as the kernel's
KVM_REG_RISCV_*_REG macros do: an id is KVM_REG_RISCV | size | type | subtype | index, the index of a
`struct kvm_riscv_core`/`_csr`/`_config` member being its offset in `unsigned long`s.

    vcpu.set_one_reg(kvm.riscv64.core_reg_id(vcpu.binding, "a0"), 42)
    vcpu.enable_isa_ext("ZBB", False)
"""

from __future__ import annotations

from types import ModuleType

from . import marshal
from ._fd import KvmFd, needs

# csr_reg_id's records, by the subtype of their registers
CSR_RECORDS = (
    ("KVM_REG_RISCV_CSR_GENERAL", "struct kvm_riscv_csr"),
    ("KVM_REG_RISCV_CSR_AIA", "struct kvm_riscv_aia_csr"),
    ("KVM_REG_RISCV_CSR_SMSTATEEN", "struct kvm_riscv_smstateen_csr"),
)


def _reg_id(binding: ModuleType, reg_type: str, ctype: str, name: str, unit: str = "unsigned long",
            subtype: str | None = None) -> int:
    """The id of integer member `name` of `ctype` ("mode", "regs.pc"): its index is its offset in `unit`s."""
    ffi, c = binding.ffi, binding.CONSTANTS
    offset, size = marshal.member_layout(ffi, ctype, name)
    index = offset // ffi.sizeof(unit) | (c[subtype] if subtype is not None else 0)
    return c["KVM_REG_RISCV"] | marshal.reg_size_bits(c, size) | c[reg_type] | index  # type: ignore[no-any-return]


def core_reg_id(binding: ModuleType, name: str) -> int:
    """The id of core register `name`, a member of `struct kvm_riscv_core`: "regs.pc", "regs.a0", ..., "mode";
    the members of `struct user_regs_struct` also by their own name ("pc", "ra", "sp", "a0", "t6")."""
    if isinstance(name, str) and name in dict(binding.ffi.typeof("struct user_regs_struct").fields):
        name = "regs." + name
    return _reg_id(binding, "KVM_REG_RISCV_CORE", "struct kvm_riscv_core", name)


def csr_reg_id(binding: ModuleType, name: str) -> int:
    """The id of CSR `name`: a member of `struct kvm_riscv_csr` ("sstatus", "sepc", "satp", ...), of
    `struct kvm_riscv_aia_csr` ("siselect", ...) or of `struct kvm_riscv_smstateen_csr` ("sstateen0")."""
    for subtype, ctype in CSR_RECORDS:
        if isinstance(name, str) and name in dict(binding.ffi.typeof(ctype).fields):
            return _reg_id(binding, "KVM_REG_RISCV_CSR", ctype, name, subtype=subtype)
    return _reg_id(binding, "KVM_REG_RISCV_CSR", "struct kvm_riscv_csr", name)  # raises, naming the record


def timer_reg_id(binding: ModuleType, name: str) -> int:
    """The id of timer register `name` (a member of `struct kvm_riscv_timer`: "frequency", "time", "compare", "state")."""
    return _reg_id(binding, "KVM_REG_RISCV_TIMER", "struct kvm_riscv_timer", name, "__u64")


def config_reg_id(binding: ModuleType, name: str) -> int:
    """The id of config register `name` (a member of `struct kvm_riscv_config`: "isa", "mvendorid", "satp_mode", ...)."""
    return _reg_id(binding, "KVM_REG_RISCV_CONFIG", "struct kvm_riscv_config", name)


def _extension(binding: ModuleType, kind: str, ext: int | str) -> int:
    """Extension `ext` of KVM_RISCV_{kind}_EXT_*: its number, or its name ("ZBB" or "KVM_RISCV_ISA_EXT_ZBB")."""
    prefix = f"KVM_RISCV_{kind}_EXT_"
    c = binding.CONSTANTS
    if isinstance(ext, str):
        name = ext if ext.startswith(prefix) else prefix + ext.upper()
        if name not in c or name == prefix + "MAX":
            raise ValueError(f"no {kind} extension {ext!r} in this binding")
        return c[name]  # type: ignore[no-any-return]
    return marshal.integer(ext, "ext", 0, c[prefix + "MAX"] - 1)


def _ext_reg_id(binding: ModuleType, kind: str, ext: int | str) -> int:
    c = binding.CONSTANTS
    return int(c["KVM_REG_RISCV"] | c[f"KVM_REG_SIZE_U{8 * binding.ffi.sizeof('unsigned long')}"]
               | c[f"KVM_REG_RISCV_{kind}_EXT"] | c[f"KVM_REG_RISCV_{kind}_SINGLE"] | _extension(binding, kind, ext))


def isa_ext_id(binding: ModuleType, ext: int | str) -> int:
    """The id of the register enabling ISA extension `ext` (a KVM_RISCV_ISA_EXT_* number, or its name
    "V", "ZBB", ...): 1 when the guest has it. Writable before the vCPU first runs."""
    return _ext_reg_id(binding, "ISA", ext)


def sbi_ext_id(binding: ModuleType, ext: int | str) -> int:
    """The id of the register enabling SBI extension `ext` (a KVM_RISCV_SBI_EXT_* number, or its name
    "HSM", "PMU", ...): 1 when KVM implements it for the guest. Writable before the vCPU first runs."""
    return _ext_reg_id(binding, "SBI", ext)


class Riscv64Vcpu(KvmFd):
    """A vCPU on riscv64: `pc`, the ISA and SBI extensions the guest has."""

    @property
    @needs("KVM_GET_ONE_REG", "KVM_SET_ONE_REG")
    def pc(self) -> int:
        """The program counter (core register `regs.pc`)."""
        return marshal.one_reg_get(self._ioctl, self.ffi, self._binding.CONSTANTS, "KVM_GET_ONE_REG", core_reg_id(self._binding, "regs.pc"))

    @pc.setter
    def pc(self, value: int) -> None:
        marshal.one_reg_set(self._ioctl, self.ffi, self._binding.CONSTANTS, "KVM_SET_ONE_REG", core_reg_id(self._binding, "regs.pc"), value)

    @needs("KVM_GET_REG_LIST", "KVM_GET_ONE_REG")
    def isa_extensions(self) -> dict[str, bool]:
        """Every ISA extension register KVM_GET_REG_LIST lists, read: {name ("ZBB"; the number as a str
        for one this binding has no name for): whether the guest has it}."""
        c = self._binding.CONSTANTS
        prefix = "KVM_RISCV_ISA_EXT_"
        names = {value: name[len(prefix):] for name, value in c.items()
                 if name.startswith(prefix) and name != prefix + "MAX"}
        kind = c["KVM_REG_RISCV_TYPE_MASK"] | c["KVM_REG_RISCV_SUBTYPE_MASK"]
        single = c["KVM_REG_RISCV_ISA_EXT"] | c["KVM_REG_RISCV_ISA_SINGLE"]
        index_mask = ~(c["KVM_REG_ARCH_MASK"] | c["KVM_REG_SIZE_MASK"] | kind)
        ids = marshal.index_list(self._ioctl, self.ffi, "KVM_GET_REG_LIST", "struct kvm_reg_list", "n", "reg", 256)
        out = {}
        for reg_id in ids:
            if reg_id & c["KVM_REG_ARCH_MASK"] == c["KVM_REG_RISCV"] and reg_id & kind == single:
                ext = reg_id & index_mask
                out[names.get(ext, str(ext))] = bool(marshal.one_reg_get(self._ioctl, self.ffi, self._binding.CONSTANTS, "KVM_GET_ONE_REG", reg_id))
        return out

    @needs("KVM_SET_ONE_REG")
    def enable_isa_ext(self, ext: int | str, enable: bool = True) -> None:
        """Give the guest ISA extension `ext` (a number or a name, see `isa_ext_id`), or with
        `enable=False` take it away; before the vCPU first runs."""
        self._set_ext(isa_ext_id(self._binding, ext), enable)

    @needs("KVM_SET_ONE_REG")
    def enable_sbi_ext(self, ext: int | str, enable: bool = True) -> None:
        """Let KVM implement SBI extension `ext` (a number or a name, see `sbi_ext_id`) for the guest, or
        with `enable=False` not; before the vCPU first runs."""
        self._set_ext(sbi_ext_id(self._binding, ext), enable)

    def _set_ext(self, reg_id: int, enable: bool) -> None:
        if not isinstance(enable, bool):
            raise TypeError(f"enable must be a bool, not {type(enable).__name__} ({enable!r})")
        marshal.one_reg_set(self._ioctl, self.ffi, self._binding.CONSTANTS, "KVM_SET_ONE_REG", reg_id, int(enable))


MIXINS: dict[str, type] = {"vcpu": Riscv64Vcpu}
