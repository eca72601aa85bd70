"""Federated analytics: SQL over tables that never leave their sites.

An analyst asks in SQL; each :class:`Site` checks the query against its own
:class:`Policy`, answers its part in DuckDB as vectors of sums, and the server
combines only those sums (through secure aggregation when asked), with
differential-privacy noise added by the sites themselves.

Example:
    >>> import pandas as pd
    >>> from covey.analytics import Policy, Site, query
    >>> policy = Policy(bounds={"age": (0, 120)}, domains={"sex": ["F", "M"]}, min_group_size=1)
    >>> frame = pd.DataFrame({"sex": ["F", "M", "F"], "age": [30.0, 50.0, 40.0]})
    >>> df = query([Site({"p": frame}, policy)], "SELECT sex, AVG(age) FROM p GROUP BY sex",
    ...            secure=False)
    >>> df["AVG(age)"].tolist()
    [35.0, 50.0]
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from covey.core._extras import import_feature
from covey.core._lazy import public_dir

if TYPE_CHECKING:  # the real imports load duckdb, pandas and sqlglot: only when first used
    from covey.analytics._csv import CSV
    from covey.analytics._dp import Analyst
    from covey.analytics._exchange import FederationQueryError
    from covey.analytics._policy import Policy, PolicyError
    from covey.analytics._query import query
    from covey.analytics._site import TASK_KIND, Site
    from covey.analytics._sql import plan
    from covey.analytics._sqltext import QueryError

_WHERE = {
    "CSV": "_csv",
    "Analyst": "_dp",
    "FederationQueryError": "_exchange",
    "Policy": "_policy",
    "PolicyError": "_policy",
    "query": "_query",
    "TASK_KIND": "_site",
    "Site": "_site",
    "QueryError": "_sqltext",
    "plan": "_sql",
}

__all__ = [
    "CSV",
    "TASK_KIND",
    "Analyst",
    "FederationQueryError",
    "Policy",
    "PolicyError",
    "QueryError",
    "Site",
    "plan",
    "query",
]


def _load(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'covey.analytics' has no attribute {name!r}")
    value = getattr(import_feature(f"covey.analytics.{module}", f"covey.analytics.{name}"), name)
    globals()[name] = value
    return value


if not TYPE_CHECKING:  # type checkers see the imports above: a misspelt name is an error
    __getattr__ = _load


__dir__ = public_dir(__name__)
