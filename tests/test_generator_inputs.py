"""Hostile inputs to `kvm-bindgen` (issue 12): each is refused with `file:line: what is wrong` (or `file: ...`)
and exit status 2, never a traceback, and never at the cost of a file in --out that kvm-bindgen did not write.

Each broken headers tree is a copy of a real cached one with one thing broken. The network cases point
KVM_BINDGEN_MIRROR at a closed local port or a local HTTP server that answers 404, so no internet is needed.
"""

from __future__ import annotations

import functools
import http.server
import lzma
import os
import pathlib
import random
import re
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator

import pytest

from kvm_bindgen import cli, inputs
from kvm_bindgen.arches import ARCHES

USER_FILES = {"main.py": "print('mine')\n", "setup.py": "# my setup\n", "reports/notes.md": "my notes\n"}


def run(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kvm_bindgen.cli", *argv], capture_output=True, text=True,
                          timeout=300, env={**os.environ, **(env or {})})


def refused(done: subprocess.CompletedProcess[str], where: str, what: str) -> None:
    """Exit status 2, and stderr opens with `where: ` (file or file:line) and says `what`."""
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    assert done.stderr.startswith(f"{where}: "), done.stderr
    assert re.search(what, done.stderr), done.stderr


def write_user_files(out: pathlib.Path) -> None:
    for name, text in USER_FILES.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text(text)


def assert_user_files_survive(out: pathlib.Path) -> None:
    for name, text in USER_FILES.items():
        assert (out / name).read_text() == text, name


