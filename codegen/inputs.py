"""Pinned kernel inputs: the manifest in headers/, the download cache, and headers trees.

A *headers tree* is any directory laid out like `make headers_install` output or /usr/include: it
holds `linux/kvm.h`, and `asm/kvm.h` either beside it or under a Debian multiarch directory.
Bundled kernels come from Debian packages pinned by sha256 in headers/manifest.toml; they are
downloaded once into the cache (`$KVM_BINDGEN_CACHE`, default ~/.cache/kvm-bindgen) and unpacked there.
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
import tomllib
import urllib.error
import urllib.request

from .arches import ARCHES, Arch

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
MANIFEST = REPO_ROOT / "headers" / "manifest.toml"
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
    """The mirror no longer serves a pinned version (Debian keeps only each suite's current one)."""


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


def load_manifest(path: pathlib.Path = MANIFEST) -> dict[str, Kernel]:
    data = tomllib.loads(path.read_text())
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
    """Path of the kernel's Documentation/virt/kvm/api.rst in the cache."""
    pkg = kernel.doc_package()
    out = cache_dir() / "docs" / kernel.kernel / "api.rst"
    if out.is_file():
        return out
    deb = downloaded(pkg, download=download)
    member = f"./usr/share/doc/{pkg.name}/Documentation/{API_RST}.gz"
    with _data_tar(deb) as tar:
        try:
            f = tar.extractfile(member)
        except KeyError:
            raise InputError(f"{pkg.filename} has no {member}") from None
        assert f is not None
        text = gzip.decompress(f.read())
    out.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(out, text)
    return out


# ---------------------------------------------------------------------------------------------
# Download, verify, unpack


def unpacked(pkg: Package, *, download: bool = True) -> pathlib.Path:
    dest = cache_dir() / "trees" / pkg.filename.removesuffix(".deb")
    stamp = dest / ".complete"
    if stamp.is_file():
        return dest
    deb = downloaded(pkg, download=download)
    with _data_tar(deb) as tar:
        members = [m for m in tar.getmembers()
                   if m.name.startswith(("./usr/include/", "./usr/lib/linux/")) and (m.isfile() or m.isdir() or m.issym())]
        tar.extractall(dest, members=members, filter="data")
    stamp.write_text(pkg.sha256 + "\n")
    return dest


def downloaded(pkg: Package, *, download: bool = True) -> pathlib.Path:
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
    url = f"{mirror(kernel.archive)}/{POOLS[kernel.archive]}/l/linux/{pkg.filename}"
    try:
        data = _get(url, timeout=60)
    except InputError as e:
        if mismatch:
            raise InputError(f"{mismatch}, and downloading it again failed: {e}", file=path) from None
        if isinstance(e, _NotFound):
            raise PinGoneError(
                f"pin gone: {pkg.name} {pkg.version} ({pkg.deb_arch}) is no longer on the {kernel.suite} mirror; "
                f"run `kvm-bindgen repin {pkg.kernel}` to move it to the suite's current version", file=url
            ) from None
        raise InputError(
            f"{e.message}, and {pkg.filename} is not in the cache {cache_dir() / 'debs'}. "
            "Offline, generate from a local headers tree instead: `kvm-bindgen generate --headers DIR`", file=url
        ) from None
    digest = _sha256(data)
    if digest != pkg.sha256:
        raise InputError(f"sha256 {digest} does not match the pin {pkg.sha256}", file=url)
    if mismatch:
        print(f"kvm-bindgen: {path}: {mismatch}; replaced it with a verified download", file=sys.stderr)
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(path, data)
    return path


class _NotFound(InputError):
    pass


def _get(url: str, timeout: float) -> bytes:
    """The body at `url` (http(s):// or file://); InputError naming the url, _NotFound for a 404 or missing file."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.read()
    except urllib.error.HTTPError as e:
        raise (_NotFound if e.code == 404 else InputError)(f"HTTP {e.code} {e.reason}", file=url) from None
    except urllib.error.URLError as e:
        not_found = isinstance(e.reason, FileNotFoundError)
        raise (_NotFound if not_found else InputError)(f"cannot download: {e.reason}", file=url) from None
    except (OSError, ValueError) as e:  # timeouts, resets; ValueError: not a URL at all
        raise InputError(f"cannot download: {e}", file=url) from None


# Where each archive keeps its packages (the `Filename:` fields of its Packages index start so).
POOLS = {"debian": "pool/main", "debian-security": "pool/updates/main"}


def mirror(archive: str) -> str:
    """The base URI of Debian `archive` ("debian" or "debian-security") from the machine's apt sources."""
    uris: list[str] = []
    for src in APT_SOURCES:
        files = sorted(src.glob("*.sources")) + sorted(src.glob("*.list")) if src.is_dir() else [src]
        for f in files:
            if f.is_file():
                text = f.read_text(errors="replace")
                uris += re.findall(r"^URIs:\s*(\S+)", text, re.M)
                uris += re.findall(r"^deb\s+(?:\[[^\]]*\]\s+)?(\S+)", text, re.M)
    env = os.environ.get("KVM_BINDGEN_MIRROR")  # e.g. a local mirror; "<base>" with debian/ under it
    if env:
        if "://" not in env:  # a local mirror directory: read it through file:// URLs
            if not pathlib.Path(env).is_dir():
                raise InputError("KVM_BINDGEN_MIRROR is neither a URL nor a directory", file=env)
            env = pathlib.Path(env).resolve().as_uri()
        return f"{env.rstrip('/')}/{archive}"
    for uri in uris:
        if uri.rstrip("/").rsplit("/", 1)[-1] == archive:
            return uri.rstrip("/")
    for uri in uris:  # derive the security archive from the main one on the same host
        base = uri.rstrip("/")
        if base.endswith("/debian"):
            return base[: -len("debian")] + archive
    raise InputError(f"no Debian mirror for '{archive}' in the apt configuration ({', '.join(map(str, APT_SOURCES))})")


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


def fetch_all(kernels: dict[str, Kernel] | None = None) -> list[str]:
    """Download and unpack every pinned input; returns one line per input for the user."""
    lines = []
    for kernel in (kernels or load_manifest()).values():
        for arch_name in kernel.arches:
            tree = bundled_tree(kernel, arch_name)
            lines.append(f"{kernel.kernel:5} {arch_name:12} {tree.origin}")
        lines.append(f"{kernel.kernel:5} {'api.rst':12} {api_rst(kernel)}")
    return lines


# ---------------------------------------------------------------------------------------------
# Re-pinning


def current_versions(kernel: Kernel) -> dict[tuple[str, str], tuple[str, str]]:
    """(package name, deb arch) -> (version, sha256) as the suite's Packages index lists them now."""
    found: dict[tuple[str, str], tuple[str, str]] = {}
    wanted = {(p.name, p.deb_arch) for p in kernel.packages}
    base = mirror(kernel.archive)
    binary_arches = sorted({a if a != "all" else "amd64" for _, a in wanted})
    for deb_arch in binary_arches:
        url = f"{base}/dists/{kernel.suite}/main/binary-{deb_arch}/Packages.xz"
        try:
            text = lzma.decompress(_get(url, timeout=120)).decode("utf-8", "replace")
        except lzma.LZMAError as e:
            raise InputError(f"not an xz-compressed Packages index ({e})", file=url) from None
        for stanza in text.split("\n\n"):
            fields = dict(re.findall(r"^(\w[\w-]*): (.*)$", stanza, re.M))
            key = (fields.get("Package", ""), fields.get("Architecture", ""))
            if key in wanted and "SHA256" in fields:
                old = found.get(key)
                if old is None or _newer(fields["Version"], old[0]):
                    found[key] = (fields["Version"], fields["SHA256"])
    return found


def _newer(a: str, b: str) -> bool:
    def key(v: str) -> list[object]:
        return [int(x) if x.isdigit() else x for x in re.split(r"(\d+)", v)]

    return key(a) > key(b)


def repin(kernel_name: str, path: pathlib.Path = MANIFEST) -> list[str]:
    """Move a kernel's pins to the suite's current versions, rewriting the manifest in place."""
    kernels = load_manifest(path)
    if kernel_name not in kernels:
        raise InputError(f"no kernel {kernel_name!r} is pinned here (pinned: {', '.join(kernels)})", file=path)
    kernel = kernels[kernel_name]
    current = current_versions(kernel)
    text = path.read_text()
    changes = []
    for pkg in kernel.packages:
        now = current.get((pkg.name, pkg.deb_arch))
        if now is None:
            raise InputError(f"{pkg.name} ({pkg.deb_arch}) is not in {kernel.suite} any more")
        if now == (pkg.version, pkg.sha256):
            continue
        text = text.replace(f'version = "{pkg.version}"\ndeb_arch = "{pkg.deb_arch}"\nsha256 = "{pkg.sha256}"',
                            f'version = "{now[0]}"\ndeb_arch = "{pkg.deb_arch}"\nsha256 = "{now[1]}"')
        changes.append(f"{pkg.name} ({pkg.deb_arch}): {pkg.version} -> {now[0]}")
    path.write_text(text)
    return changes
