"""api.rst metadata (codegen.apidoc) joined with the headers of every bundled kernel and arch."""

from __future__ import annotations

import re

import pytest

import kvm.generated
from kvm_bindgen import apidoc, apidoc_fixes, inputs
from kvm_bindgen.arches import ARCHES

ALL_ARCHES = tuple(ARCHES)
ARCHES_TESTED = {
    "5.10": ("x86_64", "arm64"),
    "6.1": ("x86_64", "arm64"),
    "6.12": ALL_ARCHES,
    "7.2": ALL_ARCHES,
}
KERNEL_ARCH_PAIRS = [(kernel, arch) for kernel, arches in ARCHES_TESTED.items() for arch in arches]

IOCTL_DEFINE = re.compile(r"#define (KVM_\w+)\s+_IO(R|W|WR)?\(")
CAP_DEFINE = re.compile(r"#define (KVM_CAP_\w+)\s")

_docs: dict[str, apidoc.ApiDoc] = {}


def api_doc(kernel_name: str) -> apidoc.ApiDoc:
    if kernel_name not in _docs:
        try:
            path = inputs.api_rst(inputs.load_manifest()[kernel_name])
        except inputs.InputError as e:
            pytest.skip(f"api.rst of kernel {kernel_name} is not available: {e}")
        _docs[kernel_name] = apidoc.parse(path.read_text())
    return _docs[kernel_name]


def header_names(kernel_name: str, arch: str) -> tuple[list[str], set[str]]:
    """(ioctls, capabilities) that linux/kvm.h and the arch's asm/kvm.h define."""
    try:
        tree = inputs.bundled_tree(inputs.load_manifest()[kernel_name], arch)
    except inputs.InputError as e:
        pytest.skip(f"headers of kernel {kernel_name} for {arch} are not available: {e}")
    # Join continued lines: "#define KVM_REGISTER_COALESCED_MMIO \" has its _IOW on the next line.
    text = (tree.kvm_h.read_text() + tree.asm_kvm_h.read_text()).replace("\\\n", " ")
    ioctls = sorted({m[1] for m in IOCTL_DEFINE.finditer(text)})
    return ioctls, {m[1] for m in CAP_DEFINE.finditer(text)}


def annotated(kernel_name: str, arch: str) -> dict[str, apidoc.IoctlMeta]:
    ioctls, caps = header_names(kernel_name, arch)
    return apidoc.annotate(api_doc(kernel_name), ioctls, caps, arch)


# ---------------------------------------------------------------------------------------------
# Every ioctl of every bundled kernel and arch


@pytest.mark.parametrize(("kernel_name", "arch"), KERNEL_ARCH_PAIRS)
def test_every_header_ioctl_gets_an_fd_kind_and_a_known_capability(kernel_name: str, arch: str) -> None:
    ioctls, caps = header_names(kernel_name, arch)
    metas = apidoc.annotate(api_doc(kernel_name), ioctls, caps, arch)
    assert sorted(metas) == ioctls
    for name, meta in metas.items():
        assert meta.fds and meta.fds <= apidoc.FD_KINDS, name
        assert meta.capability is None or meta.capability in caps, name
    documented = sum(meta.section is not None for meta in metas.values())
    print(f"{kernel_name} {arch}: {len(metas)} ioctls, {documented} with an api.rst section")


def test_annotate_lists_every_gap() -> None:
    doc = api_doc("6.12")
    with pytest.raises(apidoc.ApiDocError) as raised:
        apidoc.annotate(doc, ["KVM_RUN", "KVM_NO_SUCH_IOCTL", "KVM_IRQFD"], cap_names=set(), arch="x86_64")
    message = str(raised.value)
    assert "KVM_NO_SUCH_IOCTL: no fd kind" in message
    assert "KVM_IRQFD: capability KVM_CAP_IRQFD is not defined" in message
    assert "KVM_RUN" not in message


# ---------------------------------------------------------------------------------------------
# Irregular cases, with values read in api.rst 6.12


def test_plain_sections() -> None:
    metas = annotated("6.12", "x86_64")
    assert (metas["KVM_GET_REGS"].fds, metas["KVM_GET_REGS"].capability) == ({"vcpu"}, None)
    assert metas["KVM_GET_REGS"].arches == set(ALL_ARCHES) - {"arm64"}  # "all except arm64"
    assert metas["KVM_CREATE_VCPU"].fds == {"vm"}
    assert metas["KVM_GET_API_VERSION"].fds == {"system"}
    assert metas["KVM_GET_API_VERSION"].arches is None  # "all"
    assert metas["KVM_RUN"].summary == "This ioctl is used to run a guest virtual cpu."


