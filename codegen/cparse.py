"""Run the C preprocessor over a headers tree and parse the result with pycparser.

Two passes of `gcc -E` with the target arch's predefined macros (never the host's):
- declarations: the preprocessed text, with GNU `__attribute__`s rewritten into what pycparser can
  carry (`_Alignas` on members, a side table for typedef and struct attributes), then parsed;
- macros: `-dD` output, which keeps every `#define` with the file it came from.
Errors name the header file, line and construct.
"""

from __future__ import annotations

import dataclasses
import pathlib
import re
import subprocess

from pycparser import c_ast, c_parser

from .inputs import HeadersTree, InputError

KVM_HEADERS = ("linux/kvm.h", "asm/kvm.h")


# gcc's builtin 128-bit typedefs, unknown to pycparser. They are declared here as placeholders; the
# layout engine recognises these names and gives them the arch's 128-bit size and alignment.
INT128_NAMES = ("__int128_t", "__uint128_t")
INT128_TYPEDEFS = "typedef long long __int128_t;\ntypedef unsigned long long __uint128_t;\n"


class HeaderError(InputError):
    """A header construct the generator cannot handle; the message names file, line and construct."""


@dataclasses.dataclass(frozen=True)
class RecordAttrs:
    packed: bool = False
    aligned: int | None = None


@dataclasses.dataclass(frozen=True)
class MacroDef:
    name: str
    body: str
    file: str  # the header it was defined in, relative to its include dir (e.g. "linux/kvm.h")
    path: str = ""  # that header's path as the preprocessor opened it
    line: int = 0  # the line of the #define in it


@dataclasses.dataclass
class ParsedHeaders:
    ast: c_ast.FileAST
    typedef_attrs: dict[str, RecordAttrs]  # typedef name -> attributes on it
    record_attrs: dict[str, RecordAttrs]  # "struct tag" -> attributes on its definition
    macros: dict[str, MacroDef]  # every object-like macro, last definition wins
    kvm_macro_order: list[str]  # names of object-like macros defined in the KVM headers, in order


def _cpp(tree: HeadersTree, extra: list[str], source: str) -> str:
    cmd = ["gcc", "-E", "-nostdinc", "-undef", "-std=gnu11"]
    cmd += [f"-D{d}" for d in tree.arch.cpp_defines()]
    for d in tree.include_dirs:
        cmd += ["-I", str(d)]
    cmd += extra + ["-x", "c", "-"]
    proc = subprocess.run(cmd, input=source.encode(), capture_output=True)
    stderr = proc.stderr.decode(errors="replace").strip()
    if proc.returncode != 0:
        # gcc's first error says file:line:col: what (the rest may quote binary garbage).
        errors = re.findall(r"^(.+?):(\d+):(?:\d+:)? (?:fatal )?error: (.*)$", stderr, re.M)
        if errors:
            file, line, what = errors[0]
            more = f" (and {len(errors) - 1} more errors)" if len(errors) > 1 else ""
            raise HeaderError(f"{what}{more}", file=file, line=int(line))
        raise HeaderError(f"preprocessing {tree.origin} failed:\n{stderr}")
    # gcc drops NUL bytes with a warning: a header holding them is damaged, whatever the rest parses to
    nul = re.search(r"^(.+?):(\d+):(?:\d+:)? warning: null character\(s\) ignored", stderr, re.M)
    if nul:
        raise HeaderError("NUL bytes in the header (a damaged file?)", file=nul.group(1), line=int(nul.group(2)))
    return proc.stdout.decode(errors="replace")  # bytes that are not UTF-8 fail in the parser, at their line


def preprocess(tree: HeadersTree, source: str = "#include <linux/kvm.h>\n") -> str:
    return _cpp(tree, [], source)


def parse(tree: HeadersTree) -> ParsedHeaders:
    text = preprocess(tree)
    text, typedef_attrs, record_attrs = rewrite_attributes(text)
    text = INT128_TYPEDEFS + text
    try:
        ast = c_parser.CParser().parse(text, filename="<kvm.h>")
    except c_parser.ParseError as e:
        raise _parse_error(str(e)) from None
    macros, order = read_macros(tree)
    return ParsedHeaders(ast, typedef_attrs, record_attrs, macros, order)


def _parse_error(message: str) -> HeaderError:
    """Turn pycparser's "file:line:col: msg" into the header's line and the construct there."""
    m = re.match(r"(.*?):(\d+):(\d+): (.*)", message, re.S)
    if not m:
        return HeaderError(f"cannot parse the headers: {message}")
    file, line, _col, what = m.groups()
    source_line = ""
    if pathlib.Path(file).is_file():
        lines = pathlib.Path(file).read_text(errors="replace").splitlines()
        if 0 < int(line) <= len(lines):
            source_line = lines[int(line) - 1].strip()
    return HeaderError(f"cannot parse: {what}" + (f"\n    {source_line}" if source_line else ""), file, int(line))


# ---------------------------------------------------------------------------------------------
# GNU attributes

_ATTRIBUTE = re.compile(r"__attribute__\s*\(\(")


def _location(text: str, pos: int) -> tuple[str, int]:
    """file and line of a position in preprocessed text, from the nearest line marker before it."""
    line_no = text.count("\n", 0, pos)
    markers = list(re.finditer(r'^# (\d+) "([^"]*)"', text[:pos], re.M))
    if not markers:
        return "<preprocessed>", line_no + 1
    m = markers[-1]
    return m.group(2), int(m.group(1)) + text.count(chr(10), m.end(), pos) - 1


