"""Turn a Model into plain per-method descriptions of the typed ioctl wrappers.

generated/ioctls_linux_<X_Y>_<arch>.py is rendered from templates/wrappers.py.j2, which only formats
what this module decides: for every available ioctl and every fd kind it is issued on, one `Method`
with its Python name, signature, return annotation, docstring lines and the "shape" of its body.

Shapes (the template has one short body per shape):

- value:        `_IO` (or an argument passed by value): takes an int (or nothing), returns the int result
- passthrough:  the argument is an opaque pointer the caller builds (KVM_MEMORY_ENCRYPT_OP)
- scalar_in / scalar_out / scalar_inout: a pointer to one integer
- struct_in / struct_out / struct_inout: a pointer to a record; `in` takes a cdata or keyword fields
- index_list:   E2BIG protocol, the kernel writes the needed count back (KVM_GET_MSR_INDEX_LIST, ...)
- cpuid_get:    E2BIG protocol without a count: grow and retry (KVM_GET_SUPPORTED_CPUID, ...)
- flex_set:     a count plus a flexible array built from a Python sequence (KVM_SET_CPUID2, ...)
- msrs_get / msrs_set, signal_mask, dirty_log, clear_dirty_log, one_reg_get / one_reg_set,
  attr_get / attr_set / attr_has, sized_get (KVM_GET_NESTED_STATE), xsave2: pointer-carrying or
  variable-sized arguments with a dedicated Python signature
"""

from __future__ import annotations

import dataclasses
import keyword
import re

from .model import Ioctl, Model, Record

FD_CLASSES = {"system": "SystemIoctls", "vm": "VmIoctls", "vcpu": "VcpuIoctls", "device": "DeviceIoctls"}

# _IO ioctls (and the few `unsigned long` ones passed by value) whose argument has a meaning:
# name -> (parameter name, default or None when required).
VALUE_PARAMS: dict[str, tuple[str, int | None]] = {
    "KVM_CHECK_EXTENSION": ("cap", None),
    "KVM_CREATE_VM": ("vm_type", 0),
    "KVM_CREATE_VCPU": ("vcpu_id", None),
    "KVM_SET_TSS_ADDR": ("addr", None),
    "KVM_SET_BOOT_CPU_ID": ("vcpu_id", None),
    "KVM_SET_TSC_KHZ": ("khz", None),
    "KVM_SET_NR_MMU_PAGES": ("pages", None),
    "KVM_S390_STORE_STATUS": ("addr", None),
    "KVM_S390_VCPU_FAULT": ("addr", None),
    "KVM_ARM_VCPU_FINALIZE": ("feature", None),
}
# _IO ioctls the kernel ignores the argument of.
NO_ARG = frozenset({
    "KVM_CREATE_IRQCHIP", "KVM_CREATE_PIT", "KVM_GET_API_VERSION", "KVM_GET_NR_MMU_PAGES", "KVM_GET_STATS_FD",
    "KVM_GET_TSC_KHZ", "KVM_GET_VCPU_MMAP_SIZE", "KVM_KVMCLOCK_CTRL", "KVM_NMI", "KVM_PPC_SVM_OFF",
    "KVM_RESET_DIRTY_RINGS", "KVM_RUN", "KVM_S390_CLEAR_RESET", "KVM_S390_ENABLE_SIE", "KVM_S390_INITIAL_RESET",
    "KVM_S390_NORMAL_RESET", "KVM_SMI",
})
# The argument is passed by value although the number encodes a pointer type.
BY_VALUE = frozenset({"KVM_S390_STORE_STATUS", "KVM_S390_VCPU_FAULT"})
# _IO ioctls that nevertheless read a record through the argument.
IO_WITH_RECORD = {"KVM_REINJECT_CONTROL": "struct kvm_reinject_control"}
# Historical encodings that do not say what the ioctl does with its argument.
SEMANTIC_DIRECTION = {
    "KVM_SET_IRQCHIP": "write",  # _IOR in the header, reads the struct from user space
    "KVM_SET_PIT": "write",
    "KVM_MEMORY_ENCRYPT_REG_REGION": "write",
    "KVM_MEMORY_ENCRYPT_UNREG_REGION": "write",
    "KVM_ARM_MTE_COPY_TAGS": "write",  # returns the number of bytes copied
    "KVM_GET_DIRTY_LOG": "readwrite",  # _IOW, but fills the bitmap the struct points to
}
# Ioctls whose return value is a new file descriptor.
RETURNS_FD = frozenset({
    "KVM_CREATE_VM", "KVM_CREATE_VCPU", "KVM_GET_STATS_FD", "KVM_CREATE_GUEST_MEMFD", "KVM_CREATE_SPAPR_TCE",
    "KVM_CREATE_SPAPR_TCE_64", "KVM_PPC_GET_HTAB_FD",
})
PASSTHROUGH = frozenset({"KVM_MEMORY_ENCRYPT_OP"})

