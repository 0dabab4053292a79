"""`kvm-bindgen diff`: bundled pairs, synthetic headers trees with one change each, the CLI, the formats."""

from __future__ import annotations

import io
import json
import pathlib
import re
import shutil
from collections.abc import Callable

import pytest

import kvm.generated as g
from kvm_bindgen import cli, diff, inputs
from kvm_bindgen.diff import ADDITION, BREAK, COMPATIBLE, RULES, Change, Report

REPO = pathlib.Path(__file__).resolve().parent.parent


def _changes(report: Report, rule: str | None = None, name: str | None = None) -> list[Change]:
    return [c for c in report.changes if (rule is None or c.rule == rule) and (name is None or c.name == name)]


def _names(report: Report, rule: str) -> set[str]:
    return {c.name for c in _changes(report, rule)}


# ---------------------------------------------------------------------------------------------
# Bundled bindings


@pytest.mark.parametrize("kernel,release,arch", g.BUNDLED)
def test_a_binding_diffed_with_itself_reports_nothing(kernel: str, release: str, arch: str) -> None:
    report = diff.diff(diff.bundled(kernel, arch), diff.bundled(release, arch))
    assert report.changes == ()
    assert "no differences" in diff.render_text(report)


def test_6_1_to_6_12_on_x86_64() -> None:
    report = diff.diff(diff.bundled("6.1", "x86_64"), diff.bundled("6.12", "x86_64"))
    assert _names(report, "ioctl.added") == {"KVM_CREATE_GUEST_MEMFD", "KVM_PRE_FAULT_MEMORY",
                                             "KVM_SET_MEMORY_ATTRIBUTES", "KVM_SET_USER_MEMORY_REGION2"}
    removed = _names(report, "ioctl.removed")
    assert {"KVM_SET_MEMORY_REGION", "KVM_SET_MEMORY_ALIAS"} <= removed
    assert {n for n in removed if n.startswith("KVM_ASSIGN_")} == {
        "KVM_ASSIGN_DEV_IRQ", "KVM_ASSIGN_PCI_DEVICE", "KVM_ASSIGN_SET_INTX_MASK", "KVM_ASSIGN_SET_MSIX_ENTRY",
        "KVM_ASSIGN_SET_MSIX_NR"}
    # Removed from linux/kvm.h, versus moved to s390's and powerpc's asm/kvm.h (so gone on x86_64):
    memory_region = _changes(report, "ioctl.removed", "KVM_SET_MEMORY_REGION")[0]
    assert memory_region.detail.endswith("no longer defined") and memory_region.classification == BREAK
    assert "no longer available on x86_64" in _changes(report, "ioctl.removed", "KVM_S390_MEM_OP")[0].detail
    # Structs: added with their ioctls, removed with theirs, and the fields of kept ones.
    assert {"struct kvm_userspace_memory_region2", "struct kvm_create_guest_memfd"} <= _names(report, "record.added")
    assert "struct kvm_memory_region" in _names(report, "record.removed")
    run = {(c.rule, c.field) for c in _changes(report, name="struct kvm_run")}
    assert {("field.added", "memory_fault.gpa"), ("field.added", "hypercall.flags"),
            ("field.padding_reused", "hypercall.pad")} <= run
    assert ("field.added", "pad0") in {(c.rule, c.field) for c in _changes(report, name="struct kvm_sev_cmd")}
    assert {"KVM_CAP_GUEST_MEMFD", "KVM_CAP_USER_MEMORY2"} <= _names(report, "capability.added")
    assert "KVM_EXIT_MEMORY_FAULT" in _names(report, "exit_reason.added")
    # Enum members ride along with the constant they stand for instead of being counted twice.
    guest_memfd = _changes(report, "constant.added", "KVM_MEM_GUEST_MEMFD")[0]
    assert guest_memfd.related == ("MemoryRegionFlag.GUEST_MEMFD",)
    assert not _changes(report, "enum.added")
    counts = report.counts()
    assert counts[BREAK] > 0 and counts[ADDITION] > 0
    text = diff.render_text(report)
    assert text.index("ABI breaks (") < text.index("Additions (") < text.index("Compatible changes (")


