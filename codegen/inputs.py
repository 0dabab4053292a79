"""Pinned kernel inputs: the manifest in headers/, the download cache, and headers trees.

A *headers tree* is any directory laid out like `make headers_install` output or /usr/include: it
holds `linux/kvm.h`, and `asm/kvm.h` either beside it or under a Debian multiarch directory.
Bundled kernels come from Debian packages pinned by sha256 in headers/manifest.toml (installed as
package data, kvm_bindgen/headers/manifest.toml); they are located through their suite's Packages index
(its `Filename:` for the pinned version), downloaded once into the cache (`$KVM_BINDGEN_CACHE`, default
~/.cache/kvm-bindgen) and unpacked there; of a linux-doc package only api.rst is kept.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import lzma
import os
import pathlib
import re
import sys
import tarfile
import time
import tomllib
import urllib.error
import urllib.request

from .arches import ARCHES, Arch

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
# One file, headers/manifest.toml: pyproject.toml installs it as package data (kvm_bindgen/headers/), so an
# installed kvm-bindgen finds it beside this module; a checkout finds it in headers/.
_INSTALLED_MANIFEST = pathlib.Path(__file__).resolve().parent / "headers" / "manifest.toml"
MANIFEST = _INSTALLED_MANIFEST if _INSTALLED_MANIFEST.is_file() else REPO_ROOT / "headers" / "manifest.toml"
APT_SOURCES = [pathlib.Path("/etc/apt/sources.list.d"), pathlib.Path("/etc/apt/sources.list")]
API_RST = "virt/kvm/api.rst"


class InputError(Exception):
    """Bad input: a header, api.rst, output directory or pinned input the generator cannot use.

    `file` (and `line`, where one applies) say where; str() is `file:line: what is wrong`. `kvm-bindgen`
    prints it and exits with status 2.
    """

    def __init__(self, message: str, file: str | os.PathLike[str] | None = None, line: int | None = None):
        super().__init__(message, file, line)  # all in args: survives pickling out of build_all's workers
        self.message, self.file, self.line = message, file, line

    def __str__(self) -> str:
        if self.file is None:
            return self.message
        return f"{self.file}:{self.line}: {self.message}" if self.line else f"{self.file}: {self.message}"


class PinGoneError(InputError):
    """The suite's index no longer lists a pinned version (Debian keeps only each suite's current one)."""


class _Advised(InputError):
    """A mirror error whose message already says what to do."""


class MirrorUnreachable(InputError):
    """No mirror to download from: none configured, or it does not answer (refused, timed out, no route)."""


@dataclasses.dataclass(frozen=True)
class Package:
    kernel: str
    role: str  # "headers" or "doc"
    name: str
    version: str
    deb_arch: str
    sha256: str

    @property
    def filename(self) -> str:
        version = self.version.split(":", 1)[-1]
        return f"{self.name}_{version}_{self.deb_arch}.deb"


@dataclasses.dataclass(frozen=True)
class Kernel:
    kernel: str
    suite: str
    archive: str
    arches: tuple[str, ...]
    packages: tuple[Package, ...]

    def headers_package(self, arch: Arch) -> Package:
        for pkg in self.packages:
            if pkg.role == "headers" and pkg.deb_arch in ("all", arch.deb_arch):
                return pkg
        raise InputError(f"manifest has no linux-libc-dev for kernel {self.kernel} on {arch.name}")

    def doc_package(self) -> Package:
        for pkg in self.packages:
            if pkg.role == "doc":
                return pkg
        raise InputError(f"manifest has no linux-doc package for kernel {self.kernel}")

    @property
    def full_version(self) -> str:
        """The upstream kernel release of the headers, e.g. "6.12.117"."""
        version = self.packages[0].version
        return version.split(":", 1)[-1].split("-", 1)[0].split("~", 1)[0]


def manifest_path() -> pathlib.Path:
    """The manifest in use: `$KVM_BINDGEN_MANIFEST` (e.g. a copy to repin), else the bundled MANIFEST."""
    env = os.environ.get("KVM_BINDGEN_MANIFEST")
    return pathlib.Path(env) if env else MANIFEST


def load_manifest(path: pathlib.Path | None = None) -> dict[str, Kernel]:
    path = path or manifest_path()
    try:
        data = tomllib.loads(path.read_text())
    except OSError as e:
        raise InputError(f"cannot read the manifest: {e.strerror or e}", file=path) from None
    except tomllib.TOMLDecodeError as e:
        raise InputError(f"not a valid manifest: {e}", file=path) from None
    packages = [Package(**p) for p in data.get("package", [])]
    kernels = {}
    for k in data.get("kernel", []):
        mine = tuple(p for p in packages if p.kernel == k["kernel"])
        kernels[k["kernel"]] = Kernel(k["kernel"], k["suite"], k["archive"], tuple(k["arches"]), mine)
    return kernels


def cache_dir() -> pathlib.Path:
    root = os.environ.get("KVM_BINDGEN_CACHE")
    if root:
        return pathlib.Path(root)
    return pathlib.Path.home() / ".cache" / "kvm-bindgen"


# ---------------------------------------------------------------------------------------------
# Headers trees


@dataclasses.dataclass(frozen=True)
class HeadersTree:
    """Include directories that together provide linux/kvm.h and one arch's asm/kvm.h."""

    include_dirs: tuple[pathlib.Path, ...]
    arch: Arch
    linux_version: str  # e.g. "6.12.117", or what the tree's linux/version.h says
    origin: str  # a human-readable description of where it came from

    @property
    def kvm_h(self) -> pathlib.Path:
        return self._find("linux/kvm.h")

    @property
    def asm_kvm_h(self) -> pathlib.Path:
        return self._find("asm/kvm.h")

    def _find(self, name: str) -> pathlib.Path:
        for d in self.include_dirs:
            if (d / name).is_file():
                return d / name
        raise InputError(f"{name} not found in headers tree {self.origin}")


