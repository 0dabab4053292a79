"""`kvm-bindgen`: fetch pinned kernel inputs, generate bindings, check for drift, re-pin, diff."""

from __future__ import annotations

import argparse
import concurrent.futures
import pathlib
import sys
import time

from . import inputs
from .arches import ARCHES, host_arch
from .model import Model

GENERATED = inputs.REPO_ROOT / "generated"


def build_bundled(kernel: inputs.Kernel, arch: str) -> Model:
    from .build import build

    tree = inputs.bundled_tree(kernel, arch)
    return build(tree, kernel.kernel, inputs.api_rst(kernel).read_text())


def build_all() -> list[Model]:
    """A Model for every pinned (kernel, arch), built in parallel."""
    jobs = [(k, a) for k in inputs.load_manifest().values() for a in k.arches]
    for kernel in {k.kernel: k for k, _ in jobs}.values():  # download sequentially, once
        for arch in kernel.arches:
            inputs.bundled_tree(kernel, arch)
        inputs.api_rst(kernel)
    with concurrent.futures.ProcessPoolExecutor() as pool:
        return list(pool.map(build_bundled, *zip(*jobs)))


def generated_files(models: list[Model]) -> dict[str, str]:
    """Every file of generated/ (relative path -> text): the bindings and the diff reports between them."""
    from .diff import reports
    from .render import render_all

    files = render_all(models)
    return files | reports(files)


def cmd_fetch(args: argparse.Namespace) -> int:
    for line in inputs.fetch_all():
        print(line)
    print(f"cache: {inputs.cache_dir()}")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    start = time.monotonic()
    if args.headers:
        return _generate_from_tree(args)
    try:
        files = generated_files(build_all())
    except inputs.PinGoneError as e:
        if not args.check:
            raise
        print(f"SKIPPED drift check: {e}")  # a mirror that moved on must not fail CI; the message says how to re-pin
        return 0
    out = pathlib.Path(args.out) if args.out else GENERATED
    if args.check:
        drift = _drift(files, out)
        if drift:
            print("generated/ differs from what the generator produces (run `kvm-bindgen generate`):", file=sys.stderr)
            for line in drift:
                print(f"  {line}", file=sys.stderr)
            return 1
        print(f"generated/: {len(files)} files, no drift ({time.monotonic() - start:.1f} s)")
        return 0
    _write(files, out)
    print(f"wrote {len(files)} files to {out} in {time.monotonic() - start:.1f} s")
    return 0


def _generate_from_tree(args: argparse.Namespace) -> int:
    from .build import build
    from .render import render_all

    arch = ARCHES[args.arch or host_arch() or "x86_64"]
    tree = inputs.open_headers_tree(args.headers, arch)
    api_rst = pathlib.Path(args.api_rst).read_text() if args.api_rst else None
    kernel = ".".join(tree.linux_version.split(".")[:2]) if tree.linux_version != "unknown" else "0.0"
    model = build(tree, kernel, api_rst)
    if not args.out:
        print("--out DIR is required with --headers (generated/ holds only the bundled kernels)", file=sys.stderr)
        return 2
    out = pathlib.Path(args.out)
    files = render_all([model])
    _write(files, out)
    print(f"wrote {len(files)} files for {tree.origin} ({model.linux_version} {arch.name}) to {out}")
    return 0


_GENERATED_PATTERNS = ("*.py", "reports/*.md")


def _existing(out: pathlib.Path) -> set[str]:
    return {str(p.relative_to(out)) for pattern in _GENERATED_PATTERNS for p in out.glob(pattern)}


def _write(files: dict[str, str], out: pathlib.Path) -> None:
    for stale in _existing(out) - set(files):
        (out / stale).unlink()
    for name, text in files.items():
        path = out / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.is_file() or path.read_text() != text:
            path.write_text(text)