@pytest.fixture(scope="module")
def base_tree(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """A copy of the real 6.12 x86_64 headers tree, as `make headers_install` lays one out."""
    try:
        tree = inputs.bundled_tree(inputs.load_manifest()["6.12"], "x86_64", download=False)
    except inputs.InputError as e:
        pytest.skip(f"input not available: {e}")
    root = tmp_path_factory.mktemp("base")
    for name in ("linux", "asm-generic"):
        shutil.copytree(tree.include_dirs[1] / name, root / "include" / name)
    shutil.copytree(tree.include_dirs[0] / "asm", root / "include" / "asm", symlinks=False)
    return root


@pytest.fixture()
def tree(base_tree: pathlib.Path, tmp_path: pathlib.Path) -> pathlib.Path:
    shutil.copytree(base_tree, tmp_path / "tree")
    return tmp_path / "tree"


@pytest.fixture(scope="module")
def good_out(base_tree: pathlib.Path, tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """An --out directory kvm-bindgen generated, to which its user then added files of their own."""
    out = tmp_path_factory.mktemp("good") / "out"
    done = run("generate", "--headers", str(base_tree), "--arch", "x86_64", "--out", str(out))
    assert done.returncode == 0, done.stderr
    write_user_files(out)
    return out


@pytest.fixture()
def out(good_out: pathlib.Path, tmp_path: pathlib.Path) -> pathlib.Path:
    shutil.copytree(good_out, tmp_path / "out")
    return tmp_path / "out"


def kvm_h(tree: pathlib.Path) -> pathlib.Path:
    return (tree / "include" / "linux" / "kvm.h").resolve()


def insert_member(tree: pathlib.Path, member: str) -> int:
    """Add a member to struct kvm_userspace_memory_region; returns its line."""
    lines = kvm_h(tree).read_text().splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("struct kvm_userspace_memory_region {"))
    lines.insert(at + 1, member)
    kvm_h(tree).write_text("\n".join(lines) + "\n")
    return at + 2


def define_line(tree: pathlib.Path, name: str) -> int:
    lines = kvm_h(tree).read_text().splitlines()
    return next(i for i, line in enumerate(lines) if re.match(rf"#define {name}\s", line)) + 1


def random_bytes(tree: pathlib.Path) -> tuple[int | None, str]:
    kvm_h(tree).write_bytes(random.Random(12).randbytes(4000))
    return -1, ""  # some line of kvm.h


def empty(tree: pathlib.Path) -> tuple[int | None, str]:
    kvm_h(tree).write_text("")
    return None, "no struct kvm_run"


def without_kvm_run(tree: pathlib.Path) -> tuple[int | None, str]:
    kvm_h(tree).write_text(kvm_h(tree).read_text().replace("struct kvm_run {", "struct kvm_run_gone {"))
    return None, "no struct kvm_run"


def undefined_macro_in_ioctl(tree: pathlib.Path) -> tuple[int | None, str]:
    text = re.sub(r"^#define KVM_RUN\s.*$", "#define KVM_RUN _IO(KVMIO, NO_SUCH_MACRO)", kvm_h(tree).read_text(),
                  flags=re.M)
    kvm_h(tree).write_text(text)
    return define_line(tree, "KVM_RUN"), "KVM_RUN.*NO_SUCH_MACRO"


def negative_array(tree: pathlib.Path) -> tuple[int | None, str]:
    return insert_member(tree, "\tchar a[-1];"), "'a'.*negative"


def huge_array(tree: pathlib.Path) -> tuple[int | None, str]:
    return insert_member(tree, "\tchar a[1<<62];"), "'a'.*shift by 62"


def huge_unsigned_array(tree: pathlib.Path) -> tuple[int | None, str]:
    return insert_member(tree, "\tchar a[1ULL<<62];"), "'a'.*array size 4611686018427387904"


def ioctl_argument_too_big(tree: pathlib.Path) -> tuple[int | None, str]:
    insert_member(tree, "\tchar a[1 << 20];")
    return define_line(tree, "KVM_SET_USER_MEMORY_REGION"), "KVM_SET_USER_MEMORY_REGION.*14-bit ioctl size"


def wide_bitfield(tree: pathlib.Path) -> tuple[int | None, str]:
    return insert_member(tree, "\t__u32 bits : 40;"), "'bits'.*width 40.*32-bit"


def duplicate_member(tree: pathlib.Path) -> tuple[int | None, str]:
    # (inserted first in the struct: the error names the later declaration, the header's own `slot`, as gcc does)
    return insert_member(tree, "\t__u32 slot;") + 1, "duplicate member 'slot' in struct kvm_userspace_memory_region"


def nul_bytes(tree: pathlib.Path) -> tuple[int | None, str]:
    lines = kvm_h(tree).read_text().splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("struct kvm_userspace_memory_region {"))
    lines[at + 1] += "\0\0"
    kvm_h(tree).write_text("\n".join(lines) + "\n")
    return at + 2, "NUL"


@pytest.mark.parametrize("breakage", [random_bytes, empty, without_kvm_run, undefined_macro_in_ioctl, negative_array,
                                      huge_array, huge_unsigned_array, ioctl_argument_too_big, wide_bitfield,
                                      duplicate_member, nul_bytes], ids=lambda f: f.__name__)
def test_broken_headers_are_refused_at_their_line(breakage: Callable[[pathlib.Path], tuple[int | None, str]],
                                                  tree: pathlib.Path, out: pathlib.Path) -> None:
    line, what = breakage(tree)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    done = run("generate", "--headers", str(tree), "--arch", "x86_64", "--out", str(out))
    if line == -1:
        line = int(re.match(rf"{re.escape(str(kvm_h(tree)))}:(\d+): ", done.stderr).group(1))  # type: ignore[union-attr]
    refused(done, f"{kvm_h(tree)}:{line}" if line else str(kvm_h(tree)), what)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_generate_refuses_a_directory_it_did_not_write(base_tree: pathlib.Path, tmp_path: pathlib.Path) -> None:
    out = tmp_path / "project"
    write_user_files(out)
    done = run("generate", "--headers", str(base_tree), "--arch", "x86_64", "--out", str(out))
    refused(done, str(out), f"no {cli.MANIFEST}")
    assert_user_files_survive(out)
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == sorted(USER_FILES)


