"""Join the parsed headers, their layouts and api.rst into one Model per (kernel version, arch)."""

from __future__ import annotations

import re

from . import cparse
from .cexpr import ExprError, tokenize
from .inputs import HeadersTree, InputError
from .layout import Layout
from .caps import build_caps
from .model import EnumGroup, Ioctl, Model, Record, Typedef

_IOCTL_MACRO = re.compile(r"^_IO(R|W|WR)?\s*\((.*)\)$", re.S)
_DIRECTIONS = {None: "none", "R": "read", "W": "write", "WR": "readwrite"}

# Constants the kernel groups by prefix, rendered as enum classes: (class name, prefix, IntFlag?, name
# fragments that mark a different group sharing the prefix, required suffix). Ioctls are never members.
ENUM_GROUPS = [
    ("Cap", "KVM_CAP_", False, ()),
    ("ExitReason", "KVM_EXIT_", False, ("KVM_EXIT_IO_", "KVM_EXIT_HYPERV_", "KVM_EXIT_XEN_",
                                        "KVM_EXIT_HYPERCALL_", "_FLAG_")),
    ("MemoryRegionFlag", "KVM_MEM_", True, ()),
    ("SystemEvent", "KVM_SYSTEM_EVENT_", False, ("_FLAG_",)),
    ("InternalErrorSuberror", "KVM_INTERNAL_ERROR_", False, ()),
    ("DeviceType", "KVM_DEV_TYPE_", False, ()),
    ("MpState", "KVM_MP_STATE_", False, ()),
    ("GuestDebugFlag", "KVM_GUESTDBG_", True, ("_SHIFT", "_MASK")),
    ("IrqRoutingType", "KVM_IRQ_ROUTING_", False, ()),
    ("DirtyGfnFlag", "KVM_DIRTY_GFN_F_", True, ("_MASK",)),
    ("MsrExitReason", "KVM_MSR_EXIT_REASON_", True, ()),
    ("StatsType", "KVM_STATS_TYPE_", False, ("_SHIFT", "_MASK", "_MAX")),
    ("StatsUnit", "KVM_STATS_UNIT_", False, ("_SHIFT", "_MASK", "_MAX")),
    ("StatsBase", "KVM_STATS_BASE_", False, ("_SHIFT", "_MASK", "_MAX")),
    ("VcpuEventFlag", "KVM_VCPUEVENT_", True, ()),
    ("SyncRegsFlag", "KVM_SYNC_X86_", True, ("_VALID_FIELDS",)),
    ("VmType", "KVM_X86_", False, (), "_VM"),
]


class BuildError(InputError):
    """The headers parse but do not make a KVM binding; file and line name the definition at fault."""


def build(tree: HeadersTree, kernel: str, api_rst: str | None) -> Model:
    parsed = cparse.parse(tree)
    layout = Layout(parsed, tree.arch, tree.include_dirs)
    if layout.record_file.get("struct kvm_run") != "linux/kvm.h":
        raise BuildError("defines no struct kvm_run: not the KVM API header", file=tree.kvm_h)
    constants, ioctls = _macros(tree, parsed, layout)
    for name, value in layout.enum_values.items():
        if layout.enumerator_file[name] in cparse.KVM_HEADERS:
            constants.setdefault(name, value)
    records = _records(layout)
    enums = _enum_groups(constants, set(ioctls))
    model = Model(kernel, tree.linux_version, tree.arch.name, tree.origin, dict(sorted(constants.items())),
                  ioctls, records, {}, enums)
    model.typedefs = _used_typedefs(layout.typedefs(), records)
    if api_rst is not None:
        _annotate(model, api_rst)
    return model


def _used_typedefs(typedefs: dict[str, Typedef], records: dict[str, Record]) -> dict[str, Typedef]:
    """The typedefs the records use, directly or through other typedefs."""
    pending = [f.ctype.split("[")[0] for r in records.values() for f in r.fields] + list(records)
    used: dict[str, Typedef] = {}
    while pending:
        name = pending.pop()
        if name in typedefs and name not in used:
            used[name] = typedefs[name]
            pending.append(used[name].target.split("[")[0])
    return dict(sorted(used.items()))


def _macros(tree: HeadersTree, parsed: cparse.ParsedHeaders, layout: Layout) -> tuple[dict[str, int], dict[str, Ioctl]]:
    """Every integer macro of the KVM headers, and every ioctl among them."""
    names = [n for n in parsed.kvm_macro_order if parsed.macros[n].body]
    raw_ioctls = {}
    requests: dict[str, str] = {n: n for n in names}
    for name in names:
        m = _IOCTL_MACRO.match(parsed.macros[name].body)
        # `__KVM_DEPRECATED_*` reserve the numbers of removed ioctls; they are constants, not ioctls.
        if m and not name.startswith("__"):
            args = _split_args(m.group(2))
            if len(args) != (2 if m.group(1) is None else 3):
                raise BuildError(f"cannot read ioctl {name}: {parsed.macros[name].body}", *_where(parsed, name))
            raw_ioctls[name] = (_DIRECTIONS[m.group(1)], args)
            requests[f"{name}.type"] = args[0]
            requests[f"{name}.nr"] = args[1]
            if len(args) == 3:
                requests[f"{name}.arg"] = args[2]
    expanded = cparse.expand(tree, requests)
    constants: dict[str, int] = {}
    for name in names:
        try:
            constants[name] = layout.eval_text(expanded[name])
        except (ExprError, KeyError):
            pass  # not an integer constant (a type, a string, or an ioctl on a struct this arch lacks)
    ioctls: dict[str, Ioctl] = {}
    for name, (direction, args) in raw_ioctls.items():
        try:
            ioctls[name] = _ioctl(name, direction, expanded, layout, tree, constants.get(name))
        except (ExprError, KeyError) as e:
            raise BuildError(f"cannot evaluate ioctl {name} = {parsed.macros[name].body}: {e}",
                             *_where(parsed, name)) from None
        except BuildError as e:
            raise BuildError(e.message, *_where(parsed, name)) from None
    # An ioctl defined as another ioctl's name (an alias) shares its spec.
    for name in names:
        target = parsed.macros[name].body
        if target in ioctls and name not in ioctls:
            ioctls[name] = Ioctl(**{**ioctls[target].__dict__, "name": name})
    return constants, dict(sorted(ioctls.items()))