def open_headers_tree(path: str | os.PathLike[str], arch: Arch) -> HeadersTree:
    """A user-supplied headers tree: `make headers_install` output (its usr/ or include/) or /usr/include."""
    root = pathlib.Path(path)
    candidates = [root, root / "include", root / "usr" / "include"]
    for base in candidates:
        if not (base / "linux" / "kvm.h").is_file():
            continue
        dirs = []
        for multiarch in (base / arch.triplet, base / "asm" / ".."):
            if (multiarch / "asm" / "kvm.h").is_file():
                dirs.append(multiarch.resolve())
                break
        dirs.append(base.resolve())
        tree = HeadersTree(tuple(dirs), arch, _version_of_tree(base), f"{root}")
        tree.asm_kvm_h  # fails early, naming what is missing
        return tree
    raise InputError(
        f"{root} is not a headers tree: no linux/kvm.h under it, include/ or usr/include/ "
        "(make one with `make headers_install INSTALL_HDR_PATH=DIR` in a kernel tree)"
    )


def _version_of_tree(base: pathlib.Path) -> str:
    version_h = base / "linux" / "version.h"
    if version_h.is_file():
        text = version_h.read_text()
        m = re.search(r"#define LINUX_VERSION_MAJOR (\d+)\s+#define LINUX_VERSION_PATCHLEVEL (\d+)\s+"
                      r"#define LINUX_VERSION_SUBLEVEL (\d+)", text)
        if m:
            return ".".join(m.groups())
        m = re.search(r"#define LINUX_VERSION_CODE (\d+)", text)
        if m:
            code = int(m.group(1))
            return f"{code >> 16}.{(code >> 8) & 0xFF}.{code & 0xFF}"
    return "unknown"


def bundled_tree(kernel: Kernel, arch_name: str, *, download: bool = True) -> HeadersTree:
    arch = ARCHES[arch_name]
    pkg = kernel.headers_package(arch)
    root = unpacked(pkg, download=download) / "usr" / "include"
    tree = HeadersTree((root / arch.triplet, root), arch, kernel.full_version,
                       f"{pkg.name} {pkg.version} ({pkg.deb_arch})")
    tree.asm_kvm_h
    return tree