def test_capability_flags_and_parameters_changes() -> None:
    """The typed wrappers' facts (kvm/caps.py): a flag set that grew, a capability that became enable-able."""
    report = diff.diff(diff.bundled("6.1", "x86_64"), diff.bundled("7.2", "x86_64"))
    x2apic = _changes(report, "capability.flags", "KVM_CAP_X2APIC_API")[0]
    assert x2apic.detail == "+ ENABLE_SUPPRESS_EOI_BROADCAST, DISABLE_SUPPRESS_EOI_BROADCAST"
    assert x2apic.old == ["USE_32BIT_IDS", "DISABLE_BROADCAST_QUIRK"] and x2apic.classification == COMPATIBLE
    assert "KVM_CAP_X86_DISABLE_EXITS" in _names(report, "capability.flags")
    older = diff.diff(diff.bundled("5.10", "x86_64"), diff.bundled("6.1", "x86_64"))
    max_id = _changes(older, "capability.params", "KVM_CAP_MAX_VCPU_ID")[0]
    assert max_id.detail == "enable_on none -> (vm); params none -> (max_id: int in args[0])"
    assert max_id.new["params"][0] == {"name": "max_id", "kind": "int", "index": 0, "shift": 0, "width": 64,
                                       "at_most_check": True}


def test_arches_compared_with_vs_arch() -> None:
    report = diff.diff(diff.bundled("6.12", "x86_64"), diff.bundled("6.12", "arm64"))
    assert report.mode == "arches"
    assert "KVM_GET_MSRS" in _names(report, "ioctl.removed")  # only on x86_64
    assert "KVM_ARM_VCPU_INIT" in _names(report, "ioctl.added")  # only on arm64
    regs = {(c.rule, c.field) for c in _changes(report, name="struct kvm_regs")}
    assert ("field.removed", "rax") in regs and ("field.added", "regs") in regs
    text = diff.render_text(report)
    assert "Only on x86_64 (" in text and "Only on arm64 (" in text and "Different (" in text
    assert "KVM_GET_MSRS: only on x86_64:" in text
    # ppc64le's _IOC layout differs: every ioctl both have is numbered differently.
    ppc = diff.diff(diff.bundled("6.12", "x86_64"), diff.bundled("6.12", "ppc64le"))
    assert "KVM_RUN" in _names(ppc, "ioctl.number")


# ---------------------------------------------------------------------------------------------
# Synthetic headers trees: a copy of 6.12 x86_64 with one change each