# Ioctls with a dedicated shape: name -> (shape, extra template data).
SPECIAL: dict[str, tuple[str, dict[str, object]]] = {
    "KVM_GET_MSR_INDEX_LIST": ("index_list", {"count": "nmsrs", "array": "indices", "start": 256}),
    "KVM_GET_MSR_FEATURE_INDEX_LIST": ("index_list", {"count": "nmsrs", "array": "indices", "start": 64}),
    "KVM_GET_REG_LIST": ("index_list", {"count": "n", "array": "reg", "start": 256}),
    "KVM_GET_SUPPORTED_CPUID": ("cpuid_get", {"start": 64}),
    "KVM_GET_EMULATED_CPUID": ("cpuid_get", {"start": 64}),
    "KVM_GET_SUPPORTED_HV_CPUID": ("cpuid_get", {"start": 64}),
    "KVM_GET_CPUID2": ("cpuid_get", {"start": 64}),
    "KVM_SET_CPUID": ("flex_set", {"count": "nent", "array": "entries"}),
    "KVM_SET_CPUID2": ("flex_set", {"count": "nent", "array": "entries"}),
    "KVM_SET_GSI_ROUTING": ("flex_set", {"count": "nr", "array": "entries"}),
    "KVM_SET_PMU_EVENT_FILTER": ("flex_set", {"count": "nevents", "array": "events"}),
    "KVM_GET_MSRS": ("msrs_get", {}),
    "KVM_SET_MSRS": ("msrs_set", {}),
    "KVM_SET_SIGNAL_MASK": ("signal_mask", {}),
    "KVM_GET_DIRTY_LOG": ("dirty_log", {}),
    "KVM_SET_USER_MEMORY_REGION": ("memory_region", {}),
    "KVM_SET_USER_MEMORY_REGION2": ("memory_region", {}),
    "KVM_CLEAR_DIRTY_LOG": ("clear_dirty_log", {}),
    "KVM_GET_ONE_REG": ("one_reg_get", {}),
    "KVM_SET_ONE_REG": ("one_reg_set", {}),
    "KVM_GET_DEVICE_ATTR": ("attr_get", {}),
    "KVM_SET_DEVICE_ATTR": ("attr_set", {}),
    "KVM_HAS_DEVICE_ATTR": ("attr_has", {}),
    "KVM_GET_NESTED_STATE": ("sized_get", {"size_field": "size"}),
    "KVM_GET_XSAVE2": ("xsave2", {}),
    "KVM_SET_XSAVE": ("xsave_set", {}),
}
# Parameters and return annotation of each dedicated shape.
SPECIAL_SIGNATURES: dict[str, tuple[list[str], str]] = {
    "index_list": ([], "list[int]"),
    "cpuid_get": (["nent: int | None = None"], "CData"),
    "flex_set": (["entries: Sequence[Any] | CData"], "int"),
    "msrs_get": (["indices: Iterable[int]"], "dict[int, int]"),
    "msrs_set": (["msrs: Mapping[int, int] | CData"], "int"),
    "signal_mask": (["signals: Iterable[int] | None = None"], "int"),
    "dirty_log": (["slot: int"], "bytes"),
    "memory_region": (["arg: CData | None = None"], "int"),
    "clear_dirty_log": (["slot: int", "first_page: int", "num_pages: int", "bitmap: bytes | None = None"], "int"),
    "one_reg_get": (["reg_id: int"], "int"),
    "one_reg_set": (["reg_id: int", "value: int"], "int"),
    "attr_get": (["group: int", "attr: int", "size: int = 8", "flags: int = 0"], "bytes"),
    "attr_set": (["group: int", "attr: int", "value: bytes | int | None = None", "flags: int = 0"], "int"),
    "attr_has": (["group: int", "attr: int", "flags: int = 0"], "bool"),
    "sized_get": (["size: int | None = None"], "CData"),
    "xsave2": (["size: int = 4096"], "CData"),
    "xsave_set": (["xsave: CData | bytes", "size: int = 4096"], "int"),
}
SPECIAL_RETURNS = {
    "index_list": "the list the kernel returns (the buffer grows on E2BIG as the kernel asks)",
    "cpuid_get": "a new cdata (`nent` entries filled); `nent` None grows the buffer on E2BIG",
    "flex_set": "the ioctl's result; `entries` is a sequence of entries (cdata or dicts) or a ready cdata",
    "msrs_get": "{index: value} of the MSRs read: the kernel stops at the first it cannot read, so a shorter "
                "result means the MSR after the last one read was refused",
    "msrs_set": "the number of MSRs written: the kernel stops at the first it refuses, the ones before stay written",
    "signal_mask": "the ioctl's result; `signals` None removes the mask",
    "dirty_log": "the slot's dirty bitmap (bit i of the little-endian words = page i), sized from the slot "
                 "as registered through this object",
    "memory_region": "the ioctl's result; `arg` is the record's cdata, or keyword fields build one; the VM "
                     "object records the slot's size (its dirty bitmap's)",
    "clear_dirty_log": "the ioctl's result; `bitmap` None clears every page of the range",
    "one_reg_get": "the register's value, an unsigned int of the size the id encodes (KVM_REG_SIZE)",
    "one_reg_set": "the ioctl's result",
    "attr_get": "the attribute's first `size` bytes (the buffer is at least 8 bytes, as the kernel writes)",
    "attr_set": "the ioctl's result; an int `value` is passed as a u64",
    "attr_has": "whether the attribute exists (False when the kernel answers ENXIO)",
    "sized_get": "a new cdata of the size the kernel asks for (E2BIG protocol on `size`)",
    "xsave2": "a new cdata of `size` bytes (KVM_CHECK_EXTENSION(KVM_CAP_XSAVE2) on the VM fd)",
    "xsave_set": "the ioctl's result; the kernel reads `size` bytes, the vCPU's XSAVE state: pass "
                 "KVM_CHECK_EXTENSION(KVM_CAP_XSAVE2) on the VM fd where it exceeds 4096 (a shorter record is refused)",
}
# Names the generated bodies use, which a keyword field must not shadow.
RESERVED = frozenset({"self", "ffi", "_m"})
# sizeof(sigset_t) in the kernel, which KVM_SET_SIGNAL_MASK insists on.
SIGSET_BYTES = {"mips64el": 16}