def api_rst(kernel: Kernel, *, download: bool = True) -> pathlib.Path:
    """Path of the kernel's Documentation/virt/kvm/api.rst in the cache.

    Only api.rst is kept of the linux-doc package (about 40 MB): it is extracted from the verified .deb,
    stamped with the package's sha256, and the .deb deleted.
    """
    pkg = kernel.doc_package()
    out = cache_dir() / "docs" / pkg.filename.removesuffix(".deb") / "api.rst"
    stamp = out.with_name("api.rst.sha256")
    if out.is_file() and stamp.is_file() and stamp.read_text().strip() == pkg.sha256:
        return out
    deb = downloaded(pkg, download=download)
    member = f"./usr/share/doc/{pkg.name}/Documentation/{API_RST}.gz"
    with _data_tar(deb) as tar:
        try:
            f = tar.extractfile(member)
        except KeyError:
            raise InputError(f"{pkg.filename} has no {member}", file=deb) from None
        assert f is not None
        text = gzip.decompress(f.read())
    out.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(out, text)
    _atomic_write(stamp, pkg.sha256.encode() + b"\n")
    deb.unlink(missing_ok=True)  # api.rst is all the generator reads of it
    return out


# ---------------------------------------------------------------------------------------------
# Download, verify, unpack

# What to do when the mirror cannot give a pinned input, said in every such error.
ADVICE = ("set KVM_BINDGEN_MIRROR to a reachable Debian mirror (a URL, or a directory, holding debian/ and "
          "debian-security/), or generate from a local headers tree: "
          "`kvm-bindgen generate --headers DIR --arch ARCH --out OUT`")


def unpacked(pkg: Package, *, download: bool = True) -> pathlib.Path:
    dest = cache_dir() / "trees" / pkg.filename.removesuffix(".deb")
    stamp = dest / ".complete"
    if stamp.is_file() and stamp.read_text().strip() == pkg.sha256:
        return dest
    deb = downloaded(pkg, download=download)
    with _data_tar(deb) as tar:
        members = [m for m in tar.getmembers()
                   if m.name.startswith(("./usr/include/", "./usr/lib/linux/")) and (m.isfile() or m.isdir() or m.issym())]
        tar.extractall(dest, members=members, filter="data")
    stamp.write_text(pkg.sha256 + "\n")
    return dest


def _pin(pkg: Package) -> str:
    return f"{pkg.name} {pkg.version} ({pkg.deb_arch}), pinned for kernel {pkg.kernel}"


def downloaded(pkg: Package, *, download: bool = True) -> pathlib.Path:
    """The pinned .deb in the cache, verified; downloaded from where the suite's Packages index says."""
    path = cache_dir() / "debs" / pkg.filename
    mismatch = ""
    if path.is_file():
        digest = _sha256(path.read_bytes())
        if digest == pkg.sha256:
            return path
        mismatch = f"sha256 {digest} of the cached file does not match the pin {pkg.sha256}"
        if not download:
            raise InputError(f"{mismatch}; delete it and run `kvm-bindgen fetch`", file=path)
    if not download:
        raise InputError(f"{pkg.filename} is not in the cache {cache_dir() / 'debs'} (run `kvm-bindgen fetch`)")
    kernel = load_manifest()[pkg.kernel]
    try:
        url = locate(pkg, kernel)
        try:
            data = _get(url, timeout=60)
        except _NotFound as e:
            raise _Advised(f"{e.message}: the {kernel.suite} Packages index lists {_pin(pkg)} here, but the "
                             f"mirror does not serve it (a mirror being updated?); try again later, or {ADVICE}",
                             file=url) from None
        digest = _sha256(data)
        if digest != pkg.sha256:
            raise _Advised(f"the download of {_pin(pkg)} has sha256 {digest}, not the pinned {pkg.sha256} "
                             f"(which the {kernel.suite} index agrees with): a damaged download or a bad mirror; "
                             f"try again, or {ADVICE}", file=url)
    except InputError as e:
        cls = MirrorUnreachable if isinstance(e, MirrorUnreachable) else InputError
        if mismatch:
            raise cls(f"{mismatch}, and downloading it again failed: {e}", file=path) from None
        if isinstance(e, (PinGoneError, _Advised)):
            raise
        raise cls(f"{e.message}; needed for {_pin(pkg)}, which is not in the cache "
                  f"{cache_dir() / 'debs'}. To fix: {ADVICE}", file=e.file, line=e.line) from None
    if mismatch:
        print(f"kvm-bindgen: {path}: {mismatch}; replaced it with a verified download", file=sys.stderr)
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(path, data)
    return path