def test_several_fd_kinds_and_capabilities_in_one_field() -> None:
    metas = annotated("6.12", "x86_64")
    # "basic, KVM_CAP_CHECK_EXTENSION_VM for vm ioctl": basic on /dev/kvm, the capability on VMs.
    check = metas["KVM_CHECK_EXTENSION"]
    assert (check.fds, check.capability, check.capability_on_fd) == (
        {"system", "vm"}, None, {"vm": "KVM_CAP_CHECK_EXTENSION_VM"})
    # "KVM_CAP_DEVICE_CTRL, KVM_CAP_VM_ATTRIBUTES for vm device, KVM_CAP_VCPU_ATTRIBUTES for vcpu device
    #  KVM_CAP_SYS_ATTRIBUTES for system (/dev/kvm) device (no set)", title "KVM_SET_DEVICE_ATTR/KVM_GET_DEVICE_ATTR"
    per_fd = {"vm": "KVM_CAP_VM_ATTRIBUTES", "vcpu": "KVM_CAP_VCPU_ATTRIBUTES", "system": "KVM_CAP_SYS_ATTRIBUTES"}
    for name, fds in (("KVM_SET_DEVICE_ATTR", {"device", "vm", "vcpu"}),
                      ("KVM_GET_DEVICE_ATTR", {"device", "vm", "vcpu", "system"}),
                      ("KVM_HAS_DEVICE_ATTR", {"device", "vm", "vcpu", "system"})):
        assert metas[name].fds == fds, name
        assert metas[name].capability == "KVM_CAP_DEVICE_CTRL"  # on device fds
        assert metas[name].capability_on_fd == {fd: cap for fd, cap in per_fd.items() if fd in fds}, name
    # "KVM_CAP_XEN_HVM / KVM_XEN_HVM_CONFIG_SHARED_INFO": a capability and a flag.
    assert metas["KVM_XEN_HVM_SET_ATTR"].capability == "KVM_CAP_XEN_HVM"


def test_title_with_two_ioctls_and_a_capability_for_one_of_them() -> None:
    metas = annotated("6.12", "x86_64")
    # 4.3 "KVM_GET_MSR_INDEX_LIST, KVM_GET_MSR_FEATURE_INDEX_LIST", with
    # "basic, KVM_CAP_GET_MSR_FEATURES for KVM_GET_MSR_FEATURE_INDEX_LIST"
    assert metas["KVM_GET_MSR_INDEX_LIST"].capability is None
    assert metas["KVM_GET_MSR_FEATURE_INDEX_LIST"].capability == "KVM_CAP_GET_MSR_FEATURES"
    assert metas["KVM_GET_MSR_FEATURE_INDEX_LIST"].section == "4.3"


def test_un_register_title_names_both_ioctls() -> None:
    doc = api_doc("6.12")
    for name in ("KVM_REGISTER_COALESCED_MMIO", "KVM_UNREGISTER_COALESCED_MMIO"):
        ioctl = doc.ioctls[name]
        assert (ioctl.section, ioctl.fds, ioctl.capability) == ("4.116", {"vm"}, "KVM_CAP_COALESCED_MMIO")
    metas = annotated("6.12", "x86_64")
    assert metas["KVM_UNREGISTER_COALESCED_MMIO"].capability == "KVM_CAP_COALESCED_MMIO"


def test_duplicate_section_number() -> None:
    doc = api_doc("6.12")
    assert doc.ioctls["KVM_SIGNAL_MSI"].section == doc.ioctls["KVM_CREATE_PIT2"].section == "4.71"
    assert doc.ioctls["KVM_CREATE_PIT2"].capability == "KVM_CAP_PIT2"


def test_enable_cap_has_a_vcpu_and_a_vm_field_block() -> None:
    doc = api_doc("6.12")
    assert doc.ioctls["KVM_ENABLE_CAP"].fds == {"vm", "vcpu"}
    assert doc.ioctls["KVM_ENABLE_CAP"].arches is None
    # The vcpu block (KVM_CAP_ENABLE_CAP) lists "mips, ppc, s390, x86, loongarch"; the vm block says "all".
    # Each fd kind is gated by its own block's capability.
    x86, arm64 = annotated("6.12", "x86_64")["KVM_ENABLE_CAP"], annotated("6.12", "arm64")["KVM_ENABLE_CAP"]
    assert (x86.capability, x86.capability_on_fd) == ("KVM_CAP_ENABLE_CAP", {"vm": "KVM_CAP_ENABLE_CAP_VM"})
    assert (arm64.capability, arm64.capability_on_fd) == ("KVM_CAP_ENABLE_CAP_VM", {"vcpu": "KVM_CAP_ENABLE_CAP"})
    for binding in (kvm.generated.load("6.12", "x86_64"), kvm.generated.load("6.12", "arm64")):
        spec = binding.IOCTLS["KVM_ENABLE_CAP"]
        assert (spec.capability_for("vm"), spec.capability_for("vcpu")) == ("KVM_CAP_ENABLE_CAP_VM", "KVM_CAP_ENABLE_CAP")
        assert "KVM_ENABLE_CAP" in binding.CAPS["KVM_CAP_ENABLE_CAP_VM"].ioctls