@dataclasses.dataclass(frozen=True)
class Param:
    name: str  # the Python parameter name
    field: str  # the record member it sets
    annotation: str


@dataclasses.dataclass(frozen=True)
class Method:
    ioctl: str
    name: str
    shape: str
    params: tuple[str, ...]  # rendered parameters after `self`
    returns: str  # return annotation
    doc: tuple[str, ...]  # docstring lines
    ctype: str = ""  # the argument's C type ("struct kvm_regs", "__u64")
    fields: tuple[Param, ...] = ()  # keyword fields of struct_in / struct_inout / flex_set
    value: str = ""  # the argument expression of `value` shapes ("0", "vcpu_id")
    returns_fd: bool = False  # the result is a new file descriptor
    extra: dict[str, object] = dataclasses.field(default_factory=dict)

    @property
    def args(self) -> str:
        """The parameters, passed on in order (`slot, npages`)."""
        return ", ".join(p.split(":")[0] for p in self.params if p not in ("/", "*"))


@dataclasses.dataclass(frozen=True)
class WrapperModule:
    module: str  # the binding module, e.g. "linux_7_2_x86_64"
    linux_version: str
    arch: str
    origin: str
    classes: dict[str, tuple[Method, ...]]  # class name -> methods sorted by name
    sigset_bytes: int
    index: dict[str, tuple[str, tuple[str, ...]]]  # ioctl -> (method name, class names)


def method_name(ioctl: str) -> str:
    name = ioctl.removeprefix("KVM_").lower()
    return name + "_" if keyword.iskeyword(name) else name


