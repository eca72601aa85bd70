"""A site's policy: which tables and columns it answers about, and how.

The policy is the site's, not the analyst's: the site checks every query
against it before touching its data, and what it does not allow is refused
with a reason the analyst sees. A site without a policy answers nothing.
"""

from __future__ import annotations

import copy
import math
import numbers
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from covey.analytics._sql import Plan
from covey.analytics._sqltext import fold
from covey.core._messages import Count, Real, finite, plain_count, plain_real, shown

MAX_DOMAIN = 1000
_LISTS = ("tables", "columns", "min_max", "distinct")
_NAMED = (*_LISTS, "bounds", "domains")


class PolicyError(PermissionError):
    """A site refuses a query: its policy does not allow it."""


def _check_domain(col: str, values: Any) -> None:
    if isinstance(values, str) or not isinstance(values, Sequence):
        raise TypeError(f"domains[{col!r}] must be a list of values, got {values!r}")
    for v in values:  # before the set of them: a list among them is not hashable
        if isinstance(v, float) or not isinstance(v, str | int):
            raise TypeError(f"domains[{col!r}] values must be str, int or bool, got {v!r}")
    if not 1 <= len(values) <= MAX_DOMAIN:  # the count, not a list of thousands of values
        raise ValueError(
            f"domains[{col!r}] must hold 1 to {MAX_DOMAIN} distinct values, "
            f"got {len(values)} values"
        )
    seen: set[Any] = set()
    for v in values:
        if v in seen:  # True is 1 to a set, as to SQL's GROUP BY
            twice = next(w for w in values if w == v)
            what = f"{v!r} twice" if twice is v else f"{twice!r} and {v!r}, one value"
            raise ValueError(
                f"domains[{col!r}] must hold 1 to {MAX_DOMAIN} distinct values; it lists {what}"
            )
        seen.add(v)


def _check_bound(col: str, bound: Any) -> None:
    """Refuse a bound that is not a pair of finite numbers ``(low, high)`` with ``low < high``.

    A string, bytes or a mapping of two items is not a pair: ``"09"`` would read as
    (0, 9), ``b"09"`` as the codes (48, 57).
    """
    pair = isinstance(bound, Sequence | np.ndarray) and not isinstance(bound, str | bytes)
    if not pair or len(bound) != 2:
        raise ValueError(f"bounds[{col!r}] must be (low, high), got {bound!r}")
    for b in bound:
        if isinstance(b, bool | np.bool_) or not isinstance(b, numbers.Real):
            raise ValueError(f"bounds[{col!r}] must be two numbers (low, high), got {bound!r}")
    try:
        low, high = (float(b) for b in bound)
    except OverflowError:  # an int past the largest float (10**400)
        raise ValueError(
            f"bounds[{col!r}] must be finite numbers, got one too large for a float: "
            f"{str(bound)[:60]}..."
        ) from None
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise ValueError(f"bounds[{col!r}] must be finite with low < high, got {bound!r}")


def _check_names(field_name: str, names: Any) -> None:
    """Refuse a string for a list of names, and two names SQL reads as one (``age``, ``Age``)."""
    if field_name in _LISTS and isinstance(names, str | bytes):  # "age" in "page": fail closed
        raise TypeError(
            f"{field_name} must be a list of names, got the string {names!r}; "
            f"write {field_name}=[{names!r}]"
        )
    if field_name in _LISTS and names is not None and not isinstance(names, Iterable):
        raise TypeError(f"{field_name} must be a list of names, got {names!r}")
    if field_name not in _LISTS and not isinstance(names, Mapping):  # bounds, domains
        shape = "(low, high)" if field_name == "bounds" else "[values]"
        raise TypeError(f"{field_name} must be {{column: {shape}}}, got {names!r}")
    seen: dict[str, str] = {}
    for key in names or ():
        other = seen.setdefault(fold(str(key)), str(key))
        if other != str(key):
            raise ValueError(
                f"{field_name} names {other!r} and {key!r}, which SQL reads as one name "
                "(names ignore the case of ASCII letters); give it once"
            )


