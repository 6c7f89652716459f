"""A small LaTeX -> sympy converter for final answers (no antlr4 needed).

Grammar (a recursive-descent parser over a flat token list)::

    relation := expr ('=' expr)?
    expr     := term (('+' | '-') term)*
    term     := unary (('*' | '\\cdot' | '\\times' | '/' | '\\div') unary | implicit)*
    unary    := ('+' | '-') unary | power
    power    := postfix ('^' exponent)?           exponent: a braced group or one token
    postfix  := atom ('!')*
    atom     := number | letter (with _subscript) | (expr) | [expr] | {expr} | |expr|
              | \\frac{a}{b} | \\sqrt[n]{x} | \\binom{n}{k} | \\pi | \\infty | greek letter
              | \\sin x, \\log_b(x), ... | \\lfloor x \\rfloor | \\lceil x \\rceil

Implicit multiplication covers ``2\\pi``, ``3\\sqrt{2}``, ``2x`` and ``(x+1)(x-1)``; letters
run together multiply (``xy`` = x*y); ``i`` is the imaginary unit. Anything else (including
a subscripted number such as ``52_8``) raises ``LatexParseError``. This module imports sympy;
the grader only imports it inside its worker process.
"""

from __future__ import annotations

import re

import sympy

_TOKEN_RE = re.compile(
    r"(?P<num>\d+\.\d*|\.\d+|\d+)|(?P<cmd>\\[a-zA-Z]+|\\[{}|])|(?P<letter>[a-zA-Z])"
    r"|(?P<op>[-+*/^_()\[\]{}|!=,])|(?P<space>\s+|\\[,;:! ])")
_SKIPPED = frozenset({"\\left", "\\right", "\\displaystyle", "\\big", "\\Big", "\\bigl",
                      "\\bigr", "\\Bigl", "\\Bigr"})
_FUNCTIONS = {
    "sin": sympy.sin, "cos": sympy.cos, "tan": sympy.tan, "sec": sympy.sec,
    "csc": sympy.csc, "cot": sympy.cot, "arcsin": sympy.asin, "arccos": sympy.acos,
    "arctan": sympy.atan, "sinh": sympy.sinh, "cosh": sympy.cosh, "tanh": sympy.tanh,
    "exp": sympy.exp, "ln": sympy.log, "log": sympy.log,
}
_GREEK = frozenset({"alpha", "beta", "gamma", "delta", "epsilon", "varepsilon", "zeta", "eta",
                    "theta", "vartheta", "iota", "kappa", "lambda", "mu", "nu", "xi", "rho",
                    "sigma", "tau", "upsilon", "phi", "varphi", "chi", "psi", "omega", "Gamma",
                    "Delta", "Theta", "Lambda", "Xi", "Sigma", "Phi", "Psi", "Omega"})
_MULTIPLY = frozenset({"*", "\\cdot", "\\times"})
_DIVIDE = frozenset({"/", "\\div"})
_CLOSING = {"(": ")", "[": "]", "{": "}", "\\{": "\\}"}


class LatexParseError(ValueError):
    """The text is not an expression this converter understands."""


class Equation:
    """A parsed ``lhs = rhs`` (kept apart from sympy's ``Eq``, which may evaluate to a bool)."""

    def __init__(self, lhs: sympy.Expr, rhs: sympy.Expr):
        self.lhs = lhs
        self.rhs = rhs


def tokenize(text: str) -> list[str]:
    """Split LaTeX into tokens; sizing commands and spacing are dropped.

    Raises:
        LatexParseError: on a character outside the grammar.
    """
    tokens = []
    index = 0
    while index < len(text):
        match = _TOKEN_RE.match(text, index)
        if match is None:
            raise LatexParseError(f"unexpected character {text[index]!r} at {index}")
        index = match.end()
        if match.lastgroup == "space" or match.group(0) in _SKIPPED:
            continue
        tokens.append(match.group(0))
    return tokens


def parse_latex(text: str) -> sympy.Expr | Equation:
    """Convert a LaTeX answer to a sympy expression (or an ``Equation``).

    Raises:
        LatexParseError: when the text is empty, malformed or outside the grammar.
    """
    parser = _Parser(tokenize(text))
    if not parser.tokens:
        raise LatexParseError("empty expression")
    result = parser.relation()
    if parser.pos != len(parser.tokens):
        raise LatexParseError(f"unexpected token {parser.peek()!r}")
    return result