def _is_record(model: Model, ctype: str) -> bool:
    target = model.typedefs[ctype].target if ctype in model.typedefs else ctype
    return ctype in model.records or target in model.records or target.startswith(("struct ", "union "))


def _field_annotation(model: Model, base: str, dims: tuple[int | None, ...]) -> str | None:
    if None in dims:
        return None  # flexible array: dedicated shapes fill it
    if "*" in base:
        return "int | CData | None"
    if not base or _is_record(model, base):
        return "Sequence[Any] | CData | None" if dims else "CData | None"
    if base in ("float", "double"):
        return "Sequence[float] | None" if dims else "float | None"
    if dims:
        return "bytes | None" if base == "char" else "Sequence[int] | bytes | None"
    return "int | None"


def _record_params(model: Model, record: Record, taken: set[str], skip: frozenset[str] = frozenset()) -> list[Param]:
    out: list[Param] = []

    def walk(rec: Record) -> None:
        for m in rec.members:
            if m.name is None:
                if m.inline is not None:
                    walk(m.inline)  # anonymous struct/union: cffi exposes its members directly
                continue
            if m.name in skip or m.name.startswith("__"):
                continue  # (`__empty_x`: __DECLARE_FLEX_ARRAY's empty placeholder; a Python parameter would be mangled)
            annotation = _field_annotation(model, m.base, m.dims)
            if annotation is None:
                continue
            name = m.name
            while keyword.iskeyword(name) or name in taken:
                name += "_"
            taken.add(name)
            out.append(Param(name, m.name, annotation))

    walk(record)
    return out


def _signature(ioctl: Ioctl) -> str:
    encode = {"none": "_IO", "read": "_IOR", "write": "_IOW", "readwrite": "_IOWR"}[ioctl.direction]
    arg = f", {ioctl.arg_type}" if ioctl.arg_type else ""
    return f"{encode}({ioctl.type:#x}, {ioctl.nr:#x}{arg}) = {ioctl.number:#x}" if ioctl.number is not None else encode


def _doc(ioctl: Ioctl, fd: str, returns: str) -> tuple[str, ...]:
    summary = ioctl.summary or f"{ioctl.name} (undocumented in api.rst)."
    summary = re.sub(r"\s+", " ", summary).replace("\\", "\\\\").replace('"""', "'''").strip()
    arches = ", ".join(ioctl.arches) if ioctl.arches else "all"
    capability = ioctl.capability_for(fd)
    lines = [f"{ioctl.name}: {summary}", "",
             f"capability: {capability or 'none (basic API)'}; fd: {fd}; arches: {arches}; "
             f"api.rst: {('section ' + ioctl.section) if ioctl.section else 'not documented'}",
             f"encoding: {_signature(ioctl)}", f"returns: {returns}"]
    return tuple(lines)