@dataclass(frozen=True)
class Policy:
    """What a site answers, enforced at the site before any data is read.

    Args:
        tables: Tables the site answers about (None: every table it exposes).
        columns: Columns it answers about, in any table (None: every column).
        bounds: ``{column: (low, high)}`` for each numeric column that may be summed,
            averaged, or binned. Values outside are clipped to the bounds (and the
            answer counts them). Sums, means, variances and quantiles of a column
            without bounds are refused: the bounds fix the sensitivity of DP noise.
        domains: ``{column: [values]}`` for each column that may be grouped by:
            every group in the domain is answered (zero when empty), so the shape
            of an answer reveals nothing.
        min_group_size: No answer for a group with fewer records (after WHERE),
            checked on this site's own answer and again on the total.
        epsilon: The DP budget this site spends in total (None: no limit, and
            queries without DP are answered). With a budget, only DP queries are
            answered, until it is spent.
        min_max: Columns whose MIN and MAX may be revealed (never under secure
            aggregation, where no single site's answer is visible).
        delta: The delta of the site's (epsilon, delta) budget, for Gaussian noise.
        distinct: Columns ``APPROX_COUNT_DISTINCT`` may count. Its answer marks the
            bucket of each value's unkeyed hash, so whoever sums it can tell whether
            a guessed value is among those of the rows selected: a column is listed
            only if its values may be seen (none by default).
        max_epsilon: The most epsilon (at ``delta``) a DP query may cost at this site
            for the site to answer it without withholding its small groups (None: the
            budget ``epsilon``). A query whose noise is weaker, or any query when the
            policy sets neither, is answered with the small groups withheld as without
            DP: noise alone is a protection only as strong as the site accepts.

    Example:
        >>> p = Policy(bounds={"age": (0, 120)}, domains={"sex": ["F", "M"]})
        >>> p.min_group_size
        10
    """

    tables: Sequence[str] | None = None
    columns: Sequence[str] | None = None
    bounds: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    domains: Mapping[str, Sequence[Any]] = field(default_factory=dict)
    min_group_size: int = 10
    epsilon: float | None = None
    min_max: Sequence[str] = ()
    delta: float = 1e-6
    distinct: Sequence[str] = ()
    max_epsilon: float | None = None

    if TYPE_CHECKING:  # NumPy numbers are taken, and kept as the Python numbers they are

        def __init__(
            self,
            tables: Sequence[str] | None = None,
            columns: Sequence[str] | None = None,
            bounds: Mapping[str, tuple[Real, Real]] = ...,
            domains: Mapping[str, Sequence[Any]] = ...,
            min_group_size: Count = 10,
            epsilon: Real | None = None,
            min_max: Sequence[str] = (),
            delta: Real = 1e-6,
            distinct: Sequence[str] = (),
            max_epsilon: Real | None = None,
        ) -> None: ...

    def __post_init__(self) -> None:
        object.__setattr__(self, "min_group_size", plain_count(self.min_group_size))
        for name in ("epsilon", "delta", "max_epsilon"):
            object.__setattr__(self, name, plain_real(getattr(self, name)))
        for name in _NAMED:
            _check_names(name, getattr(self, name))
        if isinstance(self.min_group_size, bool) or not isinstance(self.min_group_size, int):
            raise TypeError(f"min_group_size must be an int, got {self.min_group_size!r}")
        if self.min_group_size < 1:
            raise ValueError(f"min_group_size must be at least 1, got {self.min_group_size}")
        for col, bound in self.bounds.items():
            _check_bound(col, bound)
        for col, values in self.domains.items():
            _check_domain(col, values)
        for name in ("epsilon", "max_epsilon"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not (finite(value) and value > 0)  # an int past the largest float too
            ):
                raise ValueError(f"{name} must be positive and finite, got {shown(value)}")
        if not 0 < self.delta < 1:
            raise ValueError(f"delta must be in (0, 1), got {self.delta}")

    def spelled_as(self, plan: Plan) -> Policy:
        """This policy with the names a query reads spelled as the query spells them.

        SQL names ignore the case of ASCII letters, as DuckDB reads them: a policy
        that bounds ``Age`` bounds ``age`` in ``AVG(age)``. Each name the query
        reads is added beside the policy's own spelling, so every check and
        lookup by the query's names finds it.

        Args:
            plan: The parsed query whose table and column names are added.
        """
        wanted: dict[str, list[str]] = {}
        for name in (plan.table, *sorted(plan.columns())):
            wanted.setdefault(fold(name), []).append(name)

        def names(values: Sequence[str] | None) -> Sequence[str] | None:
            if values is None:
                return None
            out = list(values)
            for v in values:
                out += [n for n in wanted.get(fold(str(v)), []) if n not in out]
            return out

        def keyed(mapping: Mapping[str, Any]) -> dict[str, Any]:
            out = dict(mapping)
            for key, value in mapping.items():
                out.update(dict.fromkeys(wanted.get(fold(str(key)), []), value))
            return out

        view = copy.copy(self)  # frozen: the view is set field by field, not checked again
        for name in ("tables", "columns", "min_max", "distinct"):
            object.__setattr__(view, name, names(getattr(self, name)))
        object.__setattr__(view, "bounds", keyed(self.bounds))
        object.__setattr__(view, "domains", keyed(self.domains))
        return view

    def describe(self) -> dict[str, Any]:
        """What the site declares publicly: bounds, domains, minimum group size, budget."""
        return {
            "bounds": {c: [float(b[0]), float(b[1])] for c, b in self.bounds.items()},
            "domains": {c: list(v) for c, v in self.domains.items()},
            "min_group_size": self.min_group_size,
            "epsilon": self.epsilon,
            "max_epsilon": self.max_epsilon,
            "min_max": list(self.min_max),
            "distinct": list(self.distinct),
        }

    @property
    def dp_level(self) -> float | None:
        """The most epsilon a query may cost for its noise to stand in for withholding.

        ``max_epsilon``, else the budget ``epsilon``; None (always withhold) without either.
        """
        return self.max_epsilon if self.max_epsilon is not None else self.epsilon

    def check(self, plan: Plan, *, secure: bool, dp: bool) -> None:
        """Raise :class:`PolicyError` with the reason if this site does not answer ``plan``.

        Args:
            plan: The parsed query (its table, columns, groups and aggregates).
            secure: Whether the query runs under secure aggregation (MIN and MAX are
                then refused).
            dp: Whether the query has differential privacy (a site with a budget
                refuses one without).
        """
        if self.tables is not None and plan.table not in self.tables:
            raise PolicyError(f"table {plan.table!r} is not open to queries at this site")
        if self.columns is not None:
            for col in sorted(plan.columns()):
                if col not in self.columns:
                    raise PolicyError(f"column {col!r} is not open to queries at this site")
        for col in plan.group_by:
            if col not in self.domains:
                raise PolicyError(
                    f"GROUP BY {col}: the site declares no domain for {col!r}, so its groups "
                    "would reveal which values exist"
                )
        for agg in plan.aggregates:
            self._check_aggregate(agg.func, agg.column, agg.args, agg.name, secure)
        if self.epsilon is not None and not dp:
            raise PolicyError(
                f"this site answers only with differential privacy (budget epsilon="
                f"{self.epsilon}); give the query an epsilon (query(..., epsilon=...), "
                "covey query --epsilon)"
            )

    def _check_aggregate(
        self, func: str, column: str | None, args: tuple[Any, ...], name: str, secure: bool
    ) -> None:
        if func in ("min", "max"):
            if secure:
                raise PolicyError(
                    f"{name}: MIN and MAX are never answered under secure aggregation"
                )
            if column not in self.min_max:
                raise PolicyError(
                    f"{name}: the site does not reveal the MIN or MAX of {column!r} (a policy "
                    "lists such columns in min_max=)"
                )
        if func == "approx_distinct" and column not in self.distinct:
            raise PolicyError(
                f"{name}: the site does not count the distinct values of {column!r} (its "
                "hashed buckets would tell whether a guessed value is there); a policy "
                "lists such columns in distinct="
            )
        needs_bounds = func not in ("count", "count_col", "approx_distinct", "top_k", "min", "max")
        if needs_bounds and column not in self.bounds:
            raise PolicyError(
                f"{name}: the site declares no bounds for {column!r}; sums, means, variances, "
                "histograms and quantiles need them"
            )
        if func == "kaplan_meier":
            self._check_event(str(args[0]), name)

    def _check_event(self, event: str, name: str) -> None:
        """Refuse a survival curve whose event column is not declared as 0 or 1."""
        if event not in self.bounds:
            raise PolicyError(f"{name}: the site declares no bounds for the event column {event!r}")
        low, high = (float(b) for b in self.bounds[event])
        if (low, high) != (0.0, 1.0):
            raise PolicyError(
                f"{name}: the event column {event!r} is read as 0 (censored) or 1 (event), "
                f"but the site declares bounds ({low:g}, {high:g}) for it; code it 0/1 and "
                "declare bounds (0, 1)"
            )