@pytest.fixture(scope="module")
def base_tree(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    try:
        tree = inputs.bundled_tree(inputs.load_manifest()["6.12"], "x86_64")
    except inputs.InputError as e:
        pytest.skip(f"input not available: {e}")
    root = tmp_path_factory.mktemp("base")
    usr_include = root / "usr" / "include"
    for name in ("linux", "asm-generic"):
        shutil.copytree(tree.include_dirs[1] / name, usr_include / name)
    shutil.copytree(tree.include_dirs[0] / "asm", usr_include / "asm", symlinks=False)
    return root


@pytest.fixture(scope="module")
def base(base_tree: pathlib.Path) -> diff.Binding:
    return diff.from_headers(base_tree, "x86_64")


Edit = Callable[[str], str]


def _edited(base_tree: pathlib.Path, tmp_path: pathlib.Path, header: str, edit: Edit) -> pathlib.Path:
    root = tmp_path / "edited"
    shutil.copytree(base_tree, root)
    path = root / "usr" / "include" / header
    before = path.read_text()
    after = edit(before)
    assert after != before, "the edit changed nothing"
    path.write_text(after)
    return root


def _sub(old: str, new: str) -> Edit:
    def edit(text: str) -> str:
        assert text.count(old) == 1, old
        return text.replace(old, new)
    return edit


def _remove_struct(name: str) -> Edit:
    def edit(text: str) -> str:
        return re.sub(r"^struct " + name + r" \{\n.*?^\};\n", "", text, count=1, flags=re.M | re.S)
    return edit


def _diff_edit(base: diff.Binding, base_tree: pathlib.Path, tmp_path: pathlib.Path, header: str,
               edit: Edit) -> Report:
    return diff.diff(base, diff.from_headers(_edited(base_tree, tmp_path, header, edit), "x86_64"))


def _summary(report: Report) -> set[tuple[str, str, str | None]]:
    return {(c.rule, c.name, c.field) for c in report.changes}


def test_a_tree_identical_to_a_release_reports_nothing(base: diff.Binding) -> None:
    # The bundled binding also has api.rst metadata; a bare tree has none, which is not a difference.
    assert diff.diff(diff.bundled("6.12", "x86_64"), base).changes == ()
    assert diff.diff(base, base).changes == ()


def test_field_type_changed(base: diff.Binding, base_tree: pathlib.Path, tmp_path: pathlib.Path) -> None:
    report = _diff_edit(base, base_tree, tmp_path, "linux/kvm.h",
                        _sub("struct kvm_userspace_memory_region {\n\t__u32 slot;",
                             "struct kvm_userspace_memory_region {\n\t__u16 slot;"))
    region = "struct kvm_userspace_memory_region"
    assert _summary(report) == {("field.shrank", region, "slot"),
                                ("ioctl.arg_layout", "KVM_SET_USER_MEMORY_REGION", None)}
    assert all(c.classification == BREAK for c in report.changes)
    shrank = _changes(report, "field.shrank")[0]
    assert shrank.detail == "size 4 -> 2 bytes (__u32 -> __u16)"
    assert shrank.related == ("KVM_SET_USER_MEMORY_REGION",)
    assert "slot" in _changes(report, "ioctl.arg_layout")[0].detail


def test_field_retyped_with_the_same_size(base: diff.Binding, base_tree: pathlib.Path, tmp_path: pathlib.Path) -> None:
    report = _diff_edit(base, base_tree, tmp_path, "linux/kvm.h",
                        _sub("\t__u32 slot;\n\t__u32 flags;\n\t__u64 guest_phys_addr;\n\t__u64 memory_size; /* bytes */\n"
                             "\t__u64 userspace_addr; /* start of the userspace allocated memory */\n};\n\n/* for KVM_SET_USER_MEMORY_REGION2 */",
                             "\t__u32 slot;\n\t__s32 flags;\n\t__u64 guest_phys_addr;\n\t__u64 memory_size; /* bytes */\n"
                             "\t__u64 userspace_addr; /* start of the userspace allocated memory */\n};\n\n/* for KVM_SET_USER_MEMORY_REGION2 */"))
    assert _summary(report) == {("field.retyped", "struct kvm_userspace_memory_region", "flags")}
    assert report.changes[0].classification == COMPATIBLE and not report.breaks


def test_two_fields_swapped(base: diff.Binding, base_tree: pathlib.Path, tmp_path: pathlib.Path) -> None:
    report = _diff_edit(base, base_tree, tmp_path, "asm/kvm.h",
                        _sub("\t__u64 rip, rflags;\n", "\t__u64 rflags, rip;\n"))
    regs = "struct kvm_regs"
    assert _summary(report) == {("field.moved", regs, "rip"), ("field.moved", regs, "rflags"),
                                ("ioctl.arg_layout", "KVM_GET_REGS", None), ("ioctl.arg_layout", "KVM_SET_REGS", None),
                                # kvm_run.s.regs is a struct kvm_sync_regs, which holds a struct kvm_regs
                                ("field.nested", "struct kvm_sync_regs", "regs"), ("field.nested", "struct kvm_run", "s.regs")}
    assert all(c.classification == BREAK for c in report.changes)
    assert _changes(report, "field.moved")[0].detail in ("offset 128 -> 136", "offset 136 -> 128")


def test_ioctl_renumbered(base: diff.Binding, base_tree: pathlib.Path, tmp_path: pathlib.Path) -> None:
    report = _diff_edit(base, base_tree, tmp_path, "linux/kvm.h",
                        _sub("_IO(KVMIO,   0x00)", "_IO(KVMIO,   0x7f)"))
    assert _summary(report) == {("ioctl.number", "KVM_GET_API_VERSION", None)}
    change = report.changes[0]
    assert change.classification == BREAK
    assert change.detail == "0xae00 -> 0xae7f: nr 0x0 -> 0x7f"
    assert (change.old["number"], change.new["number"]) == (0xAE00, 0xAE7F)


def test_constant_changed(base: diff.Binding, base_tree: pathlib.Path, tmp_path: pathlib.Path) -> None:
    report = _diff_edit(base, base_tree, tmp_path, "linux/kvm.h",
                        _sub("#define KVM_API_VERSION 12", "#define KVM_API_VERSION 13"))
    assert _summary(report) == {("constant.value", "KVM_API_VERSION", None)}
    assert report.changes[0].classification == BREAK and report.changes[0].detail == "12 -> 13"


def test_enum_member_value_rides_with_its_constant(base: diff.Binding, base_tree: pathlib.Path,
                                                   tmp_path: pathlib.Path) -> None:
    report = _diff_edit(base, base_tree, tmp_path, "linux/kvm.h",
                        _sub("#define KVM_EXIT_MEMORY_FAULT     39", "#define KVM_EXIT_MEMORY_FAULT     60"))
    assert _summary(report) == {("exit_reason.value", "KVM_EXIT_MEMORY_FAULT", None)}
    assert report.changes[0].related == ("ExitReason.MEMORY_FAULT",)
    assert report.changes[0].classification == BREAK


def test_field_added_at_the_end(base: diff.Binding, base_tree: pathlib.Path, tmp_path: pathlib.Path) -> None:
    report = _diff_edit(base, base_tree, tmp_path, "linux/kvm.h",
                        _sub("\t__u32\tflags;\t/* in: KVM_CREATE_DEVICE_xxx */\n};",
                             "\t__u32\tflags;\t/* in: KVM_CREATE_DEVICE_xxx */\n\t__u32\textra;\n};"))
    device = "struct kvm_create_device"
    assert _summary(report) == {("field.added", device, "extra"), ("record.grew", device, None),
                                ("ioctl.number", "KVM_CREATE_DEVICE", None)}
    by_rule = {c.rule: c for c in report.changes}
    assert by_rule["field.added"].classification == ADDITION
    assert by_rule["record.grew"].classification == COMPATIBLE
    number = by_rule["ioctl.number"]
    assert number.classification == BREAK  # the ioctl rule decides: old programs issue the old number
    assert number.detail == ("0xc00caee0 -> 0xc010aee0: size 12 -> 16 because struct kvm_create_device grew "
                             "from 12 to 16 bytes (extra added at offset 12)")


def test_struct_removed(base: diff.Binding, base_tree: pathlib.Path, tmp_path: pathlib.Path) -> None:
    report = _diff_edit(base, base_tree, tmp_path, "linux/kvm.h", _remove_struct("kvm_enable_cap"))
    assert _summary(report) == {("record.removed", "struct kvm_enable_cap", None),
                                ("ioctl.removed", "KVM_ENABLE_CAP", None)}
    assert all(c.classification == BREAK for c in report.changes)
    ioctl = _changes(report, "ioctl.removed")[0]
    assert "no longer available on x86_64: struct kvm_enable_cap is not defined" in ioctl.detail


def test_padding_reused_and_field_renamed(base: diff.Binding, base_tree: pathlib.Path, tmp_path: pathlib.Path) -> None:
    report = _diff_edit(base, base_tree, tmp_path, "linux/kvm.h",
                        _sub("\t__u32 flags;\n\t__u32 pad0;\n\t__u64 realtime;",
                             "\t__u32 flags;\n\t__u32 tsc_khz;\n\t__u64 realtime;"))
    assert _summary(report) == {("field.padding_reused", "struct kvm_clock_data", "pad0")}
    assert not report.breaks
    report = _diff_edit(base, base_tree, tmp_path / "2", "linux/kvm.h",
                        _sub("\t__u64 clock;\n\t__u32 flags;\n\t__u32 pad0;", "\t__u64 clock;\n\t__u32 flag;\n\t__u32 pad0;"))
    # A break for code naming the field; the layout, and so KVM_GET_CLOCK's argument, is the same.
    assert _summary(report) == {("field.renamed", "struct kvm_clock_data", "flags")}
    assert report.breaks


def test_nested_record_change_reaches_the_ioctls_of_its_containers(base: diff.Binding, base_tree: pathlib.Path,
                                                                    tmp_path: pathlib.Path) -> None:
    # struct kvm_segment sits inside struct kvm_sregs (KVM_GET_SREGS) at unchanged offsets and size.
    report = _diff_edit(base, base_tree, tmp_path, "asm/kvm.h",
                        _sub("\t__u8  type;\n\t__u8  present, dpl, db, s, l, g, avl;",
                             "\t__u8  present;\n\t__u8  type, dpl, db, s, l, g, avl;"))
    assert ("field.moved", "struct kvm_segment", "type") in _summary(report)
    nested = {c.name for c in _changes(report, "field.nested")}
    assert {"struct kvm_sregs", "struct kvm_sregs2"} <= nested
    assert {"KVM_GET_SREGS", "KVM_SET_SREGS"} <= _names(report, "ioctl.arg_layout")
    assert all(c.classification == BREAK for c in report.changes)


# ---------------------------------------------------------------------------------------------
# The command line


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    rc = cli.main(["diff", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_cli_exit_status(capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(["6.1", "6.12", "--arch", "x86_64"], capsys)[0] == 0
    assert _run(["6.1", "6.12", "--arch", "x86_64", "--fail-on-abi-break"], capsys)[0] == 1
    assert _run(["6.12", "6.12.117", "--arch", "x86_64", "--fail-on-abi-break"], capsys)[0] == 0


@pytest.mark.parametrize("argv,message", [
    (["6.12"], "NEW is missing"),
    (["6.3", "6.12", "--arch", "x86_64"], "OLD (6.3): no bundled binding for version '6.3' on x86_64"),
    (["6.12", "5.10", "--arch", "riscv64"], "NEW (5.10): no bundled binding for version '5.10' on riscv64"),
    (["6.12", "/no/such/tree"], "no such directory: /no/such/tree"),
    (["6.12", "7.2", "--arch", "vax"], "unknown arch 'vax'"),
])
def test_cli_bad_input_names_what_is_missing(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = _run(argv, capsys)
    assert rc == 2 and message in err and out == ""


def test_cli_not_a_headers_tree(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = _run(["6.12", str(tmp_path), "--arch", "x86_64"], capsys)
    assert rc == 2 and "no linux/kvm.h" in err


def test_cli_bad_usage_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        cli.main(["diff", "6.1", "6.12", "--format", "yaml"])
    assert e.value.code == 2


def test_cli_headers_tree_against_a_release(base_tree: pathlib.Path, tmp_path: pathlib.Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    edited = _edited(base_tree, tmp_path, "linux/kvm.h", _sub("#define KVM_API_VERSION 12", "#define KVM_API_VERSION 13"))
    rc, out, _ = _run(["6.12", str(edited), "--arch", "x86_64", "--format", "json", "--fail-on-abi-break"], capsys)
    assert rc == 1
    doc = json.loads(out)
    assert doc["new"]["source"] == "headers" and doc["new"]["linux_version"] == "6.12.117"
    assert [(c["rule"], c["name"], c["old"], c["new"]) for c in doc["changes"]] == [
        ("constant.value", "KVM_API_VERSION", 12, 13)]


def test_cli_vs_arch(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = _run(["6.12", "--arch", "x86_64", "--vs-arch", "arm64", "--format", "markdown"], capsys)
    assert rc == 0
    assert out.startswith("### KVM ABI on x86_64 vs arm64, Linux 6.12 (6.12.117)")


# ---------------------------------------------------------------------------------------------
# Formats, the rules table, the committed reports


def test_json_schema(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = _run(["6.12", "7.2", "--arch", "x86_64", "--format", "json"], capsys)
    assert rc == 0
    doc = json.loads(out)
    assert doc["schema"] == "kvm-bindgen-diff" and doc["version"] == diff.SCHEMA_VERSION == 1
    assert doc["mode"] == "versions"
    assert set(doc) == {"schema", "version", "mode", "old", "new", "counts", "changes"}
    assert set(doc["old"]) == {"spec", "source", "kernel", "linux_version", "arch", "origin"}
    assert set(doc["counts"]) == {"break", "addition", "compatible"}
    assert sum(doc["counts"].values()) == len(doc["changes"])
    keys = {"kind", "name", "field", "change", "rule", "classification", "old", "new", "detail", "reason", "related"}
    for c in doc["changes"]:
        assert set(c) == keys
        rule = RULES[c["rule"]]
        assert (c["classification"], c["change"], c["reason"]) == (rule.classification, rule.change, rule.why)
        assert c["kind"] in diff.KINDS
    # breaks first
    order = [diff.CLASSIFICATIONS.index(c["classification"]) for c in doc["changes"]]
    assert order == sorted(order)


def test_markdown_puts_breaks_first_and_folds_the_rest() -> None:
    report = diff.diff(diff.bundled("6.1", "x86_64"), diff.bundled("6.12", "x86_64"))
    md = diff.render_markdown(report)
    assert md.index("#### ABI breaks (") < md.index("<details><summary>Additions (")
    assert len(md) < 65536  # fits a pull-request comment
    assert "| ioctls | `KVM_SET_MEMORY_REGION` | removed:" in md


def test_rules_table_is_documented() -> None:
    """docs/diff.md lists every rule with its classification, and nothing else."""
    text = (REPO / "docs" / "diff.md").read_text()
    rows = dict(re.findall(r"^\| `([a-z_]+\.[a-z_]+)` \| \*?\*?(break|addition|compatible)", text, re.M))
    assert rows == {r.id: r.classification for r in RULES.values()}
    assert f'"version": {diff.SCHEMA_VERSION}' in text


def test_every_rule_has_a_known_kind_and_classification() -> None:
    for rule in RULES.values():
        assert diff.rule_kind(rule.id) in diff.KINDS
        assert rule.classification in diff.CLASSIFICATIONS and rule.change in ("added", "removed", "changed")
        assert rule.label and rule.when and rule.why


def test_reports_cover_consecutive_bundled_pairs() -> None:
    # that the committed files equal them is the drift test's job (tests/test_generator.py)
    files = diff.reports()
    assert sorted(files) == sorted(f"reports/{a}-{b}-{arch}.md" for arch in ("x86_64", "arm64")
                                   for a, b in (("5.10", "6.1"), ("6.1", "6.12"), ("6.12", "7.2")))
    sources = {p.name: p.read_text() for p in (REPO / "generated").glob("*linux_*.py")}
    assert diff.reports(sources) == files  # from files about to be written, as `generate` does


def test_command_writes_to_the_given_stream() -> None:
    out, err = io.StringIO(), io.StringIO()
    assert diff.command("6.12", "7.2", "x86_64", None, "text", False, out, err) == 0
    assert out.getvalue().startswith("KVM ABI diff 6.12 (6.12.117) -> 7.2 (7.2.13) on x86_64")
    assert err.getvalue() == ""