def test_regenerating_removes_only_stale_files_it_wrote(base_tree: pathlib.Path, out: pathlib.Path) -> None:
    manifest = out / cli.MANIFEST
    manifest.write_text(manifest.read_text() + "linux_0_0_x86_64.py\n")
    (out / "linux_0_0_x86_64.py").write_text("# an older output\n")
    done = run("generate", "--headers", str(base_tree), "--arch", "x86_64", "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert not (out / "linux_0_0_x86_64.py").exists()
    assert "linux_0_0_x86_64.py" not in manifest.read_text()
    assert_user_files_survive(out)


def test_generate_refuses_to_overwrite_a_file_it_did_not_write(base_tree: pathlib.Path, tmp_path: pathlib.Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / cli.MANIFEST).write_text("")
    (out / "__init__.py").write_text("# mine\n")
    done = run("generate", "--headers", str(base_tree), "--arch", "x86_64", "--out", str(out))
    refused(done, str(out), "__init__.py would be overwritten")
    assert (out / "__init__.py").read_text() == "# mine\n"


def test_a_manifest_naming_files_outside_the_directory_is_refused(base_tree: pathlib.Path, out: pathlib.Path) -> None:
    victim = out.parent / "victim.py"
    victim.write_text("keep\n")
    manifest = out / cli.MANIFEST
    manifest.write_text(manifest.read_text() + "../victim.py\n")
    done = run("generate", "--headers", str(base_tree), "--arch", "x86_64", "--out", str(out))
    refused(done, f"{manifest}:{len(manifest.read_text().splitlines())}", "not a file kvm-bindgen writes")
    assert victim.read_text() == "keep\n"
    assert_user_files_survive(out)


def test_out_naming_a_regular_file_is_refused(base_tree: pathlib.Path, tmp_path: pathlib.Path) -> None:
    target = tmp_path / "notes.txt"
    target.write_text("mine\n")
    done = run("generate", "--headers", str(base_tree), "--arch", "x86_64", "--out", str(target))
    refused(done, str(target), "not a directory")
    assert target.read_text() == "mine\n"


@pytest.mark.parametrize("content", [None, b"\x89PNG\r\n\x1a\n\x00\xff\xfe" * 100, b"just some text\n"],
                         ids=["missing", "binary", "not-api-rst"])
def test_bad_api_rst_is_refused(content: bytes | None, base_tree: pathlib.Path, out: pathlib.Path,
                                tmp_path: pathlib.Path) -> None:
    api_rst = tmp_path / "api.rst"
    if content is not None:
        api_rst.write_bytes(content)
    done = run("generate", "--headers", str(base_tree), "--arch", "x86_64", "--out", str(out), "--api-rst", str(api_rst))
    refused(done, str(api_rst), {None: "No such file", b"just some text\n": "not KVM's api.rst"}.get(content, "not a text file"))
    assert_user_files_survive(out)


# ---------------------------------------------------------------------------------------------
# Pinned inputs and the mirror


@pytest.fixture()
def closed_port_mirror() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture()
def not_found_mirror(tmp_path: pathlib.Path) -> Iterator[str]:
    """A local HTTP server with nothing to serve: every request is a 404."""
    (tmp_path / "www").mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path / "www"))
    handler.log_message = lambda *args: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def first_package() -> inputs.Package:
    kernel = next(iter(inputs.load_manifest().values()))
    return kernel.headers_package(ARCHES[kernel.arches[0]])


def test_repin_of_an_unknown_kernel_is_refused() -> None:
    before = inputs.MANIFEST.read_text()
    refused(run("repin", "9.9"), str(inputs.MANIFEST), "'9.9'")
    assert inputs.MANIFEST.read_text() == before