def test_arch_note_in_capability_field() -> None:
    # "KVM_CAP_IRQCHIP, KVM_CAP_S390_IRQCHIP (s390)"
    assert annotated("6.12", "x86_64")["KVM_CREATE_IRQCHIP"].capability == "KVM_CAP_IRQCHIP"
    assert annotated("6.12", "s390x")["KVM_CREATE_IRQCHIP"].capability == "KVM_CAP_S390_IRQCHIP"


def test_corrections_apply() -> None:
    metas = annotated("6.12", "x86_64")
    assert metas["KVM_GET_DEBUGREGS"].fds == {"vcpu"}  # api.rst: vm ioctl
    assert metas["KVM_GET_DEBUGREGS"].capability == "KVM_CAP_DEBUGREGS"
    assert metas["KVM_GET_STATS_FD"].capability == "KVM_CAP_BINARY_STATS_FD"  # api.rst: KVM_CAP_STATS_BINARY_FD
    assert metas["KVM_GET_STATS_FD"].fds == {"vm", "vcpu"}
    assert metas["KVM_MEMORY_ENCRYPT_REG_REGION"].fds == {"vm"}  # api.rst: system ioctl
    # No section of their own:
    assert (metas["KVM_CREATE_PIT"].fds, metas["KVM_CREATE_PIT"].capability) == ({"vm"}, "KVM_CAP_PIT")
    assert metas["KVM_CREATE_PIT"].section is None
    assert metas["KVM_RESET_DIRTY_RINGS"].capability == "KVM_CAP_DIRTY_LOG_RING"
    assert metas["KVM_SET_CPUID2"].fds == {"vcpu"}
    assert metas["KVM_S390_ENABLE_SIE"].arches == {"s390x"}


def test_capability_in_chapter_4_and_a_misnamed_capability_in_5_10() -> None:
    doc = api_doc("5.10")
    assert "KVM_CAP_PPC_MULTITCE" in doc.caps  # 4.97 documents a capability, not an ioctl
    assert "KVM_CAP_PPC_MULTITCE" not in doc.ioctls
    assert doc.ioctls["KVM_X86_SET_MSR_FILTER"].capability == "KVM_X86_SET_MSR_FILTER"
    metas = annotated("5.10", "x86_64")
    assert metas["KVM_X86_SET_MSR_FILTER"].capability == "KVM_CAP_X86_MSR_FILTER"


def test_capability_chapters() -> None:
    doc = api_doc("6.12")
    assert (doc.caps["KVM_CAP_PPC_OSI"].section, doc.caps["KVM_CAP_PPC_OSI"].enable_on) == ("6.1", {"vcpu"})
    assert doc.caps["KVM_CAP_S390_IRQCHIP"].enable_on == {"vm"}  # in chapter 6, but ":Target: vm"
    assert doc.caps["KVM_CAP_SPLIT_IRQCHIP"].enable_on == {"vm"}
    assert doc.caps["KVM_CAP_SPLIT_IRQCHIP"].parameters.startswith("args[0]")
    assert doc.caps["KVM_CAP_PPC_HWRNG"].enable_on == frozenset()  # chapter 8: informational
    assert doc.caps["KVM_CAP_PPC_HWRNG"].arches == {"ppc64le"}
    assert doc.caps["KVM_CAP_X86_USER_SPACE_MSR"].enable_on == {"vm"}  # in 7.21 and again in 8.26
    assert doc.caps["KVM_CAP_DIRTY_LOG_RING_ACQ_REL"].section == "8.29"  # "A/B" title
    # "Architectures: x86" without the leading colon
    assert doc.caps["KVM_CAP_ENFORCE_PV_FEATURE_CPUID"].arches == {"x86_64"}
    enable = apidoc.enable_caps(doc)
    assert enable["KVM_CAP_SPLIT_IRQCHIP"] == {"vm"} and enable["KVM_CAP_PPC_OSI"] == {"vcpu"}
    assert "KVM_CAP_PPC_HWRNG" not in enable


# ---------------------------------------------------------------------------------------------
# Field notations, on a small made-up api.rst

