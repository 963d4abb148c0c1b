"""Exact rational arithmetic for the calculator tool: a tokenizer and a recursive-descent parser.

Model-written text never reaches Python's eval/exec/ast: this module reads numbers and the
operators + - * / // % ** ( ) itself, and refuses names, attribute access and calls.

Grammar (Python's precedence and associativity):
  expr  := term (('+' | '-') term)*
  term  := unary (('*' | '/' | '//' | '%') unary)*
  unary := ('-' | '+') unary | power
  power := atom ('**' unary)?        # right-associative; -2**2 == -(2**2); 2**-1 == 1/2
  atom  := NUMBER | '(' expr ')'     # NUMBER: 12, 3.25, .5 (exact decimals)
"""

from __future__ import annotations

from fractions import Fraction
from typing import NamedTuple, Union

MAX_CHARS = 2000      # longer expressions are refused
MAX_DEPTH = 100       # parentheses / unary nesting
MAX_BITS = 10_000     # numerator and denominator of every intermediate value (~3000 digits)

_DIGITS = "0123456789"


class CalcError(ValueError):
  """A syntax or evaluation error; the message is what the calculator tool reports."""


class Token(NamedTuple):
  kind: str  # "num" | "op" | "(" | ")" | "end"
  value: Union[str, Fraction]
  pos: int


def tokenize(text: str) -> list[Token]:
  if len(text) > MAX_CHARS:
    raise CalcError(f"expression too long ({len(text)} characters; at most {MAX_CHARS})")
  out, i, n = [], 0, len(text)
  while i < n:
    c = text[i]
    if c.isspace():
      i += 1
    elif c in _DIGITS or (c == "." and i + 1 < n and text[i + 1] in _DIGITS):
      j = i
      while j < n and text[j] in _DIGITS:
        j += 1
      if j < n and text[j] == ".":
        k = j + 1
        while k < n and text[k] in _DIGITS:
          k += 1
        if k == j + 1:
          raise CalcError(f"malformed number {text[i:k]!r} at position {i}")
        j = k
      if j < n and (text[j].isalnum() or text[j] in "._"):
        end = j
        while end < n and (text[end].isalnum() or text[end] in "._"):
          end += 1
        raise CalcError(f"malformed number {text[i:end]!r} at position {i}")
      out.append(Token("num", Fraction(text[i:j]), i))
      i = j
    elif c.isalpha() or c == "_":
      j = i
      while j < n and (text[j].isalnum() or text[j] == "_"):
        j += 1
      raise CalcError(f"names are not allowed ({text[i:j]!r} at position {i}); "
                      "use numbers and + - * / // % ** ( ) only")
    elif c == ".":
      raise CalcError(f"attribute access is not allowed ('.' at position {i})")
    elif text.startswith("**", i) or text.startswith("//", i):
      out.append(Token("op", text[i:i + 2], i))
      i += 2
    elif c in "+-*/%":
      out.append(Token("op", c, i))
      i += 1
    elif c in "()":
      out.append(Token(c, c, i))
      i += 1
    elif c == "^":
      raise CalcError(f"unexpected character '^' at position {i}; use ** for powers")
    else:
      raise CalcError(f"unexpected character {c!r} at position {i}")
  out.append(Token("end", "", n))
  return out


def evaluate(text: str) -> Fraction:
  """The exact value of an expression; raises CalcError with the tool's message."""
  return _Parser(tokenize(text)).parse()


def parse_number(text: str) -> Fraction:
  """A single number as the answer tool accepts it: 42, -3.5, 7/3 or -7/3 (no other operators)."""
  toks = tokenize(text.strip())
  kinds = [(t.kind, t.value) for t in toks]
  sign = 1
  if kinds and kinds[0] == ("op", "-"):
    sign, kinds, toks = -1, kinds[1:], toks[1:]
  if len(kinds) == 2 and kinds[0][0] == "num":
    return sign * toks[0].value
  if (len(kinds) == 4 and kinds[0][0] == "num" and kinds[1] == ("op", "/") and kinds[2][0] == "num"
      and toks[0].value.denominator == 1 and toks[2].value.denominator == 1):
    if toks[2].value == 0:
      raise CalcError("division by zero")
    return sign * toks[0].value / toks[2].value
  raise CalcError("expected a single number such as 42, -3.5 or 7/3")