def _drift(files: dict[str, str], out: pathlib.Path) -> list[str]:
    lines = []
    existing = _existing(out)
    for name, text in sorted(files.items()):
        path = out / name
        if not path.is_file():
            lines.append(f"missing: {name}")
        elif path.read_text() != text:
            lines.append(f"differs: {name}")
    lines += [f"not generated any more: {n}" for n in sorted(existing - set(files))]
    return lines


def cmd_repin(args: argparse.Namespace) -> int:
    changes = inputs.repin(args.kernel)
    for line in changes or ["already current"]:
        print(line)
    if changes:
        print("now run `kvm-bindgen fetch && kvm-bindgen generate`, and `kvm-bindgen diff` to see what changed")
    return 0


def cmd_summary(args: argparse.Namespace) -> int:
    import kvm.generated as g

    print(f"{'kernel':8} {'release':10} {'arch':12} {'ioctls':>6} {'n/a':>4} {'consts':>6} {'structs':>7} {'caps':>5}")
    for kernel, release, arch in g.BUNDLED:
        b = g.load(kernel, arch)
        print(f"{kernel:8} {release:10} {arch:12} {len(b.IOCTLS):6} {len(b.UNAVAILABLE_IOCTLS):4} "
              f"{len(b.CONSTANTS):6} {len(b.STRUCTS):7} {len(b.CAPS):5}")
    print(f"host: {host_arch()}, default binding: {g.KERNEL} ({g.LINUX_VERSION}) {g.ARCH}")
    return 0


def cmd_diff(args: argparse.Namespace) -> int:
    from . import diff

    return diff.command(args.old, args.new, args.arch, args.vs_arch, args.format, args.fail_on_abi_break)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kvm-bindgen", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("fetch", help="download and verify the pinned inputs into the cache "
                                      "($KVM_BINDGEN_CACHE, default ~/.cache/kvm-bindgen)")
    p.set_defaults(func=cmd_fetch)
    p = sub.add_parser("generate", help="regenerate generated/ from the pinned inputs, or a binding from --headers")
    p.add_argument("--check", action="store_true", help="do not write; fail if generated/ would change (drift)")
    p.add_argument("--headers", metavar="DIR", help="a headers tree (make headers_install output, /usr/include)")
    p.add_argument("--arch", choices=sorted(ARCHES), help="arch of --headers (default: the host's)")
    p.add_argument("--api-rst", metavar="FILE", help="Documentation/virt/kvm/api.rst to annotate --headers with")
    p.add_argument("--out", metavar="DIR", help="output directory (default: generated/ of this checkout)")
    p.set_defaults(func=cmd_generate)
    p = sub.add_parser("repin", help="move a kernel's pins to its Debian suite's current version")
    p.add_argument("kernel", help="kernel series as in headers/manifest.toml, e.g. 6.12")
    p.set_defaults(func=cmd_repin)
    p = sub.add_parser("summary", help="count what each bundled binding holds")
    p.set_defaults(func=cmd_summary)
    p = sub.add_parser("diff", help="what changed in the KVM ABI between two versions or headers trees, "
                                     "or two arches (--vs-arch); breaks first (see docs/diff.md)")
    p.add_argument("old", metavar="OLD", help="a bundled version (6.1, 6.12.117) or a headers tree directory")
    p.add_argument("new", metavar="NEW", nargs="?", help="the same kinds; may be left out with --vs-arch")
    p.add_argument("--arch", help="arch of OLD and NEW (default: the host's)")
    p.add_argument("--vs-arch", metavar="ARCH", help="compare with this arch (NEW, or OLD again, on ARCH)")
    p.add_argument("--format", choices=("text", "markdown", "json"), default="text")
    p.add_argument("--fail-on-abi-break", action="store_true", help="exit 1 when an ABI break is found")
    p.set_defaults(func=cmd_diff)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except inputs.InputError as e:
        print(f"kvm-bindgen: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # header errors name file and line; show them without a traceback
        from .cparse import HeaderError

        if isinstance(e, HeaderError):
            print(f"kvm-bindgen: {e}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
