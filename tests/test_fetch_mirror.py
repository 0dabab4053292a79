"""`kvm-bindgen fetch`, `repin` and `generate --check` against a local Debian mirror (issue 13).

The mirror is an http.server on 127.0.0.1 serving a directory laid out like Debian's security archive:
dists/<suite>/main/binary-amd64/Packages.xz, whose `Filename:` fields point under pool/updates/main/, and
the packages there. Its packages are small synthetic .debs pinned by a manifest of their own
(KVM_BINDGEN_MANIFEST), so nothing here needs the internet or the real cache. Each case checks the exit
status and the message: the URL tried, the pin, and what to do.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import io
import lzma
import os
import pathlib
import re
import socket
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Iterator

import pytest

from kvm_bindgen import inputs

KERNEL = "9.9"
SUITE = "testing-security"
ARCHIVE = "debian-security"
POOL = "pool/updates/main/l/linux"  # where the security archive keeps its files: only the index says so
ADVICE_WORDS = ("KVM_BINDGEN_MIRROR", "--headers")


# ---------------------------------------------------------------------------------------------
# Synthetic packages, index and manifest


def _tar_xz(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:xz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"./{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def make_deb(files: dict[str, bytes]) -> bytes:
    """A .deb: an `ar` archive of debian-binary, control.tar.xz and data.tar.xz."""
    out = [b"!<arch>\n"]
    for name, body in (("debian-binary", b"2.0\n"), ("control.tar.xz", _tar_xz({"control": b"Package: x\n"})),
                       ("data.tar.xz", _tar_xz(files))):
        out.append(f"{name:<16}{0:<12}{0:<6}{0:<6}{'100644':<8}{len(body):<10}`\n".encode())
        out.append(body + (b"\n" if len(body) % 2 else b""))
    return b"".join(out)


def headers_deb(version: str) -> bytes:
    return make_deb({
        "usr/include/linux/kvm.h": f"/* linux-libc-dev {version} */\n#define KVM_API_VERSION 12\n".encode(),
        "usr/include/x86_64-linux-gnu/asm/kvm.h": b"/* x86 */\n",
    })


def doc_deb(version: str) -> bytes:
    rst = f"The Definitive KVM API Documentation ({version})\n".encode()
    return make_deb({f"usr/share/doc/linux-doc-{KERNEL}/Documentation/virt/kvm/api.rst.gz": gzip.compress(rst, mtime=0)})


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def stanza(name: str, arch: str, version: str, filename: str, digest: str) -> str:
    return (f"Package: {name}\nSource: linux\nVersion: {version}\nArchitecture: {arch}\n"
            f"Description: synthetic\n for the tests\nFilename: {filename}\nSize: 1\nSHA256: {digest}\n")


def deb_name(name: str, version: str, arch: str) -> str:
    return f"{name}_{version}_{arch}.deb"


class Mirror:
    """A local mirror directory, served over HTTP; `url` is the KVM_BINDGEN_MIRROR value."""

    def __init__(self, root: pathlib.Path, url: str) -> None:
        self.root, self.url = root, url
        self.archive = root / ARCHIVE

    def index_path(self) -> pathlib.Path:
        return self.archive / "dists" / SUITE / "main" / "binary-amd64" / "Packages.xz"

    @property
    def index_url(self) -> str:
        return f"{self.url}/{ARCHIVE}/dists/{SUITE}/main/binary-amd64/Packages.xz"

    def deb_url(self, filename: str) -> str:
        return f"{self.url}/{ARCHIVE}/{POOL}/{filename}"

    def publish(self, version: str, *, files: bool = True, index_sha: dict[str, str] | None = None,
                serve: dict[str, bytes] | None = None) -> dict[str, bytes]:
        """Put version's two packages in the index (and, with `files`, in the pool); returns name -> bytes.

        `index_sha` overrides the sha256 the index gives a file; `serve` the bytes the pool serves."""
        debs = {deb_name("linux-libc-dev", version, "amd64"): headers_deb(version),
                deb_name(f"linux-doc-{KERNEL}", version, "all"): doc_deb(version)}
        text = ""
        for filename, data in debs.items():
            name, _, arch = filename.removesuffix(".deb").split("_")
            digest = (index_sha or {}).get(filename, sha256(data))
            text += stanza(name, arch, version, f"{POOL}/{filename}", digest) + "\n"
            if files:
                path = self.archive / POOL / filename
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes((serve or {}).get(filename, data))
        self.index_path().parent.mkdir(parents=True, exist_ok=True)
        other = stanza("linux-image-amd64", "amd64", "1", "pool/updates/main/l/x.deb", "0" * 64)
        self.index_path().write_bytes(lzma.compress((other + "\n" + text).encode()))
        return debs


def write_manifest(path: pathlib.Path, version: str, debs: dict[str, bytes]) -> pathlib.Path:
    lines = [f'[[kernel]]\nkernel = "{KERNEL}"\nsuite = "{SUITE}"\narchive = "{ARCHIVE}"\narches = ["x86_64"]\n']
    for filename, data in debs.items():
        name, version_, arch = filename.removesuffix(".deb").split("_")
        role = "headers" if name == "linux-libc-dev" else "doc"
        lines.append(f'[[package]]\nkernel = "{KERNEL}"\nrole = "{role}"\nname = "{name}"\nversion = "{version_}"\n'
                     f'deb_arch = "{arch}"\nsha256 = "{sha256(data)}"\n')
    path.write_text("\n".join(lines))
    return path


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    """Serves the mirror directory without logging; files named *.slow trickle out (about 1 s a MB)."""

    def log_message(self, format: str, *args: object) -> None:
        pass

    def copyfile(self, source, outputfile) -> None:  # type: ignore[no-untyped-def]
        if not self.path.endswith(".slow"):
            return super().copyfile(source, outputfile)
        while chunk := source.read(16384):
            outputfile.write(chunk)
            time.sleep(0.015)


@pytest.fixture()
def mirror(tmp_path: pathlib.Path) -> Iterator[Mirror]:
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Mirror(root, f"http://127.0.0.1:{server.server_address[1]}")
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture()
def env(tmp_path: pathlib.Path, mirror: Mirror) -> dict[str, str]:
    """A fresh cache, the synthetic manifest (pinning version 9.9.1-1) and the local mirror."""
    debs = {deb_name("linux-libc-dev", "9.9.1-1", "amd64"): headers_deb("9.9.1-1"),
            deb_name(f"linux-doc-{KERNEL}", "9.9.1-1", "all"): doc_deb("9.9.1-1")}
    manifest = write_manifest(tmp_path / "manifest.toml", "9.9.1-1", debs)
    return {"KVM_BINDGEN_MIRROR": mirror.url, "KVM_BINDGEN_CACHE": str(tmp_path / "cache"),
            "KVM_BINDGEN_MANIFEST": str(manifest)}


def run(*argv: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kvm_bindgen.cli", *argv], capture_output=True, text=True,
                          timeout=120, env={**os.environ, **env})


def error_lines(done: subprocess.CompletedProcess[str]) -> list[str]:
    """stderr without the progress lines ("kvm-bindgen: fetched URL (...)")."""
    return [line for line in done.stderr.splitlines() if not line.startswith("kvm-bindgen: fetched ")]


def refused(done: subprocess.CompletedProcess[str], url: str, *what: str) -> str:
    """Exit status 2, no traceback, and the first error line opens with `url: ` and says each of `what`."""
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    line = error_lines(done)[0]
    assert line.startswith(f"{url}: "), done.stderr
    for text in what:
        assert re.search(text, line), (text, line)
    return line


# ---------------------------------------------------------------------------------------------
# The cases


def test_fetch_follows_the_index_filename_under_pool_updates(mirror: Mirror, env: dict[str, str]) -> None:
    mirror.publish("9.9.1-1")
    done = run("fetch", env=env)
    assert done.returncode == 0, done.stderr
    cache = pathlib.Path(env["KVM_BINDGEN_CACHE"])
    api = cache / "docs" / f"linux-doc-{KERNEL}_9.9.1-1_all" / "api.rst"
    assert f"{KERNEL}   api.rst      {api}" in done.stdout
    assert api.read_text() == "The Definitive KVM API Documentation (9.9.1-1)\n"
    assert (cache / "trees" / "linux-libc-dev_9.9.1-1_amd64" / "usr" / "include" / "linux" / "kvm.h").is_file()
    # Only api.rst is kept of the linux-doc package; the headers package stays.
    assert sorted(p.name for p in (cache / "debs").iterdir()) == ["linux-libc-dev_9.9.1-1_amd64.deb"]
    # Not a terminal: one line per file fetched, the index once for both packages.
    fetched = [line.split()[2] for line in done.stderr.splitlines()]
    assert fetched == [mirror.index_url, mirror.deb_url("linux-libc-dev_9.9.1-1_amd64.deb"),
                       mirror.deb_url(f"linux-doc-{KERNEL}_9.9.1-1_all.deb")], done.stderr
    assert all(re.search(r"\(\d+\.\d MB in \d+\.\d s, \d+\.\d MB/s\)$", line) for line in done.stderr.splitlines())
    # Fetch only what is missing: the second time nothing, not even the index.
    again = run("fetch", env=env)
    assert again.returncode == 0 and again.stderr == "", again.stderr


def test_pin_gone_only_when_the_index_lacks_the_version_and_repin_moves_it(
        mirror: Mirror, env: dict[str, str]) -> None:
    debs = mirror.publish("9.9.2-1")
    done = run("fetch", env=env)
    line = refused(done, mirror.index_url, "pin gone", "linux-libc-dev 9.9.1-1 \\(amd64\\)", "it lists 9.9.2-1",
                   f"`kvm-bindgen repin {KERNEL}`")
    assert "Traceback" not in done.stderr and line
    manifest = pathlib.Path(env["KVM_BINDGEN_MANIFEST"])
    moved = run("repin", KERNEL, env=env)
    assert moved.returncode == 0, moved.stderr
    assert "linux-libc-dev (amd64): 9.9.1-1 -> 9.9.2-1" in moved.stdout and str(manifest) in moved.stdout
    assert all(sha256(data) in manifest.read_text() for data in debs.values())
    assert run("repin", KERNEL, env=env).stdout.startswith("already current")
    assert run("fetch", env=env).returncode == 0


def test_generate_check_fails_naming_the_pair_and_the_fix_when_a_pin_is_gone(
        mirror: Mirror, env: dict[str, str]) -> None:
    mirror.publish("9.9.2-1")
    done = run("generate", "--check", env=env)
    assert done.returncode != 0, done.stdout
    assert "SKIPPED" not in done.stdout + done.stderr and "no drift" not in done.stdout
    last = error_lines(done)[-1]
    assert last.startswith(f"kvm-bindgen generate --check: FAILED, drift NOT checked for {KERNEL} x86_64:"), last
    assert f"`kvm-bindgen repin {KERNEL}`" in last


def test_a_file_the_index_lists_but_the_mirror_does_not_serve_is_not_a_gone_pin(
        mirror: Mirror, env: dict[str, str]) -> None:
    mirror.publish("9.9.1-1", files=False)
    url = mirror.deb_url("linux-libc-dev_9.9.1-1_amd64.deb")
    line = refused(run("fetch", env=env), url, "HTTP 404", "lists linux-libc-dev 9.9.1-1 \\(amd64\\)", *ADVICE_WORDS)
    assert "pin gone" not in line and "repin" not in line


def test_a_mirror_without_the_index_says_so(mirror: Mirror, env: dict[str, str]) -> None:
    line = refused(run("fetch", env=env), mirror.index_url, "HTTP 404", "linux-libc-dev 9.9.1-1 \\(amd64\\)",
                   *ADVICE_WORDS)
    assert "pin gone" not in line
    line = refused(run("repin", KERNEL, env=env), mirror.index_url, "HTTP 404", f"repin {KERNEL}", "KVM_BINDGEN_MIRROR")


def test_a_download_with_a_wrong_sha256_is_refused_and_not_cached(mirror: Mirror, env: dict[str, str]) -> None:
    name = "linux-libc-dev_9.9.1-1_amd64.deb"
    mirror.publish("9.9.1-1", serve={name: headers_deb("tampered")})
    refused(run("fetch", env=env), mirror.deb_url(name), "has sha256 [0-9a-f]{64}, not the pinned [0-9a-f]{64}",
            "KVM_BINDGEN_MIRROR")
    assert not (pathlib.Path(env["KVM_BINDGEN_CACHE"]) / "debs" / name).exists()


def test_an_index_listing_another_sha256_for_the_pinned_version_is_refused(
        mirror: Mirror, env: dict[str, str]) -> None:
    name = "linux-libc-dev_9.9.1-1_amd64.deb"
    mirror.publish("9.9.1-1", index_sha={name: "ab" * 32})
    refused(run("fetch", env=env), mirror.index_url, f"with sha256 {'ab' * 32}, not the pinned",
            f"`kvm-bindgen repin {KERNEL}`")


def test_a_dead_port_names_the_url_the_pin_and_what_to_do(env: dict[str, str]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dead = f"http://127.0.0.1:{port}"
    done = run("fetch", env={**env, "KVM_BINDGEN_MIRROR": dead})
    url = f"{dead}/{ARCHIVE}/dists/{SUITE}/main/binary-amd64/Packages.xz"
    refused(done, url, "cannot download", "linux-libc-dev 9.9.1-1 \\(amd64\\), pinned for kernel 9.9",
            "not in the cache", *ADVICE_WORDS)
    assert len(error_lines(done)) == 2  # the error, then what it leaves out and the fix
    assert error_lines(done)[1].startswith(f"kvm-bindgen fetch: FAILED for {KERNEL} x86_64:")


def test_a_mirror_directory_works_like_a_url(mirror: Mirror, env: dict[str, str]) -> None:
    mirror.publish("9.9.1-1")
    done = run("fetch", env={**env, "KVM_BINDGEN_MIRROR": str(mirror.root)})
    assert done.returncode == 0, done.stderr
    assert f"file://{mirror.root}/{ARCHIVE}/{POOL}/linux-libc-dev_9.9.1-1_amd64.deb" in done.stderr


def test_progress_on_a_terminal_is_one_line_updated_in_place(mirror: Mirror, monkeypatch: pytest.MonkeyPatch) -> None:
    body = os.urandom(700_000)
    (mirror.root / "big.slow").write_bytes(body)

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert inputs._get(f"{mirror.url}/big.slow", timeout=10) == body
    text = terminal.getvalue()
    assert text.count("\n") == 1 and text.endswith("MB/s)\n"), text  # one line, rewritten in place
    updates = text.split("\r")[1:-1]
    assert updates and all(re.fullmatch(r"  big\.slow: \d+\.\d MB of 0\.7 MB, \d+\.\d MB/s\x1b\[K", u) for u in updates), text
    assert text.split("\r")[-1].startswith(f"\x1b[K  fetched {mirror.url}/big.slow (0.7 MB in ")