def _ioctl(name: str, direction: str, expanded: dict[str, str], layout: Layout, tree: HeadersTree,
           evaluated: int | None) -> Ioctl:
    type_ = layout.eval_text(expanded[f"{name}.type"])
    nr = layout.eval_text(expanded[f"{name}.nr"])
    for what, value in (("type", type_), ("number", nr)):
        if not 0 <= value < 1 << 8:
            raise BuildError(f"{name}: {what} {value} does not fit in the ioctl's 8-bit {what} field")
    arg_type = expanded.get(f"{name}.arg")
    if arg_type is None:
        return Ioctl(name, tree.arch.ioc.encode(direction, type_, nr, 0), direction, type_, nr, 0, None)
    arg_type = " ".join(arg_type.split())
    try:
        size = layout.type_facts(tokenize(arg_type)).size
    except (KeyError, ExprError) as e:
        return Ioctl(name, None, direction, type_, nr, 0, arg_type,
                     unavailable=f"{arg_type} is not defined on {tree.arch.name} ({e})")
    if not 0 <= size < 1 << tree.arch.ioc.size_bits:
        raise BuildError(f"{name}: {arg_type} is {size} bytes, more than {tree.arch.name}'s "
                         f"{tree.arch.ioc.size_bits}-bit ioctl size field holds")
    number = tree.arch.ioc.encode(direction, type_, nr, size)
    if evaluated is not None and evaluated != number:
        raise BuildError(f"{name}: the header's _IOC gives {evaluated:#x}, the {tree.arch.name} encoding {number:#x}")
    return Ioctl(name, number, direction, type_, nr, size, arg_type)


def _where(parsed: cparse.ParsedHeaders, name: str) -> tuple[str, int]:
    """file and line of a macro's #define."""
    macro = parsed.macros[name]
    return macro.path or macro.file, macro.line


def _split_args(text: str) -> list[str]:
    args, depth, current = [], 0, ""
    for ch in text:
        if ch == "," and depth == 0:
            args.append(current.strip())
            current = ""
            continue
        depth += {"(": 1, ")": -1}.get(ch, 0)
        current += ch
    args.append(current.strip())
    return args


def _records(layout: Layout) -> dict[str, Record]:
    """Records defined in the KVM headers and every record they contain, laid out."""
    wanted = [k for k, f in layout.record_file.items() if f in cparse.KVM_HEADERS]
    for key in wanted:
        layout.record(key)
    out: dict[str, Record] = {}
    pending = list(wanted)
    while pending:
        key = pending.pop()
        if key in out:
            continue
        record = layout.record(key)
        out[key] = record
        for field in record.fields:
            base = field.ctype.split("[")[0]
            if base in layout.records or base in layout.record_nodes:
                pending.append(base)
    return dict(sorted(out.items()))


def _enum_groups(constants: dict[str, int], ioctls: set[str]) -> dict[str, EnumGroup]:
    groups = {}
    for class_name, prefix, flag, exclude, *suffix in ENUM_GROUPS:
        members = []
        for name, value in constants.items():
            if (name.startswith(prefix) and not any(x in name for x in exclude) and name.endswith(tuple(suffix) or "")
                    and name != prefix.rstrip("_") and name not in ioctls):
                member = name[len(prefix):]
                members.append(("_" + member if member[0].isdigit() else member, value))
        if members:
            groups[class_name] = EnumGroup(class_name, prefix, flag, tuple(sorted(members, key=lambda m: (m[1], m[0]))))
    return groups


def _annotate(model: Model, api_rst: str) -> None:
    from . import apidoc, apidoc_fixes
    doc = apidoc.parse(api_rst)
    if not doc.ioctls:
        raise apidoc.ApiDocError("no ioctl sections (\"4.N KVM_...\" titles): not KVM's api.rst")
    caps = [n for n in model.constants if n.startswith("KVM_CAP_")]
    available = [name for name, ioctl in model.ioctls.items() if ioctl.number is not None]
    metas = apidoc.annotate(doc, available, caps, model.arch)
    for name, meta in metas.items():
        old = model.ioctls[name]
        model.ioctls[name] = Ioctl(**{**old.__dict__, "fds": tuple(sorted(meta.fds)), "capability": meta.capability,
                                      "capability_on_fd": tuple(sorted(meta.capability_on_fd.items())),
                                      "arches": tuple(sorted(meta.arches)) if meta.arches else None,
                                      "section": meta.section, "summary": meta.summary})
    model.caps = build_caps(model.constants, doc.caps)
    model.apidoc_fixes = apidoc_fixes.table_size()[0]
