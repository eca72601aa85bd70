"""The SQL text of a query as the analyst wrote it: its tokens, positions and nesting.

What a refusal says about where a clause starts (line and column) comes from here,
and so do the bounds on nesting checked before the query is parsed.
"""

from __future__ import annotations

import re
from itertools import pairwise

from sqlglot.errors import TokenError
from sqlglot.tokens import Token, Tokenizer, TokenType  # type: ignore[attr-defined]

DIALECT = "duckdb"
MAX_SQL = 20_000
# The parser recurses per parenthesis and NOT (34 of Python's 1000 frames for each
# "NOT (" together): these bounds keep the deepest query covey answers within them.
MAX_PARENS = 24
MAX_NOTS = 24
_OPENING = frozenset({TokenType.L_PAREN, TokenType.L_BRACKET, TokenType.L_BRACE})
_CLOSING = frozenset({TokenType.R_PAREN, TokenType.R_BRACKET, TokenType.R_BRACE})
# A site's table names; anything else in FROM (a quoted path, a URL) names no table
TABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def fold(name: str) -> str:
    """A name as SQL compares it: ASCII letters in any case are one (``Age`` is ``age``).

    DuckDB reads identifiers, quoted or not, this way; other letters (``Â``, ``â``)
    stay distinct.

    Example:
        >>> fold("Age") == fold("AGE"), fold("Âge") == fold("âge")
        (True, False)
    """
    return name.translate(_ASCII_LOWER)


class QueryError(ValueError):
    """A query that federated analytics refuses: malformed, unsupported, or forbidden."""


class SqlText:
    """Finds where a keyword or name first appears in the SQL text (line and column)."""

    def __init__(self, sql: str) -> None:
        """Tokenize ``sql`` (refused past :data:`MAX_SQL` characters, before it is read)."""
        if isinstance(sql, str) and len(sql) > MAX_SQL:
            raise QueryError(f"the query is {len(sql)} characters long; the limit is {MAX_SQL}")
        self.sql = sql
        try:
            self.tokens: list[Token] = Tokenizer(dialect=DIALECT).tokenize(sql)
        except TokenError:
            self.tokens = []

    def where(self, text: str) -> str:
        """``" at line L, column C"`` of the first token starting with ``text``, or ''."""
        word = text.upper()
        for tok in self.tokens:
            if tok.text.upper() == word or tok.text.upper().startswith(word + " "):
                return self.at(tok.start)
        pos = self.sql.upper().find(word)
        return self.at(pos) if pos >= 0 else ""

    def nth(self, text: str, n: int) -> str:
        """Like :meth:`where` for the ``n``-th occurrence (1-based)."""
        hits = [t for t in self.tokens if t.text.upper() == text.upper()]
        return self.at(hits[n - 1].start) if len(hits) >= n else ""

    def at(self, offset: int) -> str:
        """``" at line L, column C"`` of a character offset."""
        line = self.sql.count("\n", 0, offset) + 1
        col = offset - (self.sql.rfind("\n", 0, offset) + 1) + 1
        return f" at line {line}, column {col}"

    def check_nesting(self) -> None:
        """Refuse parentheses nested past :data:`MAX_PARENS` or more NOTs than :data:`MAX_NOTS`."""
        depth = nots = 0
        for tok in self.tokens:
            if tok.token_type in _OPENING:
                depth += 1
                if depth > MAX_PARENS:
                    raise QueryError(
                        f"parentheses nest more than {MAX_PARENS} deep{self.at(tok.start)}; "
                        "simplify the query"
                    )
            elif tok.token_type in _CLOSING:
                depth -= 1
            elif tok.token_type == TokenType.NOT:
                nots += 1
                if nots > MAX_NOTS:
                    raise QueryError(
                        f"the query has more than {MAX_NOTS} NOTs (NOT number {nots}"
                        f"{self.at(tok.start)}); simplify it"
                    )

    @staticmethod
    def arguments(call: str) -> int:
        """How many arguments the first call in ``call`` is given (``MAX(x, 3)``: 2)."""
        try:
            tokens = Tokenizer(dialect=DIALECT).tokenize(call)
        except TokenError:
            return 0
        depth = given = 0
        for tok in tokens:
            if tok.token_type in _OPENING:
                depth += 1
                given = max(given, 1) if depth == 1 else given
            elif tok.token_type in _CLOSING:
                depth -= 1
                if depth == 0:
                    break
            elif depth == 1 and tok.token_type == TokenType.COMMA:
                given += 1
        return given

    def select_texts(self) -> list[str]:
        """The text of each SELECT item as written (top-level commas split them).

        Each run of spaces and line breaks between two of its tokens is one space,
        so that an item written over lines names a column on one line; all else
        (case, a space or none, comments, quoted names) is kept as written.
        """
        items: list[list[Token]] = [[]]
        depth, started = 0, False
        for tok in self.tokens:
            if tok.token_type == TokenType.SELECT and not started:
                started = True
                continue
            if not started:
                continue
            if depth == 0 and tok.token_type == TokenType.FROM:
                break
            if tok.token_type == TokenType.L_PAREN:
                depth += 1
            elif tok.token_type == TokenType.R_PAREN:
                depth -= 1
            if depth == 0 and tok.token_type == TokenType.COMMA:
                items.append([])
                continue
            items[-1].append(tok)
        return [self._joined(t) for t in items]

    def _joined(self, tokens: list[Token]) -> str:
        """The text of ``tokens`` as written, each run of white space between two one space."""
        if not tokens:
            return ""
        parts = [self.sql[tokens[0].start : tokens[0].end + 1]]
        for before, tok in pairwise(tokens):
            gap = self.sql[before.end + 1 : tok.start]
            parts.append(" " if gap.isspace() else gap)
            parts.append(self.sql[tok.start : tok.end + 1])
        return "".join(parts)
