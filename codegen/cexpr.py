"""Evaluate C integer constant expressions with C's own typing rules.

The preprocessor has already expanded every macro, so an expression here is made of integer and
character literals, enumerator names, operators, casts and `sizeof`. Types in casts and `sizeof` are
resolved through a callback, so the same evaluator serves every arch's ABI.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Callable

_TOKEN = re.compile(
    r"""\s*(?:
      (?P<num>0[xX][0-9a-fA-F]+[uUlL]*|\d+[uUlL]*)
    | (?P<char>'(?:\\.|[^\\'])+')
    | (?P<ident>[A-Za-z_]\w*)
    | (?P<op><<|>>|<=|>=|==|!=|&&|\|\||[-+*/%&|^~!<>?:()\[\],])
    )""",
    re.X,
)

TYPE_WORDS = {"struct", "union", "enum", "signed", "unsigned", "char", "short", "int", "long", "_Bool", "void",
              "const", "volatile", "float", "double", "__int128"}


class ExprError(ValueError):
    """The text is not an integer constant expression we can evaluate."""


@dataclasses.dataclass(frozen=True)
class CInt:
    value: int
    bits: int
    signed: bool

    @staticmethod
    def of(value: int, bits: int, signed: bool) -> "CInt":
        value &= (1 << bits) - 1
        if signed and value >> (bits - 1):
            value -= 1 << bits
        return CInt(value, bits, signed)


INT = (32, True)


@dataclasses.dataclass(frozen=True)
class TypeFacts:
    """What the evaluator needs to know about a type name: its size and, for scalars, its signedness."""

    size: int
    signed: bool | None  # None for non-scalar types (structs, arrays), which cannot be cast to


TypeResolver = Callable[[list[str]], TypeFacts]


def tokenize(text: str) -> list[str]:
    tokens = []
    pos = 0
    text = text.strip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise ExprError(f"unexpected text {text[pos:pos + 20]!r}")
        tokens.append(m.group(m.lastgroup or ""))
        pos = m.end()
    return tokens


class _Parser:
    def __init__(self, tokens: list[str], names: dict[str, int], resolve_type: TypeResolver):
        self.tokens = tokens
        self.pos = 0
        self.names = names
        self.resolve_type = resolve_type

    def peek(self, ahead: int = 0) -> str | None:
        i = self.pos + ahead
        return self.tokens[i] if i < len(self.tokens) else None

    def take(self, expected: str | None = None) -> str:
        tok = self.peek()
        if tok is None or (expected is not None and tok != expected):
            raise ExprError(f"expected {expected or 'more'}, found {tok!r}")
        self.pos += 1
        return tok

    # expression := conditional
    def conditional(self) -> CInt:
        cond = self.binary(0)
        if self.peek() != "?":
            return cond
        self.take("?")
        a = self.conditional()
        self.take(":")
        b = self.conditional()
        bits, signed = _common(a, b)
        return CInt.of((a if cond.value else b).value, bits, signed)

    _PRECEDENCE = [["||"], ["&&"], ["|"], ["^"], ["&"], ["==", "!="], ["<", ">", "<=", ">="], ["<<", ">>"],
                   ["+", "-"], ["*", "/", "%"]]

    def binary(self, level: int) -> CInt:
        if level == len(self._PRECEDENCE):
            return self.unary()
        left = self.binary(level + 1)
        while self.peek() in self._PRECEDENCE[level]:
            op = self.take()
            right = self.binary(level + 1)
            left = _apply(op, left, right)
        return left

    def unary(self) -> CInt:
        tok = self.peek()
        if tok in ("-", "+", "~", "!"):
            self.take()
            operand = _promote(self.unary())
            if tok == "-":
                return CInt.of(-operand.value, operand.bits, operand.signed)
            if tok == "~":
                return CInt.of(~operand.value, operand.bits, operand.signed)
            if tok == "!":
                return CInt.of(int(not operand.value), *INT)
            return operand
        if tok == "sizeof":
            self.take()
            if self.peek() == "(" and self._is_type(self.peek(1)):
                self.take("(")
                facts = self.resolve_type(self._type_name())
                self.take(")")
                return CInt.of(facts.size, 64, False)
            raise ExprError("sizeof of an expression is not supported")
        if tok == "(" and self._is_type(self.peek(1)):
            self.take("(")
            words = self._type_name()
            self.take(")")
            facts = self.resolve_type(words)
            if facts.signed is None:
                raise ExprError(f"cast to non-scalar type {' '.join(words)}")
            return CInt.of(self.unary().value, facts.size * 8, facts.signed)
        return self.primary()

    def _is_type(self, tok: str | None) -> bool:
        if tok is None:
            return False
        if tok in TYPE_WORDS:
            return True
        if tok in self.names or not re.match(r"[A-Za-z_]", tok):
            return False
        try:
            self.resolve_type([tok])
            return True
        except (KeyError, ExprError):
            return False

    def _type_name(self) -> list[str]:
        words = []
        depth = 0
        while self.peek() is not None and not (self.peek() == ")" and depth == 0):
            tok = self.take()
            depth += {"[": 1, "]": -1}.get(tok, 0)
            words.append(tok)
        return words

    def primary(self) -> CInt:
        tok = self.take()
        if tok == "(":
            value = self.conditional()
            self.take(")")
            return value
        if tok[0].isdigit():
            return _literal(tok)
        if tok[0] == "'":
            return CInt.of(_char_value(tok), *INT)
        if tok in self.names:
            return CInt.of(self.names[tok], *INT) if -(1 << 31) <= self.names[tok] < (1 << 31) \
                else CInt.of(self.names[tok], 64, self.names[tok] < 0)
        raise ExprError(f"{tok!r} is not an integer constant")


def _char_value(tok: str) -> int:
    body = tok[1:-1]
    escapes = {"\\n": 10, "\\t": 9, "\\0": 0, "\\\\": 92, "\\'": 39, '\\"': 34, "\\r": 13}
    if body in escapes:
        return escapes[body]
    if len(body) == 1:
        return ord(body)
    raise ExprError(f"unsupported character literal {tok}")


def _literal(tok: str) -> CInt:
    m = re.fullmatch(r"(0[xX][0-9a-fA-F]+|\d+)([uUlL]*)", tok)
    if not m:
        raise ExprError(f"bad number {tok!r}")
    digits, suffix = m.groups()
    value = int(digits, 16) if digits[:2].lower() == "0x" else int(digits, 8) if digits.startswith("0") and len(
        digits) > 1 else int(digits)
    unsigned = "u" in suffix.lower()
    long_ = "l" in suffix.lower()
    decimal = not (digits.startswith("0") and len(digits) > 1)
    # C11 6.4.4.1: the first type in the list that can represent the value.
    candidates: list[tuple[int, bool]] = []
    if not long_:
        candidates += [(32, False)] if unsigned else ([(32, True)] if decimal else [(32, True), (32, False)])
    candidates += [(64, False)] if unsigned else ([(64, True)] if decimal else [(64, True), (64, False)])
    for bits, signed in candidates:
        limit = 1 << (bits - 1 if signed else bits)
        if value < limit:
            return CInt(value, bits, signed)
    raise ExprError(f"{tok} does not fit in 64 bits")


def _promote(v: CInt) -> CInt:
    if v.bits < 32:
        return CInt.of(v.value, *INT)
    return v


def _common(a: CInt, b: CInt) -> tuple[int, bool]:
    a, b = _promote(a), _promote(b)
    if a.signed == b.signed:
        return max(a.bits, b.bits), a.signed
    uns, sig = (a, b) if not a.signed else (b, a)
    if uns.bits >= sig.bits:
        return uns.bits, False
    return sig.bits, True


def _apply(op: str, a: CInt, b: CInt) -> CInt:
    if op in ("&&", "||"):
        result = (a.value and b.value) if op == "&&" else (a.value or b.value)
        return CInt.of(int(bool(result)), *INT)
    if op in ("<<", ">>"):
        left = _promote(a)
        if b.value < 0 or b.value >= left.bits:
            raise ExprError(f"shift by {b.value} of a {left.bits}-bit value")
        value = left.value << b.value if op == "<<" else left.value >> b.value
        return CInt.of(value, left.bits, left.signed)
    bits, signed = _common(a, b)
    x, y = CInt.of(a.value, bits, signed).value, CInt.of(b.value, bits, signed).value
    if op in ("==", "!=", "<", ">", "<=", ">="):
        result = {"==": x == y, "!=": x != y, "<": x < y, ">": x > y, "<=": x <= y, ">=": x >= y}[op]
        return CInt.of(int(result), *INT)
    if op in ("/", "%"):
        if y == 0:
            raise ExprError("division by zero")
        quotient = abs(x) // abs(y) * (1 if (x >= 0) == (y >= 0) else -1)  # C truncates toward zero
        return CInt.of(quotient if op == "/" else x - quotient * y, bits, signed)
    value = {"+": x + y, "-": x - y, "*": x * y, "&": x & y, "|": x | y, "^": x ^ y}[op]
    return CInt.of(value, bits, signed)


def evaluate(text: str, names: dict[str, int], resolve_type: TypeResolver) -> int:
    """The value of the C constant expression `text`; raises ExprError if it is not one."""
    parser = _Parser(tokenize(text), names, resolve_type)
    if not parser.tokens:
        raise ExprError("empty expression")
    value = parser.conditional()
    if parser.peek() is not None:
        raise ExprError(f"unexpected {parser.peek()!r}")
    return value.value