# ---------------------------------------------------------------------------------------------
# The suite's Packages index: where each version of a package is (its `Filename:`), and its sha256.
# The security archive keeps its files under pool/updates/, the main one under pool/: only the index says.


@dataclasses.dataclass(frozen=True)
class IndexEntry:
    name: str
    arch: str  # Debian architecture, "all" included
    version: str
    filename: str  # path below the archive's base URI, e.g. "pool/updates/main/l/linux/....deb"
    sha256: str


_INDEXES: dict[str, list[IndexEntry]] = {}  # index URL -> its linux-* entries, read once per process


def index_url(kernel: Kernel, deb_arch: str) -> str:
    """The suite's Packages index that lists `deb_arch` packages ("all" ones are listed in binary-amd64's)."""
    binary = "amd64" if deb_arch == "all" else deb_arch
    return f"{mirror(kernel.archive)}/dists/{kernel.suite}/main/binary-{binary}/Packages.xz"


def package_index(url: str) -> list[IndexEntry]:
    """The linux-* packages a Packages.xz index lists (downloaded once per process)."""
    if url not in _INDEXES:
        data = _get(url, timeout=120)
        try:
            text = lzma.decompress(data).decode("utf-8", "replace")
        except lzma.LZMAError as e:
            raise InputError(f"not an xz-compressed Packages index ({e})", file=url) from None
        _INDEXES[url] = _parse_index(text)
    return _INDEXES[url]


def _parse_index(text: str) -> list[IndexEntry]:
    entries = []
    for stanza in text.split("\n\n"):
        stanza = stanza.lstrip("\n")
        if not stanza.startswith("Package: linux-"):
            continue
        fields = dict(re.findall(r"^(\w[\w-]*):[ \t]*(.*?)[ \t]*$", stanza, re.M))
        if all(k in fields for k in ("Package", "Architecture", "Version", "Filename", "SHA256")):
            entries.append(IndexEntry(fields["Package"], fields["Architecture"], fields["Version"],
                                      fields["Filename"], fields["SHA256"].lower()))
    return entries


def locate(pkg: Package, kernel: Kernel) -> str:
    """The URL of the pinned package, from the `Filename:` the suite's index gives its version.

    PinGoneError only when the index lacks that version; InputError when it lists it with another sha256.
    """
    url = index_url(kernel, pkg.deb_arch)
    entries = [e for e in package_index(url) if (e.name, e.arch) == (pkg.name, pkg.deb_arch)]
    for entry in entries:
        if entry.version == pkg.version:
            if entry.sha256 != pkg.sha256:
                raise _Advised(
                    f"the index lists {_pin(pkg)} with sha256 {entry.sha256}, not the pinned {pkg.sha256}: "
                    f"not the package that was pinned. If this mirror is right, `kvm-bindgen repin {pkg.kernel}` "
                    f"takes its sha256; otherwise {ADVICE}", file=url)
            return f"{mirror(kernel.archive)}/{entry.filename.lstrip('/')}"
    listed = sorted((e.version for e in entries), key=_version_key)
    now = f"it lists {', '.join(listed)}" if listed else f"it lists no {pkg.name} ({pkg.deb_arch}) at all"
    raise PinGoneError(f"pin gone: {_pin(pkg)} is no longer in the {kernel.suite} index ({now}); run "
                       f"`kvm-bindgen repin {pkg.kernel}` to move the pin to the suite's current version", file=url)


class _NotFound(InputError):
    pass


