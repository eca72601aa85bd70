"""An expression and its operator as the query wrote them, for refusals.

The parser reads some operators as functions of its own (``a ^ 2`` as
``POWER(a, 2)``, ``a ~ 'x'`` as ``REGEXP_MATCHES(a, 'x')``, ``a::INT`` as
``CAST``); a refusal that showed those would name what the analyst never wrote.
The text is taken from the query instead, by the positions the parser keeps for
names, numbers and function names, widened to the parentheses they open or close
and to a leading ``-``, ``~``, ``!`` or ``NOT``.
"""

from __future__ import annotations

from typing import Any

import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError, TokenError
from sqlglot.tokens import TokenType  # type: ignore[attr-defined]

from covey.analytics._sqltext import DIALECT, SqlText

_PREFIX = frozenset({"-", "~", "!", "NOT", "+"})
_ARROWS = (exp.Lambda, exp.JSONExtract, exp.JSONExtractScalar)  # what -> and ->> read as
_ARROW_TOKENS = frozenset({TokenType.ARROW, TokenType.DARROW})
_TYPE_TOKENS = 6  # the most tokens of a type after :: (DOUBLE PRECISION, INT[], ...)
# what to write instead of an operator or function the sites do not evaluate
_INSTEAD = {
    "^": "for a square write x * x",
    "**": "for a square write x * x",
    "POWER": "for a square write x * x",
    "POW": "for a square write x * x",
    "~": "match text with LIKE (% any text, _ one character) or ILIKE",
    "!~": "match text with NOT LIKE or NOT ILIKE",
    "~*": "match text with ILIKE (% any text, _ one character)",
    "!~*": "match text with NOT ILIKE",
    "~~": "write LIKE",
    "!~~": "write NOT LIKE",
    "~~*": "write ILIKE",
    "!~~*": "write NOT ILIKE",
    "SIMILAR TO": "match text with LIKE or ILIKE",
    "GLOB": "match text with LIKE (% for *, _ for ?)",
    "REGEXP_MATCHES": "match text with LIKE or ILIKE",
    "^@": "write col LIKE 'prefix%'",
    "STARTS_WITH": "write col LIKE 'prefix%'",
    "<=>": "write (a = b OR (a IS NULL AND b IS NULL))",
    "IS NOT DISTINCT FROM": "write (a = b OR (a IS NULL AND b IS NULL))",
    "IS DISTINCT FROM": "write (a <> b OR (a IS NULL) <> (b IS NULL))",
    "::": "compare the column as it is, or to a typed literal (DATE '2024-01-31')",
    "CAST": "compare the column as it is, or to a typed literal (DATE '2024-01-31')",
    "||": "compare the parts with = or LIKE each",
    "//": "write / and compare with a bound (x / 2 < 3 for x // 2 < 3 over x >= 0)",
}


def instead(label: str, node: Any) -> str:
    """What to write instead of the operator or function ``label`` of ``node``, or ''."""
    return "" if isinstance(node, exp.BitwiseNot) else _INSTEAD.get(label.upper(), "")


def arrow_hint(node: exp.Expression, loc: SqlText) -> str:
    """Why an aggregate's argument holding ``->`` or ``->>`` is refused, naming it, or ''."""
    found = node.find(*_ARROWS)
    if found is None:
        return ""
    span = _span(node)
    start = -1 if span is None else span[0]
    ops = [t for t in loc.tokens if t.token_type in _ARROW_TOKENS and t.start >= start]
    op, where = (ops[0].text, loc.at(ops[0].start)) if ops else ("->", "")
    if isinstance(found, exp.Lambda) and not isinstance(found.this, exp.Literal):
        return f"; {op}{where} makes a lambda (of list functions), which the sites do not evaluate"
    return (
        f"; {op}{where} reads a field of a JSON value, which the sites do not evaluate: give "
        "the field a column of its own in the sites' tables and aggregate that column"
    )


def _span(node: exp.Expression) -> tuple[int, int] | None:
    ends = [(n.meta["start"], n.meta["end"]) for n in node.walk() if "start" in n.meta]
    if not ends:
        return None
    return min(s for s, _ in ends), max(e for _, e in ends)


def source(node: exp.Expression, loc: SqlText) -> str | None:
    """The text of ``node`` as written, or None when the positions do not tell it."""
    span = _span(node)
    if span is None or not loc.tokens:
        return None
    toks = loc.tokens
    first = next((i for i, t in enumerate(toks) if t.start >= span[0]), None)
    last = max((i for i, t in enumerate(toks) if t.end <= span[1]), default=None)
    if first is None or last is None or last < first:
        return None
    depth = low = 0
    for tok in toks[first : last + 1]:
        depth += tok.token_type == TokenType.L_PAREN
        depth -= tok.token_type == TokenType.R_PAREN
        low = min(low, depth)
    first -= -low  # the parentheses closed inside are opened before
    last += depth - low  # and those opened inside are closed after
    prefix = isinstance(node, exp.Not | exp.Neg | exp.BitwiseNot) and first > 0
    if prefix and toks[first - 1].text.upper() in _PREFIX:
        first -= 1
    if first < 0 or last >= len(toks):
        return None
    if node.find(*_ARROWS):  # the path after -> or ->> keeps no position: the token after it
        while last + 2 < len(toks) and toks[last + 1].token_type in _ARROW_TOKENS:
            last += 2
    # a type after :: keeps no position (SUM(x)::INT): its tokens follow the span
    for end in range(last, min(last + _TYPE_TOKENS, len(toks) - 1) + 1):
        text = " ".join(loc.sql[toks[first].start : toks[end].end + 1].splitlines())
        if _parses_as(text, node):
            return text
        if not node.find(exp.Cast):
            break
    return None


def _parses_as(text: str, node: exp.Expression) -> bool:
    """Whether ``text`` reads as ``node`` (not a column alone of a[1] or a IS TRUE)."""
    try:
        if sqlglot.parse_one(text, read=DIALECT) == node:
            return True
        if not node.find(exp.Lambda):
            return False
        # a -> b is a lambda only as a call's argument (SUM(data->'x')), else a JSON path
        call = sqlglot.parse_one(f"F({text})", read=DIALECT)
        return bool(isinstance(call, exp.Anonymous) and call.expressions == [node])
    except (ParseError, TokenError):
        return False


def operator(node: Any, loc: SqlText) -> str | None:
    """The operator of a binary ``node`` as written (``^``, ``~``, ``::``), or None.

    None as well for a function call (``POWER(a, 2)``), whose name the parser keeps.
    """
    left, right = node.args.get("this"), node.args.get("expression")
    if isinstance(node, exp.Cast) and isinstance(left, exp.Expression):
        a = _span(left)  # the type after :: keeps no position: the token after the value
        after = [t.text for t in loc.tokens if a is not None and t.start > a[1] and t.text != ")"]
        after = after[:1]
        return "::" if after == ["::"] else None
    if not isinstance(left, exp.Expression) or not isinstance(right, exp.Expression):
        return None
    a, b = _span(left), _span(right)
    if a is None or b is None or a[1] >= b[0]:
        return None
    gap = loc.sql[a[1] + 1 : b[0]].strip().strip("()'\"").strip()
    if not gap or "," in gap or "(" in gap or "\n" in gap or len(gap) > 24:
        return None
    return " ".join(gap.split()).upper()
