"""``->`` and ``->>`` in a query, named as written: the parser reads them as a lambda or a path."""

from __future__ import annotations

import pytest

from covey.analytics import QueryError
from covey.analytics._sql import plan


@pytest.mark.parametrize(
    ("sql", "said"),
    [
        # these showed the parser's own forms: LAMBDA data : 'x', data ->> '$.x'
        ("SELECT SUM(data->'x') FROM p", "not the expression data->'x' at line 1, column 8"),
        ("SELECT SUM(data->'x') FROM p", "-> at line 1, column 16 reads a field of a JSON"),
        ("SELECT AVG(data->>'x') FROM p", "not the expression data->>'x' at line 1"),
        ("SELECT AVG(data->>'x') FROM p", "->> at line 1, column 16 reads a field"),
        ("SELECT SUM(data -> 'a' -> 'b') FROM p", "expression data -> 'a' -> 'b' at"),
        ("SELECT SUM(p.data->'x') FROM p", "not the expression p.data->'x' at"),
        ("SELECT COUNT(data->'x') FROM p", "give the field a column of its own"),
        ("SELECT COUNT(x -> x + 1) FROM p", "not the expression x -> x + 1 at line 1"),
        ("SELECT COUNT(x -> x + 1) FROM p", "-> at line 1, column 16 makes a lambda"),
        ("SELECT HISTOGRAM(data->'x', 0, 1, 2) FROM p", "-> at line 1, column 22 reads"),
        ("SELECT SUM(age) -> 1 FROM p", "SUM(age) -> 1 at line 1, column 8 is not supported"),
        ("SELECT COUNT(*) FROM p GROUP BY data->>'x'", "takes column names, got data->>'x'"),
        ("SELECT COUNT(*) FROM p WHERE data->'x' = 1", "-> at line 1, column 34 is not"),
    ],
)
def test_an_arrow_is_refused_named_as_written(sql: str, said: str) -> None:
    with pytest.raises(QueryError) as info:
        plan(sql)
    assert said in str(info.value)
    for internal in ("LAMBDA", "'$.", "'$[", "JSON_EXTRACT"):
        assert internal not in str(info.value)