def describe(ioctl: Ioctl, fd: str, model: Model) -> Method:
    """The wrapper of `ioctl` on a `fd` fd."""
    name = method_name(ioctl.name)
    base = dict(ioctl=ioctl.name, name=name, returns_fd=ioctl.name in RETURNS_FD)
    fd_note = "a new file descriptor (int), which the caller owns and must close"
    arg_type = ioctl.arg_type
    if ioctl.name in IO_WITH_RECORD:
        arg_type = IO_WITH_RECORD[ioctl.name]
    direction = SEMANTIC_DIRECTION.get(ioctl.name, ioctl.direction)
    if ioctl.name in IO_WITH_RECORD:
        direction = "write"

    if ioctl.name in SPECIAL and arg_type and arg_type in model.records:
        shape, extra = SPECIAL[ioctl.name]
        params, returns = SPECIAL_SIGNATURES[shape]
        fields: tuple[Param, ...] = ()
        if shape == "memory_region":
            fields = tuple(_record_params(model, model.records[arg_type], {"arg", *RESERVED}))
            params = [*params, "/"] + (["*"] + [f"{p.name}: {p.annotation} = None" for p in fields] if fields else [])
        if shape == "flex_set":
            taken = {"entries", *RESERVED}
            fields = tuple(_record_params(model, model.records[arg_type], taken, frozenset({extra["count"]})))
            params = [*params, "/"] + (["*"] + [f"{p.name}: {p.annotation} = None" for p in fields] if fields else [])
        return Method(**base, shape=shape, params=tuple(params), returns=returns, ctype=arg_type, fields=fields,
                      extra=dict(extra), doc=_doc(ioctl, fd, SPECIAL_RETURNS[shape]))

    if ioctl.name in PASSTHROUGH:
        return Method(**base, shape="passthrough", params=("arg: CData | int = 0",), returns="int",
                      doc=_doc(ioctl, fd, "the ioctl's result; `arg` is a cdata pointer the caller builds (or 0)"))

    if direction == "none" or ioctl.name in BY_VALUE or not arg_type:
        if ioctl.name in VALUE_PARAMS:
            pname, default = VALUE_PARAMS[ioctl.name]
            params: tuple[str, ...] = (f"{pname}: int" + ("" if default is None else f" = {default}"),)
            value = pname
        elif ioctl.name in NO_ARG:
            params, value = (), "0"
        else:
            params, value = ("arg: int = 0",), "arg"
        returns = fd_note if ioctl.name in RETURNS_FD else "the ioctl's (non-negative) result"
        return Method(**base, shape="value", params=params, returns="int", value=value, doc=_doc(ioctl, fd, returns))

    if not _is_record(model, arg_type):
        ctype = model.typedefs[arg_type].target if arg_type in model.typedefs else arg_type
        ctype = arg_type  # cffi knows the kernel's typedef names
        if direction == "read":
            return Method(**base, shape="scalar_out", params=(), returns="int", ctype=ctype,
                          doc=_doc(ioctl, fd, f"the {arg_type} the kernel writes"))
        if direction == "write":
            return Method(**base, shape="scalar_in", params=("value: int",), returns="int", ctype=ctype,
                          doc=_doc(ioctl, fd, f"the ioctl's result; `value` is passed as a pointer to {arg_type}"))
        return Method(**base, shape="scalar_inout", params=("value: int",), returns="int", ctype=ctype,
                      doc=_doc(ioctl, fd, f"the {arg_type} the kernel writes back over `value`"))

    record = model.records.get(arg_type)
    if direction == "read" or record is None:
        return Method(**base, shape="struct_out", params=(), returns="CData", ctype=arg_type,
                      doc=_doc(ioctl, fd, f"a new `{arg_type} *` cdata the kernel filled"))
    fields = tuple(_record_params(model, record, {"arg", *RESERVED}))
    params = ("arg: CData | None = None", "/") + (("*",) + tuple(f"{p.name}: {p.annotation} = None" for p in fields)
                                                 if fields else ())
    if direction == "write" or ioctl.name in RETURNS_FD:
        returns = fd_note if ioctl.name in RETURNS_FD else "the ioctl's (non-negative) result"
        return Method(**base, shape="struct_in", params=params, returns="int", ctype=arg_type, fields=fields,
                      doc=_doc(ioctl, fd, returns + f"; `arg` is a `{arg_type} *` cdata, or keyword fields build one"))
    return Method(**base, shape="struct_inout", params=params, returns="CData", ctype=arg_type, fields=fields,
                  doc=_doc(ioctl, fd, f"`arg` (or a new `{arg_type} *` from the keyword fields) as the kernel "
                                      "updated it"))


def describe_model(model: Model) -> WrapperModule:
    classes: dict[str, list[Method]] = {cls: [] for cls in FD_CLASSES.values()}
    for ioctl in sorted(model.ioctls.values(), key=lambda i: i.name):
        if ioctl.number is None or (ioctl.arches and model.arch not in ioctl.arches):
            continue
        for fd in ioctl.fds:
            classes[FD_CLASSES[fd]].append(describe(ioctl, fd, model))
    index: dict[str, tuple[str, tuple[str, ...]]] = {}
    for cls, methods in classes.items():
        for m in methods:
            name, owners = index.get(m.ioctl, (m.name, ()))
            index[m.ioctl] = (name, (*owners, cls))
    return WrapperModule(module=model.module_name, index=dict(sorted(index.items())), linux_version=model.linux_version, arch=model.arch,
                         origin=model.origin,
                         classes={cls: tuple(sorted(ms, key=lambda m: m.name)) for cls, ms in classes.items()},
                         sigset_bytes=SIGSET_BYTES.get(model.arch, 8))


def wrappers_source(model: Model) -> str:
    from .render import _environment

    return _environment().get_template("wrappers.py.j2").render(w=describe_model(model))
