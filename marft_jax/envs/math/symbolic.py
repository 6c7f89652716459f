"""Symbolic equality of two normalised LaTeX answers, with sympy.

This is the slow and possibly unbounded part of grading (simplification, and sympy's eager
evaluation of e.g. ``9^{9^{9^{9}}}``), so the grader only ever calls it inside a worker
process that it kills on timeout (``marft_jax.envs.math.worker``). Do not call it in a
process that must stay responsive.
"""

from __future__ import annotations

import cmath

import sympy

from marft_jax.envs.math.latex_sympy import Equation, LatexParseError, parse_latex

REL_TOL = 1e-4


def symbolic_equal(prediction: str, reference: str) -> bool:
    """True if the two LaTeX answers denote the same value or equation.

    Expressions are equal when they are structurally equal, when their difference simplifies
    to zero, or, for constants that are not both integers, when their numeric values agree to
    a relative tolerance of 1e-4. Equations are equal when ``lhs - rhs`` of one is a non-zero
    constant multiple of the other's. Unparseable input is "not equal".
    """
    try:
        left = parse_latex(prediction)
        right = parse_latex(reference)
    except (LatexParseError, TypeError, ValueError, ZeroDivisionError):
        return False
    if isinstance(left, Equation) or isinstance(right, Equation):
        if not (isinstance(left, Equation) and isinstance(right, Equation)):
            return False
        return _equations_equal(left, right)
    return expressions_equal(left, right)


def expressions_equal(left: sympy.Expr, right: sympy.Expr) -> bool:
    """Equality of two sympy expressions (see ``symbolic_equal``)."""
    if left == right:
        return True
    if not isinstance(left, sympy.Expr) or not isinstance(right, sympy.Expr):
        return False
    if left.has(sympy.oo, -sympy.oo, sympy.zoo, sympy.nan) or right.has(
            sympy.oo, -sympy.oo, sympy.zoo, sympy.nan):
        return False
    difference = sympy.simplify(left - right)
    if difference == 0:
        return True
    if left.is_Integer and right.is_Integer:
        return False  # two different integers (10! vs 3628801): no tolerance
    if not left.free_symbols and not right.free_symbols:
        return _numerically_close(left, right)
    return difference.equals(0) is True


def _numerically_close(left: sympy.Expr, right: sympy.Expr) -> bool:
    """Relative closeness of two constant expressions (complex values allowed)."""
    try:
        left_value = complex(sympy.N(left, 30))
        right_value = complex(sympy.N(right, 30))
    except (TypeError, ValueError, OverflowError):
        return False
    if not all(map(cmath.isfinite, (left_value, right_value))):
        return False
    return cmath.isclose(left_value, right_value, rel_tol=REL_TOL, abs_tol=1e-12)


def _equations_equal(left: Equation, right: Equation) -> bool:
    """Equations are equal if their ``lhs - rhs`` forms are non-zero constant multiples."""
    left_form = left.lhs - left.rhs
    right_form = right.lhs - right.rhs
    if left_form == 0 or right_form == 0:
        return left_form == right_form
    ratio = sympy.simplify(left_form / right_form)
    return bool(ratio.is_number and ratio != 0 and ratio.is_finite)
