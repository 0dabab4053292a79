"""The package as users get it (issue 13): the sdist and the wheel, and what works without a checkout.

The slow part (marked `slow`, about a minute) builds the sdist and the wheel from a copy of this tree with
`python -m build`, installs the wheel into a fresh venv in a temporary directory, and runs the installed
`kvm-bindgen` there, far from any checkout: --version, summary, diff, fetch and `generate --check` (on the
cache, $KVM_BINDGEN_CACHE or ~/.cache/kvm-bindgen; downloaded into it when missing), and `generate` without
the codegen extra. Then it unpacks the sdist and checks that its test suite collects. The fast part checks
the metadata's sources and the CLI's messages in-process.
"""

from __future__ import annotations

import email
import io
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tarfile
import tomllib
import venv
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

import kvm
from kvm_bindgen import cli, diff, inputs

ROOT = pathlib.Path(__file__).resolve().parents[1]
# What a copy of the tree to build from leaves out (never part of a distribution).
IGNORE = shutil.ignore_patterns(".git", ".venv", ".tox", "build", "dist", "*.egg-info", "__pycache__", "*.so",
                                ".mypy_cache", ".pytest_cache", ".hypothesis")
# In the sdist, beyond the packages: what running its tests, tox and the docs needs.
SDIST_FILES = ("LICENSE", "README.md", "tox.ini", "MANIFEST.in", "setup.py", "pyproject.toml",
               "headers/manifest.toml", "tests/conftest.py", "tests/guests.py", "tests/generated_fds.py",
               "docs/pipeline.md", "docs/diff.md", "examples/hello_real_mode.py", "bench/run.py",
               "bench/baseline.c", "bench/README.md", "kvm/_speedups.c", "generated/.kvm-bindgen-manifest",
               "generated/reports/6.12-7.2-x86_64.md", "codegen/templates/binding.py.j2", ".ci/run")


# ---------------------------------------------------------------------------------------------
# Fast: where the metadata comes from, and the CLI's messages


def test_the_version_has_one_source() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "kvm.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+", kvm.__version__)


def test_license_is_an_spdx_expression_with_its_file() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "MIT" and project["license-files"] == ["LICENSE"]
    assert (ROOT / "LICENSE").read_text().startswith("MIT License\n\nCopyright (c) ")
    assert "the kvm-bindgen-py authors" in (ROOT / "LICENSE").read_text()
    assert not [c for c in project["classifiers"] if c.startswith("License ::")]  # PEP 639: the expression only
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    assert requires == ["setuptools>=77"]  # the first to read `license = "MIT"`


def test_the_manifest_is_one_file_shipped_as_package_data() -> None:
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert setuptools["package-dir"]["kvm_bindgen.headers"] == "headers"
    assert setuptools["package-data"]["kvm_bindgen.headers"] == ["manifest.toml"]
    assert inputs.MANIFEST == ROOT / "headers" / "manifest.toml"  # in a checkout; see the wheel test below
    assert not (ROOT / "codegen" / "headers").exists()