MADE_UP = """
4. API description
==================

4.1 KVM_A
---------

:Capability: KVM_CAP_A or KVM_CAP_B
:Architectures: x86, arm64
:Type: vcpu ioctl / vm ioctl
:Parameters: none
:Returns: 0 on success

Does A. Then more.

4.2 KVM_B
---------

:Capability: KVM_CAP_C, KVM_CAP_D (s390)
:Architectures: s390, ppc, mips, loongarch, riscv
:Type: vm

Errors:

  ======  =====
  EINVAL  bad
  ======  =====

(An aside.)

The first sentence, e.g. this one, ends here. Not this.

4.3 KVM_C
---------

:Capability: basic
:Architectures: all except ARM, arm64
:Type: system ioctl

6. Capabilities that can be enabled on vCPUs
============================================

6.1 KVM_CAP_E
-------------

:Architectures: x86 SEV enabled
:Parameters: args[0] is the answer
"""


def test_made_up_sections() -> None:
    doc = apidoc.parse(MADE_UP)
    a, b, c = doc.ioctls["KVM_A"], doc.ioctls["KVM_B"], doc.ioctls["KVM_C"]
    assert (a.capability, a.fds, a.arches) == ("KVM_CAP_A", {"vcpu", "vm"}, {"x86_64", "arm64"})
    assert (a.parameters, a.returns, a.summary) == ("none", "0 on success", "Does A.")
    assert b.capability == b.capability_for("ppc64le") == "KVM_CAP_C"
    assert b.capability_for("s390x") == "KVM_CAP_D"
    assert b.arches == {"s390x", "ppc64le", "mips64el", "loongarch64", "riscv64"}
    assert b.summary == "The first sentence, e.g. this one, ends here."
    assert (c.capability, c.fds, c.arches) == (None, {"system"}, set(ALL_ARCHES) - {"arm64"})
    assert doc.caps["KVM_CAP_E"] == apidoc.CapDoc(
        "KVM_CAP_E", "6.1", frozenset({"vcpu"}), frozenset({"x86_64"}), "args[0] is the answer", "")


def test_a_capability_per_fd_kind_from_field_blocks() -> None:
    doc = apidoc.parse(
        "4.1 KVM_X\n---------\n\n"
        ":Capability: KVM_CAP_V\n:Architectures: x86\n:Type: vcpu ioctl\n\n"
        ":Capability: KVM_CAP_M\n:Architectures: all\n:Type: vm ioctl\n"
    )
    x = doc.ioctls["KVM_X"]
    assert (x.capability_for("x86_64"), x.capabilities_by_fd("x86_64")) == ("KVM_CAP_V", {"vm": "KVM_CAP_M"})
    assert (x.capability_for("arm64"), x.capabilities_by_fd("arm64")) == ("KVM_CAP_M", {"vcpu": "KVM_CAP_V"})


@pytest.mark.parametrize(("text", "expected"), [
    ("KVM_CAP_A and KVM_CAP_B", "KVM_CAP_A"),
    ("KVM_CAP_A / KVM_CAP_B", "KVM_CAP_A"),
    ("basic (vcpu), KVM_CAP_B (system)", None),
    ("none", None),
    ("KVM_CAP_A (for coalesced mmio)\n\t     KVM_CAP_B (for coalesced pio)", "KVM_CAP_A"),
])
def test_capability_notations(text: str, expected: str | None) -> None:
    doc = apidoc.parse(f"4.1 KVM_X\n---------\n\n:Capability: {text}\n:Type: vm ioctl\n")
    assert doc.ioctls["KVM_X"].capability == expected


# ---------------------------------------------------------------------------------------------
# The corrections table


def test_fixes_table_is_small_and_every_row_is_needed() -> None:
    rows, ioctls = apidoc_fixes.table_size()
    print(f"apidoc_fixes: {rows} rows covering {ioctls} ioctls")
    by_ioctl = apidoc_fixes.fixes_by_ioctl()  # raises when two rows correct one ioctl
    assert len(by_ioctl) == ioctls
    needed = set()
    for kernel_name in ARCHES_TESTED:
        doc = api_doc(kernel_name)
        for name, fix in by_ioctl.items():
            ioctl = doc.ioctls.get(name)
            if (ioctl is None
                    or (fix.fds is not None and apidoc.parse_fds(fix.fds) != ioctl.fds)
                    or (fix.capability is not None
                        and apidoc.normalize_capability(fix.capability) != ioctl.capability)
                    or (fix.arches is not None and apidoc.parse_arches(fix.arches) != ioctl.arches)):
                needed.add(fix)
    assert set(apidoc_fixes.FIXES) == needed
    for fix in apidoc_fixes.FIXES:
        assert fix.reason and "\n" not in fix.reason
        assert fix.fds is None or apidoc.parse_fds(fix.fds)