class _Parser:
    """Recursive-descent parser; one instance per text."""

    def __init__(self, tokens: list[str]):
        self.tokens = tokens
        self.pos = 0
        self.abs_depth = 0

    def peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> str:
        token = self.peek()
        if token is None:
            raise LatexParseError("unexpected end of expression")
        self.pos += 1
        return token

    def expect(self, token: str) -> None:
        if self.take() != token:
            raise LatexParseError(f"expected {token!r}")

    def relation(self) -> sympy.Expr | Equation:
        lhs = self.expr()
        if self.peek() == "=":
            self.take()
            return Equation(lhs, self.expr())
        return lhs

    def expr(self) -> sympy.Expr:
        value = self.term()
        while self.peek() in ("+", "-"):
            if self.take() == "+":
                value = value + self.term()
            else:
                value = value - self.term()
        return value

    def term(self) -> sympy.Expr:
        value = self.unary()
        while True:
            token = self.peek()
            if token in _MULTIPLY:
                self.take()
                value = value * self.unary()
            elif token in _DIVIDE:
                self.take()
                value = value / self.unary()
            elif self.starts_atom(token):
                value = value * self.power()
            else:
                return value

    def unary(self) -> sympy.Expr:
        if self.peek() == "-":
            self.take()
            return -self.unary()
        if self.peek() == "+":
            self.take()
            return self.unary()
        return self.power()

    def power(self) -> sympy.Expr:
        base = self.postfix()
        if self.peek() == "^":
            self.take()
            return sympy.Pow(base, self.exponent())
        return base

    def exponent(self) -> sympy.Expr:
        if self.peek() in ("-", "+"):
            sign = -1 if self.take() == "-" else 1
            return sign * self.single()
        return self.single()

    def postfix(self) -> sympy.Expr:
        value = self.atom()
        while self.peek() == "!":
            self.take()
            value = sympy.factorial(value)
        return value

    def starts_atom(self, token: str | None) -> bool:
        if token is None:
            return False
        if token == "|":
            return self.abs_depth == 0
        if token in _CLOSING:
            return True
        if token[0].isdigit() or token[0] == "." or token[0].isalpha():
            return True
        return token.startswith("\\") and token not in _MULTIPLY | _DIVIDE and token not in (
            "\\right", "\\rfloor", "\\rceil", "\\}")

    def single(self) -> sympy.Expr:
        """One TeX argument: a braced group, one digit, or one atom (``\\frac12``, ``x^23``)."""
        token = self.peek()
        if token == "{":
            return self.group("{")
        if token is not None and token[0].isdigit() and len(token) > 1:
            self.tokens[self.pos] = token[1:]
            return sympy.Integer(int(token[0]))
        return self.atom()

    def group(self, opener: str) -> sympy.Expr:
        self.expect(opener)
        value = self.expr()
        self.expect(_CLOSING[opener])
        return value

    def atom(self) -> sympy.Expr:
        token = self.peek()
        if token is None:
            raise LatexParseError("unexpected end of expression")
        if token in _CLOSING:
            return self.group(token)
        if token == "|":
            self.take()
            self.abs_depth += 1
            value = self.expr()
            self.abs_depth -= 1
            self.expect("|")
            return sympy.Abs(value)
        if token[0].isdigit() or token[0] == ".":
            return self.number()
        if token[0].isalpha():
            self.take()
            return self.subscripted(sympy.I if token == "i" else sympy.Symbol(token), token)
        if token.startswith("\\"):
            return self.command()
        raise LatexParseError(f"unexpected token {token!r}")

    def number(self) -> sympy.Expr:
        token = self.take()
        if self.peek() == "_":
            raise LatexParseError(f"subscripted number {token}_ (a base?)")
        return sympy.Rational(token)

    def subscripted(self, value: sympy.Expr, name: str) -> sympy.Expr:
        if self.peek() != "_":
            return value
        self.take()
        token = self.peek()
        if token == "{":
            close = self.tokens.index("}", self.pos) if "}" in self.tokens[self.pos:] else -1
            if close < 0:
                raise LatexParseError("unclosed subscript")
            subscript = "".join(self.tokens[self.pos + 1:close])
            self.pos = close + 1
        else:
            subscript = self.take()
        return sympy.Symbol(f"{name}_{subscript}")

    def command(self) -> sympy.Expr:
        token = self.take()
        name = token[1:]
        if name in ("frac", "dfrac", "tfrac", "cfrac"):
            numerator = self.single()
            return numerator / self.single()
        if name == "sqrt":
            if self.peek() == "[":
                self.take()
                index = self.expr()
                self.expect("]")
                return sympy.root(self.single(), index)
            return sympy.sqrt(self.single())
        if name == "binom":
            top = self.single()
            return sympy.binomial(top, self.single())
        if name == "pi":
            return sympy.pi
        if name == "infty":
            return sympy.oo
        if name in _GREEK:
            return self.subscripted(sympy.Symbol(name), name)
        if name in ("lfloor", "lceil"):
            value = self.expr()
            self.expect("\\r" + name[1:])
            return sympy.floor(value) if name == "lfloor" else sympy.ceiling(value)
        if name in _FUNCTIONS:
            return self.function(name)
        raise LatexParseError(f"unsupported command {token}")

    def function(self, name: str) -> sympy.Expr:
        base = None
        if name == "log" and self.peek() == "_":
            self.take()
            base = self.single()
        power = None
        if self.peek() == "^":
            self.take()
            power = self.exponent()
        argument = self.group(self.peek()) if self.peek() in ("(", "{") else self.power()
        value = _FUNCTIONS[name](argument)
        if base is not None:
            value = sympy.log(argument, base)
        return value if power is None else sympy.Pow(value, power)