def _get(url: str, timeout: float) -> bytes:
    """The body at `url` (http(s):// or file://), with progress on stderr: a line updated in place on a
    terminal (bytes, rate), else one line per file. InputError naming the url, _NotFound for a 404 or
    missing file."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            total = int(resp.headers.get("Content-Length") or 0)
            return _read(resp, total, url)
    except urllib.error.HTTPError as e:
        raise (_NotFound if e.code == 404 else InputError)(f"HTTP {e.code} {e.reason}", file=url) from None
    except urllib.error.URLError as e:
        not_found = isinstance(e.reason, FileNotFoundError)
        raise (_NotFound if not_found else MirrorUnreachable)(f"cannot download: {e.reason}", file=url) from None
    except (OSError, ValueError) as e:  # timeouts, resets; ValueError: not a URL at all
        raise MirrorUnreachable(f"cannot download: {e}", file=url) from None


def _read(resp: io.BufferedIOBase, total: int, url: str) -> bytes:
    tty = sys.stderr.isatty()
    name = url.rsplit("/", 1)[-1]
    chunks: list[bytes] = []
    got = 0
    start = last = time.monotonic()
    while chunk := resp.read(1 << 16):
        chunks.append(chunk)
        got += len(chunk)
        now = time.monotonic()
        if tty and now - last >= 0.2:
            last = now
            of = f" of {_mb(total)}" if total else ""
            print(f"\r  {name}: {_mb(got)}{of}, {_mb(got / max(now - start, 1e-6))}/s\x1b[K",
                  end="", file=sys.stderr, flush=True)
    seconds = time.monotonic() - start
    line = f"fetched {url} ({_mb(got)} in {seconds:.1f} s, {_mb(got / max(seconds, 1e-6))}/s)"
    print(f"\r\x1b[K  {line}" if tty else f"kvm-bindgen: {line}", file=sys.stderr, flush=True)
    return b"".join(chunks)


def _mb(n: float) -> str:
    return f"{n / 1e6:.1f} MB"


def mirror(archive: str) -> str:
    """The base URI of Debian `archive` ("debian" or "debian-security"): under `$KVM_BINDGEN_MIRROR` when it
    is set (a URL or a directory, with debian/ and debian-security/ below it), else from the machine's apt
    sources."""
    env = os.environ.get("KVM_BINDGEN_MIRROR")
    if env:
        if "://" not in env:  # a local mirror directory: read it through file:// URLs
            if not pathlib.Path(env).is_dir():
                raise MirrorUnreachable("KVM_BINDGEN_MIRROR is neither a URL nor a directory", file=env)
            env = pathlib.Path(env).resolve().as_uri()
        return f"{env.rstrip('/')}/{archive}"
    uris: list[str] = []
    for src in APT_SOURCES:
        files = sorted(src.glob("*.sources")) + sorted(src.glob("*.list")) if src.is_dir() else [src]
        for f in files:
            if f.is_file():
                text = f.read_text(errors="replace")
                uris += re.findall(r"^URIs:\s*(\S+)", text, re.M)
                uris += re.findall(r"^deb\s+(?:\[[^\]]*\]\s+)?(\S+)", text, re.M)
    for uri in uris:
        if uri.rstrip("/").rsplit("/", 1)[-1] == archive:
            return uri.rstrip("/")
    for uri in uris:  # derive the security archive from the main one on the same host
        base = uri.rstrip("/")
        if base.endswith("/debian"):
            return base[: -len("debian")] + archive
    raise MirrorUnreachable(f"no Debian mirror for '{archive}' in the apt configuration "
                     f"({', '.join(map(str, APT_SOURCES))}), and KVM_BINDGEN_MIRROR is not set")


def _data_tar(deb: pathlib.Path) -> tarfile.TarFile:
    """The data.tar.* member of a .deb (an `ar` archive), opened as a tarfile."""
    data = deb.read_bytes()
    if not data.startswith(b"!<arch>\n"):
        raise InputError(f"{deb} is not a Debian package")
    pos = 8
    while pos + 60 <= len(data):
        header = data[pos : pos + 60]
        name = header[:16].decode().strip().rstrip("/")
        size = int(header[48:58].decode().strip())
        body = data[pos + 60 : pos + 60 + size]
        if name.startswith("data.tar"):
            if name.endswith(".xz"):
                body = lzma.decompress(body)
            elif name.endswith(".gz"):
                body = gzip.decompress(body)
            elif name.endswith(".zst"):
                raise InputError(f"{deb}: zstd-compressed data is not supported")
            return tarfile.open(fileobj=io.BytesIO(body))
        pos += 60 + size + (size & 1)
    raise InputError(f"{deb} has no data.tar member")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _atomic_write(path: pathlib.Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".part")
    tmp.write_bytes(data)
    tmp.replace(path)


class InputsUnavailable(InputError):
    """Some pinned inputs could not be had: `failures` holds (kernel, error) for each kernel that failed,
    `skipped` the kernels not downloaded once the mirror proved unreachable (and not in the cache)."""

    def __init__(self, failures: list[tuple[Kernel, InputError]], lines: list[str] | None = None,
                 skipped: list[Kernel] | None = None):
        super().__init__("\n".join(str(e) for _, e in failures))
        self.failures, self.lines, self.skipped = failures, lines or [], skipped or []

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.failures, self.lines, self.skipped))

    @property
    def kernels(self) -> list[Kernel]:
        return [k for k, _ in self.failures] + self.skipped


def fetch_all(kernels: dict[str, Kernel] | None = None) -> list[str]:
    """Download (only what the cache lacks) and unpack every pinned input; one line per input for the user.

    Every kernel is tried, but once the mirror proves unreachable the rest only from the cache.
    InputsUnavailable lists those that failed, one error each.
    """
    lines: list[str] = []
    failures: list[tuple[Kernel, InputError]] = []
    skipped: list[Kernel] = []
    unreachable = False
    for kernel in (kernels or load_manifest()).values():
        try:
            for arch_name in kernel.arches:
                tree = bundled_tree(kernel, arch_name, download=not unreachable)
                lines.append(f"{kernel.kernel:5} {arch_name:12} {tree.origin}")
            lines.append(f"{kernel.kernel:5} {'api.rst':12} {api_rst(kernel, download=not unreachable)}")
        except InputError as e:
            if unreachable:
                skipped.append(kernel)
                continue
            failures.append((kernel, e))
            unreachable = isinstance(e, MirrorUnreachable)
    if failures:
        raise InputsUnavailable(failures, lines, skipped)
    return lines


# ---------------------------------------------------------------------------------------------
# Re-pinning


def current_versions(kernel: Kernel) -> dict[tuple[str, str], tuple[str, str]]:
    """(package name, deb arch) -> (version, sha256) of the newest each suite's Packages index lists now."""
    found: dict[tuple[str, str], tuple[str, str]] = {}
    wanted = {(p.name, p.deb_arch) for p in kernel.packages}
    for url in sorted({index_url(kernel, deb_arch) for _, deb_arch in wanted}):
        for e in package_index(url):
            if (e.name, e.arch) in wanted:
                old = found.get((e.name, e.arch))
                if old is None or _version_key(e.version) > _version_key(old[0]):
                    found[(e.name, e.arch)] = (e.version, e.sha256)
    return found