def _parse_attribute_list(body: str, where: tuple[str, int]) -> RecordAttrs:
    packed = False
    aligned = None
    for item in (i.strip() for i in body.split(",") if i.strip()):
        name = item.strip("_") if "(" not in item else item.split("(", 1)[0].strip("_")
        if name == "packed":
            packed = True
        elif name == "aligned":
            m = re.search(r"\(\s*(\d+)\s*\)", item)
            aligned = int(m.group(1)) if m else 16  # bare `aligned` is the target's largest alignment
            if aligned <= 0 or aligned & (aligned - 1):
                raise HeaderError(f"alignment {aligned} is not a power of 2", *where)
        else:
            raise HeaderError(f"unsupported attribute `{item}`", *where)
    return RecordAttrs(packed, aligned)


def rewrite_attributes(text: str) -> tuple[str, dict[str, RecordAttrs], dict[str, RecordAttrs]]:
    """Remove every `__attribute__((...))`, keeping its meaning where pycparser can carry it."""
    typedef_attrs: dict[str, RecordAttrs] = {}
    record_attrs: dict[str, RecordAttrs] = {}
    while m := _ATTRIBUTE.search(text):
        end = _matching_paren(text, m.end() - 2)
        body = text[m.end() : end - 1]
        where = _location(text, m.start())
        attrs = _parse_attribute_list(body, where)
        if attrs == RecordAttrs():  # `__attribute__(())`: nothing to keep
            text = text[: m.start()] + text[end + 1 :]
            continue
        decl_start = max(text.rfind(c, 0, m.start()) for c in ";{}") + 1
        before = text[: m.start()].rstrip()
        after = text[end + 1 :]
        if before.endswith("}"):
            # On a struct/union definition: `struct tag {...} ATTR;` or `typedef struct {...} ATTR name;`.
            open_brace = _matching_brace_backwards(text, len(before) - 1)
            head_text = text[max(text.rfind(c, 0, open_brace) for c in ";{}") + 1 : open_brace]
            head = re.sub(r"^#.*$", "", head_text, flags=re.M).split()
            following = re.match(r"\s*(\w*)\s*;", after)
            if head and head[0] == "typedef" and following and following.group(1):
                typedef_attrs[following.group(1)] = attrs
            elif len(head) >= 2 and head[-2] in ("struct", "union"):
                record_attrs[f"{head[-2]} {head[-1]}"] = attrs
            else:
                raise HeaderError("attribute on an anonymous struct or union is not supported", *where)
            text = text[: m.start()] + text[end + 1 :]
        elif re.sub(r"^#.*$", "", text[decl_start:m.start()], flags=re.M).lstrip().startswith("typedef"):
            name = re.match(r"\s*(\w+)\s*;", after)
            if not name or attrs.packed:
                raise HeaderError(f"unsupported typedef attribute `{body}`", *where)
            typedef_attrs[name.group(1)] = attrs
            text = text[: m.start()] + text[end + 1 :]
        else:
            # On a member or variable: C11 `_Alignas` at the start of the declaration carries it.
            if attrs.packed:
                raise HeaderError("`packed` on a member is not supported", *where)
            assert attrs.aligned is not None
            text = (text[:decl_start] + f" _Alignas({attrs.aligned}) " + text[decl_start : m.start()]
                    + text[end + 1 :])
    return text, typedef_attrs, record_attrs


def _matching_paren(text: str, open_pos: int) -> int:
    depth = 0
    for i in range(open_pos, len(text)):
        depth += {"(": 1, ")": -1}.get(text[i], 0)
        if depth == 0:
            return i
    raise HeaderError("unbalanced parentheses in attribute", *_location(text, open_pos))


def _matching_brace_backwards(text: str, close_pos: int) -> int:
    depth = 0
    for i in range(close_pos, -1, -1):
        depth += {"}": 1, "{": -1}.get(text[i], 0)
        if depth == 0:
            return i
    raise HeaderError("unbalanced braces", *_location(text, close_pos))


# ---------------------------------------------------------------------------------------------
# Macros


def read_macros(tree: HeadersTree) -> tuple[dict[str, MacroDef], list[str]]:
    """Every object-like `#define` visible after including linux/kvm.h, with the header it came from."""
    text = _cpp(tree, ["-dD"], "#include <linux/kvm.h>\n")
    kvm_paths = {str(tree.kvm_h): "linux/kvm.h", str(tree.asm_kvm_h): "asm/kvm.h"}
    kvm_real = {str(pathlib.Path(p).resolve()): n for p, n in kvm_paths.items()}
    macros: dict[str, MacroDef] = {}
    order: list[str] = []
    current = path = ""
    line_no = 0
    for line in text.splitlines():
        if line.startswith("# ") and '"' in line:
            path = line.split('"')[1]
            line_no = int(line.split()[1]) - 1
            current = kvm_paths.get(path) or kvm_real.get(str(pathlib.Path(path).resolve()), path) \
                if path.startswith("/") else path
            continue
        line_no += 1
        m = re.match(r"#define ([A-Za-z_]\w*)(\(?)\s?(.*)$", line)
        if not m or m.group(2):  # function-like macros are expanded by cpp where used
            continue
        name, body = m.group(1), m.group(3).strip()
        macros[name] = MacroDef(name, body, current, path, line_no)
        if current in KVM_HEADERS and name not in order:
            order.append(name)
    return macros, order


def expand(tree: HeadersTree, expressions: dict[str, str]) -> dict[str, str]:
    """Each expression fully macro-expanded in the context of linux/kvm.h, keyed as given."""
    source = "#include <linux/kvm.h>\n"
    source += "".join(f'"{key}" = {text}\n' for key, text in expressions.items())
    out = _cpp(tree, ["-P"], source)
    expansions = {}
    for line in out.splitlines():
        m = re.match(r'^"([^"]+)" = (.*)$', line)
        if m:
            expansions[m.group(1)] = m.group(2).strip()
    return expansions