def format_value(v: Fraction) -> str:
  """Integers as integers, terminating decimals exactly ('3.25'), other rationals as 'p/q'."""
  num, den = v.numerator, v.denominator
  if den == 1:
    return str(num)
  d, twos, fives = den, 0, 0
  while d % 2 == 0:
    d, twos = d // 2, twos + 1
  while d % 5 == 0:
    d, fives = d // 5, fives + 1
  if d != 1:
    return f"{num}/{den}"
  places = max(twos, fives)
  scaled = abs(num) * 10 ** places // den  # exact: den divides 10**places
  whole, frac = divmod(scaled, 10 ** places)
  return f"{'-' if num < 0 else ''}{whole}.{str(frac).rjust(places, '0').rstrip('0')}"


def _check_size(v: Fraction) -> Fraction:
  if v.numerator.bit_length() > MAX_BITS or v.denominator.bit_length() > MAX_BITS:
    raise CalcError("result too large (more than about 3000 digits)")
  return v


class _Parser:

  def __init__(self, tokens: list[Token]):
    self.toks, self.i, self.depth = tokens, 0, 0

  def peek(self) -> Token:
    return self.toks[self.i]

  def take(self) -> Token:
    tok = self.toks[self.i]
    self.i += 1
    return tok

  def parse(self) -> Fraction:
    if self.peek().kind == "end":
      raise CalcError("empty expression")
    value = self.expr()
    tok = self.peek()
    if tok.kind == ")":
      raise CalcError(f"unmatched ')' at position {tok.pos}")
    if tok.kind != "end":
      raise CalcError(f"expected an operator at position {tok.pos}, found {_describe(tok)}")
    return value

  def expr(self) -> Fraction:
    value = self.term()
    while self.peek().kind == "op" and self.peek().value in ("+", "-"):
      op = self.take().value
      rhs = self.term()
      value = _check_size(value + rhs if op == "+" else value - rhs)
    return value

  def term(self) -> Fraction:
    value = self.unary()
    while self.peek().kind == "op" and self.peek().value in ("*", "/", "//", "%"):
      op = self.take().value
      rhs = self.unary()
      if op == "*":
        value = value * rhs
      elif rhs == 0:
        raise CalcError("division by zero" if op != "%" else "modulo by zero")
      elif op == "/":
        value = value / rhs
      elif op == "//":
        value = Fraction(value // rhs)
      else:
        value = value % rhs
      value = _check_size(value)
    return value

  def unary(self) -> Fraction:
    tok = self.peek()
    if tok.kind == "op" and tok.value in ("-", "+"):
      self.take()
      self._enter(tok)
      value = self.unary()
      self.depth -= 1
      return -value if tok.value == "-" else value
    return self.power()

  def power(self) -> Fraction:
    base = self.atom()
    if self.peek().kind == "op" and self.peek().value == "**":
      self.take()
      return _power(base, self.unary())
    return base

  def atom(self) -> Fraction:
    tok = self.take()
    if tok.kind == "num":
      return tok.value
    if tok.kind == "(":
      self._enter(tok)
      value = self.expr()
      self.depth -= 1
      close = self.take()
      if close.kind != ")":
        if close.kind == "end":
          raise CalcError(f"missing ')' for the '(' at position {tok.pos}")
        raise CalcError(f"expected ')' at position {close.pos}, found {_describe(close)}")
      return value
    raise CalcError(f"expected a number or '(' at position {tok.pos}, found {_describe(tok)}")

  def _enter(self, tok: Token) -> None:
    self.depth += 1
    if self.depth > MAX_DEPTH:
      raise CalcError(f"expression nested too deeply at position {tok.pos} (at most {MAX_DEPTH})")


def _power(base: Fraction, exp: Fraction) -> Fraction:
  if exp.denominator != 1:
    raise CalcError(f"non-integer exponent {format_value(exp)} is not supported "
                    "(the result would not be rational)")
  e = exp.numerator
  if base == 0 and e < 0:
    raise CalcError("division by zero (0 raised to a negative power)")
  if base not in (0, 1, -1):
    bits = max(base.numerator.bit_length(), base.denominator.bit_length())
    if (bits - 1) * abs(e) > MAX_BITS:
      raise CalcError("result too large (more than about 3000 digits)")
  return _check_size(base ** e)


def _describe(tok: Token) -> str:
  if tok.kind == "end":
    return "the end of the expression"
  if tok.kind == "num":
    return f"the number {format_value(tok.value)}"
  return repr(tok.value)