def test_version_names_the_bundled_kernels(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--version"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"kvm-bindgen {kvm.__version__}; bundled kernels: 5.10 (5.10.223): arm64 x86_64; ")
    assert "7.2 (7.2.13): arm64 loongarch64 mips64el ppc64le riscv64 s390x x86_64" in out


def test_summary_explains_the_na_column(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["summary"]) == 0
    out = capsys.readouterr().out
    assert " n/a " in out.splitlines()[0]
    assert "n/a: ioctls linux/kvm.h declares that the arch cannot" in out and "UNAVAILABLE_IOCTLS" in out


def test_a_missing_codegen_extra_is_named_in_one_line(tmp_path: pathlib.Path) -> None:
    code = ("import sys; sys.modules['jinja2'] = None; from kvm_bindgen import cli; "
            f"sys.exit(cli.main(['generate', '--headers', {str(tmp_path)!r}, '--out', {str(tmp_path / 'o')!r}]))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert done.stderr == ("kvm-bindgen generate needs jinja2, which is not installed: install the codegen "
                           "extra, pip install 'kvm-bindgen-py[codegen]'\n")


def test_diff_counts_as_breaks_only_what_existed_on_the_arch(capsys: pytest.CaptureFixture[str]) -> None:
    old, new = diff.bundled("6.1", "x86_64"), diff.bundled("6.12", "x86_64")
    everything = diff.diff(old, new)
    scoped = diff.diff(old, new, all_arches=False)
    assert sorted(scoped.changes + scoped.elsewhere, key=diff.Change.sort_key) == list(everything.changes)
    breaks = {c.name for c in scoped.breaks}
    elsewhere = {c.name for c in scoped.elsewhere}
    # Removed from linux/kvm.h, documented for x86 (or for all): breaks on x86_64.
    assert {"KVM_SET_MEMORY_REGION", "KVM_ASSIGN_PCI_DEVICE", "struct kvm_assigned_pci_dev"} <= breaks
    # s390's and powerpc's, moved to their own asm/kvm.h: never usable on x86_64, so never a break there.
    assert {"KVM_S390_MEM_OP", "KVM_PPC_GET_PVINFO", "struct kvm_s390_irq", "KVM_PV_DUMP"} <= elsewhere
    assert not {n for n in breaks if re.search(r"S390|PPC|_ARM_|RISCV|LOONGARCH|MIPS", n, re.I)}
    assert len(scoped.breaks) < len(everything.breaks) / 2
    # The command: scoped by default, the other arches' items in a section of their own, and --all-arches.
    assert cli.main(["diff", "6.1", "6.12", "--arch", "x86_64"]) == 0
    text = capsys.readouterr().out
    summary = text.splitlines()[1]
    assert summary.startswith(f"{len(scoped.breaks)} ABI breaks, ")
    assert f"not counted: {len(scoped.elsewhere)} changes to items only other arches than x86_64 have" in summary
    section = text[text.index("\nOther arches' items, not breaks on x86_64"):]
    assert "KVM_S390_MEM_OP: removed" in section and "KVM_SET_MEMORY_REGION" not in section
    assert cli.main(["diff", "6.1", "6.12", "--arch", "x86_64", "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["counts"]["break"] == len(scoped.breaks) and len(doc["changes"]) == len(scoped.changes)
    assert cli.main(["diff", "6.1", "6.12", "--arch", "x86_64", "--all-arches", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["counts"]["break"] == len(everything.breaks)
    # The arm64 side: arm's own items stay, x86's go apart.
    arm = diff.diff(diff.bundled("6.12", "arm64"), diff.bundled("7.2", "arm64"), all_arches=False)
    assert "KVM_X86_DISABLE_VALID_EXITS" in {c.name for c in arm.elsewhere}
    assert not {c.name for c in arm.elsewhere if re.search(r"_ARM|ARM64", c.name)}


def test_pipeline_doc_links_stay_in_the_repository() -> None:
    text = (ROOT / "docs" / "pipeline.md").read_text()
    for target in re.findall(r"\]\(([^)]+)\)", text):
        assert "://" not in target, target
        path = (ROOT / "docs" / target.split("#")[0]).resolve()
        assert path.is_relative_to(ROOT) and path.exists(), target
    assert "../shared" not in text


# ---------------------------------------------------------------------------------------------
# Slow: build, install, run from the wheel; collect from the sdist


@dataclass
class Built:
    sdist: pathlib.Path
    wheel: pathlib.Path
    venv: pathlib.Path
    home: pathlib.Path  # a directory far from any checkout, the installed commands' cwd
    src: pathlib.Path  # the copy of this tree they were built from

    def bin(self, name: str) -> str:
        return str(self.venv / "bin" / name)

    def run(self, *argv: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, cwd=self.home,
                              env={**clean, **(env or {})})

    def pip(self, *args: str, command: str = "install") -> None:
        """pip install into the venv, run by this interpreter's pip (a venv without its own pip is made faster)."""
        done = self.run(sys.executable, "-m", "pip", "--python", self.bin("python"), command, "--quiet", *args,
                        timeout=600)
        assert done.returncode == 0, done.stderr


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Built]:
    try:
        import build  # noqa: F401  (the `test` extra has it)
    except ImportError:
        pytest.skip("python -m build is not installed (pip install build, or the `test` extra)")
    tmp = tmp_path_factory.mktemp("packaging")
    src = tmp / "src"
    shutil.copytree(ROOT, src, ignore=IGNORE, symlinks=True)
    done = subprocess.run([sys.executable, "-m", "build", "--outdir", str(tmp / "dist"), str(src)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (sdist,) = (tmp / "dist").glob("*.tar.gz")
    (wheel,) = (tmp / "dist").glob("*.whl")
    venv.EnvBuilder(with_pip=False).create(tmp / "venv")
    home = tmp / "home"
    home.mkdir()
    result = Built(sdist, wheel, tmp / "venv", home, src)
    result.pip(str(wheel), "pytest>=8", "hypothesis>=6")  # not the codegen extra: see the tests below
    yield result


@pytest.mark.slow
def test_wheel_metadata(built: Built) -> None:
    with zipfile.ZipFile(built.wheel) as whl:
        names = set(whl.namelist())
        (meta_name,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        meta = email.message_from_bytes(whl.read(meta_name))
    assert meta["Version"] == kvm.__version__
    assert meta["License-Expression"] == "MIT" and meta["License-File"] == "LICENSE"
    classifiers = meta.get_all("Classifier") or []
    for needed in ("Programming Language :: Python :: 3.11", "Programming Language :: Python :: 3.12",
                   "Programming Language :: Python :: 3.13", "Operating System :: POSIX :: Linux"):
        assert needed in classifiers
    assert meta.get_all("Project-URL")
    assert meta["Requires-Python"] == ">=3.11"
    for name in ("kvm/py.typed", "kvm_bindgen/headers/manifest.toml", "kvm/generated/.kvm-bindgen-manifest",
                 "kvm/generated/reports/6.12-7.2-x86_64.md", "kvm_bindgen/templates/binding.py.j2"):
        assert name in names, name
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)


@pytest.mark.slow
def test_installed_cli_works_without_the_checkout(built: Built) -> None:
    kvm_bindgen = built.bin("kvm-bindgen")
    version = built.run(kvm_bindgen, "--version")
    assert version.returncode == 0 and version.stdout.startswith(f"kvm-bindgen {kvm.__version__}; bundled kernels: ")
    assert "6.12 (6.12.117): arm64" in version.stdout
    summary = built.run(kvm_bindgen, "summary")
    assert summary.returncode == 0 and "n/a: ioctls" in summary.stdout, summary.stderr
    report = built.run(kvm_bindgen, "diff", "6.12", "7.2", "--arch", "x86_64")
    assert report.returncode == 0, report.stderr
    assert report.stdout.startswith("KVM ABI diff 6.12 (6.12.117) -> 7.2 (7.2.13) on x86_64\n")
    assert "\nOther arches' items, not breaks on x86_64" in report.stdout
    # The manifest is found in the installed package, and says where it is.
    site = built.run(built.bin("python"), "-c", "import kvm_bindgen.inputs as i; print(i.MANIFEST)").stdout.strip()
    assert site.endswith("site-packages/kvm_bindgen/headers/manifest.toml") and pathlib.Path(site).is_file()
    unknown = built.run(kvm_bindgen, "repin", "9.9")
    assert unknown.returncode == 2 and unknown.stderr.startswith(f"{site}: no kernel '9.9' is pinned"), unknown.stderr
    # Without the codegen extra (cffi brings pycparser, not jinja2): one line naming the extra.
    built.pip("--yes", "jinja2", command="uninstall")  # whatever ran before
    bare = built.run(kvm_bindgen, "generate", "--check")
    assert bare.returncode == 2 and bare.stderr.count("\n") == 1, bare.stderr
    assert "pip install 'kvm-bindgen-py[codegen]'" in bare.stderr and "Traceback" not in bare.stderr


@pytest.mark.slow
def test_installed_generate_check_and_fetch_from_the_cache(built: Built) -> None:
    built.pip("jinja2>=3.1", "pycparser>=2.21")
    env = {"KVM_BINDGEN_CACHE": str(inputs.cache_dir())}
    fetched = built.run(built.bin("kvm-bindgen"), "fetch", env=env, timeout=1800)
    assert fetched.returncode == 0, fetched.stderr
    assert f"cache: {inputs.cache_dir()}" in fetched.stdout
    check = built.run(built.bin("kvm-bindgen"), "generate", "--check", env=env, timeout=900)
    assert check.returncode == 0, check.stdout + check.stderr
    assert re.match(r"generated/: \d+ files, no drift", check.stdout), check.stdout


@pytest.mark.slow
def test_the_sdist_is_complete_and_its_tests_collect(built: Built, tmp_path: pathlib.Path) -> None:
    with tarfile.open(built.sdist) as tar:
        tar.extractall(tmp_path, filter="data")
    (top,) = tmp_path.iterdir()
    for name in SDIST_FILES:
        assert (top / name).is_file(), name
    tests_built = {p.name for p in (built.src / "tests").glob("*.py")}  # the tree as it was copied
    assert {p.name for p in (top / "tests").glob("*.py")} == tests_built
    built.pip("jinja2>=3.1", "pycparser>=2.21")  # the `test` extra's, which the suite imports
    # The `pytest` script, not `python -m pytest`: the unpacked sources must not shadow the installed package.
    done = built.run(built.bin("pytest"), "--collect-only", "-q", "-p", "no:cacheprovider", str(top / "tests"),
                     env={"PYTHONDONTWRITEBYTECODE": "1"})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "error" not in done.stdout.lower().split("collected")[-1], done.stdout[-2000:]
    collected = int(re.search(r"(\d+) tests? collected", done.stdout).group(1))  # type: ignore[union-attr]
    assert collected > 400, done.stdout[-2000:]
    where = built.run(built.bin("python"), "-c", "import kvm, kvm_bindgen; print(kvm.__file__, kvm_bindgen.__file__)")
    assert str(ROOT) not in where.stdout and "site-packages" in where.stdout


USER_PROGRAM = """\
import kvm
from kvm.x86 import X86Vcpu

with kvm.Kvm() as k, k.create_vm() as vm:
    vcpu = vm.create_vcpu(0)
    exit = vcpu.run()
    reveal_type(vcpu.run())
    reveal_type(vcpu.regs)
    if isinstance(exit, kvm.IoExit):
        reveal_type(exit.port)
    assert isinstance(vcpu, X86Vcpu)  # the arch's members: narrow to its mixin
    reveal_type(vcpu.sregs)
"""


@pytest.mark.slow
def test_users_type_check_against_the_installed_package(built: Built) -> None:
    """`mypy --strict` on a user's program, seeing kvm only as the wheel installed it (py.typed)."""
    mypy = pytest.importorskip("mypy.api")
    program = built.home / "user_program.py"
    program.write_text(USER_PROGRAM)
    out, err, status = mypy.run(["--strict", "--python-executable", built.bin("python"), "--no-incremental",
                                 "--cache-dir", os.devnull, str(program)])
    revealed = [line.split("Revealed type is ", 1)[1] for line in out.splitlines() if "Revealed type is" in line]
    assert status == 0 and revealed == ['"kvm.exits.Exit"', '"kvm.marshal.Record"', '"int"', '"kvm.marshal.Record"'], \
        out + err