@pytest.mark.parametrize("mirror", ["closed_port_mirror", "not_found_mirror"])
def test_repin_without_the_mirror_is_refused(mirror: str, request: pytest.FixtureRequest) -> None:
    base = request.getfixturevalue(mirror)
    before = inputs.MANIFEST.read_text()
    done = run("repin", "6.12", env={"KVM_BINDGEN_MIRROR": base})
    refused(done, f"{base}/debian/dists/{inputs.load_manifest()['6.12'].suite}/main/binary-amd64/Packages.xz",
            "HTTP 404" if mirror == "not_found_mirror" else "cannot download")
    assert inputs.MANIFEST.read_text() == before


@pytest.mark.parametrize("mirror", ["closed_port_mirror", "not_found_mirror"])
def test_fetch_without_the_mirror_is_refused(mirror: str, request: pytest.FixtureRequest,
                                             tmp_path: pathlib.Path) -> None:
    base = request.getfixturevalue(mirror)
    done = run("fetch", env={"KVM_BINDGEN_MIRROR": base, "KVM_BINDGEN_CACHE": str(tmp_path)})
    kernel = next(iter(inputs.load_manifest().values()))
    url = f"{base}/debian/dists/{kernel.suite}/main/binary-amd64/Packages.xz"  # fetch reads the index first
    refused(done, url, "HTTP 404" if mirror == "not_found_mirror" else "cannot download")
    assert "not in the cache" in done.stderr and "pin gone" not in done.stderr  # a 404 is not a gone pin


def test_mirror_that_is_a_missing_path_is_refused(tmp_path: pathlib.Path) -> None:
    done = run("fetch", env={"KVM_BINDGEN_MIRROR": "/some/path", "KVM_BINDGEN_CACHE": str(tmp_path)})
    refused(done, "/some/path", "neither a URL nor a directory")


def test_cached_deb_with_a_wrong_sha256_is_reported_as_such(tmp_path: pathlib.Path, closed_port_mirror: str) -> None:
    cached = tmp_path / "debs" / first_package().filename
    cached.parent.mkdir()
    cached.write_bytes(b"!<arch>\nnot the pinned package\n")
    done = run("fetch", env={"KVM_BINDGEN_MIRROR": closed_port_mirror, "KVM_BINDGEN_CACHE": str(tmp_path)})
    refused(done, str(cached), "sha256 [0-9a-f]{64} of the cached file does not match the pin")
    assert "not in the cache" not in done.stderr


def test_cached_deb_with_a_wrong_sha256_is_downloaded_again_from_a_mirror_directory(
        tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    pkg = first_package()
    good = inputs.cache_dir() / "debs" / pkg.filename
    if not good.is_file():
        pytest.skip(f"{good} is not in the cache")
    mirror = tmp_path / "mirror"
    kernel = inputs.load_manifest()[pkg.kernel]
    filename = f"pool/main/l/linux/{pkg.filename}"
    (mirror / kernel.archive / filename).parent.mkdir(parents=True)
    (mirror / kernel.archive / filename).symlink_to(good)
    index = mirror / kernel.archive / "dists" / kernel.suite / "main" / "binary-amd64" / "Packages.xz"
    index.parent.mkdir(parents=True)
    index.write_bytes(lzma.compress(f"Package: {pkg.name}\nVersion: {pkg.version}\nArchitecture: {pkg.deb_arch}\n"
                                    f"Filename: {filename}\nSHA256: {pkg.sha256}\n".encode()))
    cache = tmp_path / "cache"
    (cache / "debs").mkdir(parents=True)
    (cache / "debs" / pkg.filename).write_bytes(b"corrupt")
    monkeypatch.setenv("KVM_BINDGEN_CACHE", str(cache))
    monkeypatch.setenv("KVM_BINDGEN_MIRROR", str(mirror))  # a path, read through file:// URLs
    path = inputs.downloaded(pkg)
    assert path.read_bytes() == good.read_bytes()
    assert "does not match the pin" in capsys.readouterr().err