def _version_key(version: str) -> list[tuple[int, int | str]]:
    """An approximation of Debian's version order, good for the kernel packages' versions."""
    return [(0, int(x)) if x.isdigit() else (1, x) for x in re.split(r"(\d+)", version) if x]


def repin(kernel_name: str, path: pathlib.Path | None = None) -> list[str]:
    """Move a kernel's pins to the suite's current versions, rewriting the manifest in place."""
    path = path or manifest_path()
    kernels = load_manifest(path)
    if kernel_name not in kernels:
        raise InputError(f"no kernel {kernel_name!r} is pinned here (pinned: {', '.join(kernels)})", file=path)
    kernel = kernels[kernel_name]
    try:
        current = current_versions(kernel)
    except InputError as e:
        raise InputError(f"{e.message}; needed to repin {kernel_name}. To fix: set KVM_BINDGEN_MIRROR to a "
                         "reachable Debian mirror (a URL, or a directory, holding debian/ and debian-security/)",
                         file=e.file, line=e.line) from None
    text = path.read_text()
    changes = []
    for pkg in kernel.packages:
        now = current.get((pkg.name, pkg.deb_arch))
        if now is None:
            raise InputError(f"{pkg.name} ({pkg.deb_arch}) is not in {kernel.suite} any more: the kernel series "
                             f"left the suite; pin another suite for {kernel_name} in the manifest by hand",
                             file=index_url(kernel, pkg.deb_arch))
        if now == (pkg.version, pkg.sha256):
            continue
        text = text.replace(f'version = "{pkg.version}"\ndeb_arch = "{pkg.deb_arch}"\nsha256 = "{pkg.sha256}"',
                            f'version = "{now[0]}"\ndeb_arch = "{pkg.deb_arch}"\nsha256 = "{now[1]}"')
        changes.append(f"{pkg.name} ({pkg.deb_arch}): {pkg.version} -> {now[0]}")
    if changes:
        _atomic_write(path, text.encode())
    return changes
