"""Checks of what a strategy's functions and overrides return, naming the one at fault.

A strategy of one's own supplies functions (a selector, config and metrics
functions) or overrides methods (``fit_config``, ``num_fit``); what they
return is checked here before the round loop uses it, so a mistake is an
error that names the function, not a failure deep inside covey.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np

from covey.core._jsonvalues import from_jsonable, jsonable, tag_in, tagged
from covey.core._messages import Config
from covey.core._text import clients as clients

_S = TypeVar("_S", bound=Callable[..., Any])

_FIT_ONLY = "_covey_fit_only"


def fit_only(selector: _S) -> _S:
    """Mark ``selector`` as choosing who trains only (a DP mechanism's sampling).

    Federated evaluation then samples by ``fraction_evaluate`` as without it,
    instead of asking the selector (which would evaluate on the round's trainers).
    """
    selector.__dict__[_FIT_ONLY] = True
    return selector


def selects_evaluation(selector: Any) -> bool:
    """Whether ``selector`` also picks the clients of federated evaluation."""
    return selector is not None and not getattr(selector, _FIT_ONLY, False)


def name_of(fn: Any) -> str:
    """A function's qualified name (or its type's, for a callable object).

    A function standing for another (its ``__wrapped__``, as ``functools.wraps``
    sets it) is named by the function it wraps.
    """
    for _ in range(100):  # a chain of wrappers, never a cycle
        inner = getattr(fn, "__wrapped__", None)
        if inner is None or inner is fn:
            break
        fn = inner
    return str(getattr(fn, "__qualname__", None) or type(fn).__name__)


#: How the round loop calls each function a strategy is given (all arguments positional),
#: and what it must be; None is allowed for the last three.
CALLS = {
    "on_fit_config": ("on_fit_config(round)", "function"),
    "on_evaluate_config": ("on_evaluate_config(round)", "function"),
    "fit_metrics": ("fit_metrics(results)", "function"),
    "evaluate_metrics": ("evaluate_metrics(results)", "function"),
    "on_client_fit_config": ("on_client_fit_config(round, client)", "(round, client) -> dict"),
    "on_client_evaluate_config": (
        "on_client_evaluate_config(round, client)",
        "(round, client) -> dict",
    ),
    "selector": ("selector(candidates, round, rng)", "(candidates, round, rng) -> cids"),
}


def check_call(fn: object, attr: str) -> None:
    """Refuse a function a strategy is given that cannot be called as the round loop calls it.

    A dict given as ``on_fit_config`` would otherwise fail at the first round
    with ``'dict' object is not callable``, and ``on_fit_config=lambda: {"lr":
    0.1}`` with Python's bare ``takes 0 positional arguments but 1 was given``,
    naming neither the option nor what covey passes.

    Raises:
        TypeError: naming the option, the call covey makes and the function's own signature.
    """
    call, shape = CALLS[attr]
    if fn is None and shape != "function":
        return
    if not callable(fn):
        kind = "function" if shape == "function" else f"{shape} function"
        raise TypeError(f"{attr} must be a {kind}, got {type(fn).__name__}")
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # a builtin or extension type: nothing to check
        return
    count = call.count(",") + 1
    try:
        signature.bind(*range(count))
    except TypeError:
        raise TypeError(
            f"covey calls {call} but {attr} {name_of(fn)}{signature} cannot be called so: "
            f"give it {'that parameter' if count == 1 else f'those {count} parameters'}"
        ) from None


#: What a run hook (:class:`covey.core.RunHook`) implements, as the round loop calls it.
HOOK_METHODS = {
    "start": "start(state, seed, history)",
    "before_round": "before_round(round, state)",
    "after_round": "after_round(record, state)",
    "finish": "finish(history, state)",
}


def check_hooks(hooks: Any) -> None:
    """Refuse ``Strategy(hooks=...)`` that is not a tuple (or list) of run hooks, naming it.

    A hook without ``finish`` was otherwise found only after the last round,
    with an ``AttributeError`` that lost the run's result; a single hook not in
    a tuple failed with ``'...' object is not iterable``.

    Raises:
        TypeError: naming the hook and the methods it lacks.
    """
    if not isinstance(hooks, tuple | list):
        raise TypeError(
            f"hooks must be a tuple of run hooks (covey.core.RunHook), got "
            f"{type(hooks).__name__}: write hooks=(hook,) for one"
        )
    for i, hook in enumerate(hooks):
        lacks = [
            call for name, call in HOOK_METHODS.items() if not callable(getattr(hook, name, None))
        ]
        if lacks:
            raise TypeError(
                f"hooks[{i}] ({type(hook).__name__}) is not a run hook (covey.core.RunHook): "
                f"it lacks {', '.join(lacks)}"
            )


def stop_reason(hooks: Sequence[Any], round: int, state: Any) -> str | None:
    """The first reason a run hook's ``before_round`` gives to stop before ``round``, or None.

    A hook that returns no reason (None, or anything false) lets the round run.

    Raises:
        TypeError: naming the hook, if it returns a true value that is no reason (a
            str): ``True`` stopped the run with ``True`` as its ``stopped_reason``.
    """
    for hook in hooks:
        reason = hook.before_round(round, state)
        if not reason:
            continue
        if not isinstance(reason, str):
            raise TypeError(
                f"{type(hook).__name__}.before_round(round, state) must return a reason to "
                f"stop the run (a str) or None to run round {round}, got {reason!r:.80}"
            )
        return reason
    return None


def selected(
    selector: Callable[..., Any],
    candidates: Sequence[int],
    round: int,
    rng: Any,
    step: str = "round",
) -> Any:
    """What ``selector(candidates, round, rng)`` returns; an error it raises noted with its name.

    As the config and metrics functions' errors are: a bare ``KeyError`` of a
    selector said neither which function raised it nor in which round (``step``:
    an asynchronous run's ``"update"``).
    """
    try:
        return selector(candidates, round, rng)
    except Exception as exc:  # the user's error, told where it came from
        exc.add_note(f"raised by selector {name_of(selector)} in {step} {round}")
        raise


def picked_ids(
    selector: Callable[..., Any], picked: Any, round: int | None = None, step: str = "round"
) -> list[int]:
    """The client ids a custom ``selector`` returned, in its order, each once.

    ``round`` (an asynchronous run's update, ``step="update"``) is named in errors.

    Raises:
        TypeError: naming the selector, if it returned anything but ids (ints).
        ValueError: naming the selector, if it chose a client more than once.
    """
    items: list[Any] | None = None
    if isinstance(picked, np.ndarray):
        items = picked.tolist() if picked.ndim == 1 else None
    elif isinstance(picked, Iterable) and not isinstance(picked, str | bytes | Mapping):
        items = list(picked)
    if items is None or not all(
        isinstance(c, int | np.integer) and not isinstance(c, bool) for c in items
    ):
        raise TypeError(
            f"selector {name_of(selector)} must return client ids (ints) chosen among its "
            f"candidates, got {str(picked)[:80]!r}"
        )
    ids = [int(c) for c in items]
    if len(set(ids)) != len(ids):
        when = "" if round is None else f" in {step} {round}"
        raise ValueError(
            f"selector {name_of(selector)}{when} chose clients more than once: "
            f"{sorted(ids)[:80]}; return each client id once"
        )
    return ids


def chose_none(selector: Callable[..., Any], idle: int, update: int, buffer_size: int) -> str:
    """Why a FedBuff run stops whose ``selector`` chose none of ``idle`` clients, none training.

    A synchronous round with an empty choice trains no client and keeps the model;
    a FedBuff update waits for ``buffer_size`` replies, and would wait for ever.
    """
    return (
        f"update {update}: selector {name_of(selector)} chose none of the {idle} idle "
        f"client{'s' if idle != 1 else ''} it was given, and no client is training: a "
        f"FedBuff update waits for buffer_size={buffer_size} replies, so it cannot go on "
        "(an empty choice only skips a synchronous round). Have the selector choose at "
        "least one of its "
        "candidates when no client is training; to leave clients out for good, use where="
    )


def outside_candidates(
    selector: Callable[..., Any], unknown: Sequence[int], where: object, round: int
) -> ValueError:
    """The error for a ``selector`` that chose ``unknown``, clients not among its candidates.

    Its candidates are the available clients that pass ``where``: with a ``where``,
    a client left out may be available and fail it, so the error does not call it
    unavailable.
    """
    said = f"selector {name_of(selector)} chose clients not among its candidates in round {round}"
    if where is None:
        return ValueError(f"{said}: {sorted(unknown)} are not available")
    test = where_text(where)
    return ValueError(
        f"{said}, the available clients that pass {test}: {sorted(unknown)} are not available "
        f"or do not pass {test}"
    )


def where_text(where: object) -> str:
    """A ``where=`` filter as a message shows it: ``where={'site': 'a'}`` or its function's name.

    A subclass's :meth:`~covey.Strategy.eligible` (bound) shows as ``Sites.eligible()``.
    """
    if isinstance(where, Mapping):
        return f"where={dict(where)!r}"
    return filter_text(where) if _is_eligible(where) else f"where= {name_of(where)}"


def filter_text(where: object) -> str:
    """``where=``, or a subclass's ``eligible`` as ``Sites.eligible()``."""
    return f"{name_of(where)}()" if _is_eligible(where) else "where="


def _is_eligible(where: object) -> bool:
    return getattr(where, "__name__", "") == "eligible" and hasattr(where, "__self__")


def clients_there(count: int, where: object) -> str:
    """``"3 clients are available"``, or under a filter ``"1 client passes where={...}"``.

    The one wording of every message about too few clients, sampled or not: a
    ``where=`` filter is named, as its clients may be available and fail it.
    """
    if where is None:
        return f"{clients(count)} {'is' if count == 1 else 'are'} available"
    return f"{clients(count)} {'passes' if count == 1 else 'pass'} {where_text(where)}"


def too_few_to_sample(round: int, count: int, available: int, where: object) -> str:
    """Why ``Strategy.sample`` cannot choose ``count`` of ``available`` clients."""
    return f"round {round} needs {clients(count)} but only {clients_there(available, where)}"


def not_among(chosen: Iterable[int], pool: Sequence[int]) -> list[int]:
    """The ids of ``chosen`` that are not in ``pool``, in the order of ``chosen``.

    A ``range`` (a simulation's clients) is tested in place: O(len(chosen)), where a
    set of the pool would hold every client of the federation, each round.
    """
    if isinstance(pool, range):
        return [c for c in chosen if c not in pool]
    members = set(pool)
    return [c for c in chosen if c not in members]


def checked_config(value: Any, what: str) -> Config:
    """A copy of the config ``what`` returned; a TypeError naming it if it is no dict."""
    if not isinstance(value, dict):
        raise TypeError(f"{what} must return a dict, got {type(value).__name__}")
    return dict(value)


def checked_metrics(value: Any, what: str, round: int | None = None) -> dict[str, Any]:
    """A copy of the metrics ``what`` returned, as the history reads them back from its JSON.

    A ``np.float32`` kept as such would be left out by :meth:`covey.History.metric`
    during the run yet found in the same history read back from ``history.json``;
    so would, at any depth, a dict keyed by client ids (read back keyed by
    strings), a tuple (a list), a NumPy array (a list of numbers) or scalar. The
    round's record holds from the start what ``history.json``, a resumed run's
    saved rounds and the dashboard give, so that a run's history reads the same
    live, loaded and resumed.

    Raises:
        TypeError: naming ``what``, if the metrics are no dict keyed by names, or hold a
            value the history cannot keep (a run folder would fail to save the round).
    """
    if not isinstance(value, Mapping):
        raise TypeError(
            f"{what} must return a dict of metric names to values, got {str(value)[:80]!r}"
        )
    named = next((key for key in value if not isinstance(key, str)), None)
    if named is not None or any(not isinstance(key, str) for key in value):
        raise TypeError(
            f"{what} must return a dict of metric names to values, got {str(value)[:80]!r}: "
            f"its key {named!r:.40} ({type(named).__name__}) is no name; metric names are "
            "str (keep values keyed by client under one name: {'accuracy': {3: 0.9, ...}})"
        )
    metrics = {
        key: metric.item() if isinstance(metric, np.generic) or _zero_d(metric) else metric
        for key, metric in value.items()
    }
    where = "" if round is None else f" in round {round}"
    try:
        stored = jsonable(metrics)
        tag = tag_in(metrics, "its metrics")
    except (TypeError, RecursionError) as exc:
        raise TypeError(f"{what}{where} returned a value the history cannot keep: {exc}") from None
    if tag is not None:
        raise TypeError(f"{what}{where} returned a value the history cannot keep: {tagged(*tag)}")
    kept: dict[str, Any] = from_jsonable(stored)
    return kept


def _zero_d(value: Any) -> bool:
    """Whether ``value`` is a 0-d NumPy array (one number)."""
    return isinstance(value, np.ndarray) and value.ndim == 0


def checked_count(value: Any, what: str) -> int:
    """The number of clients ``what`` returned; a TypeError naming it unless an int >= 0."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
        raise TypeError(f"{what} must return a number of clients (an int >= 0), got {value!r}")
    return int(value)


def unmet_rule_need(strategy: Any, connected: int) -> tuple[int, str, int] | None:
    """``(need, why, sampled)`` if the aggregation rule needs more clients than a round samples.

    ``sampled`` is the most clients a synchronous round samples with ``connected``
    clients connected: all of them with a ``selector``, else ``num_fit`` of them
    raised to the rule's need (a round samples at least that many when there are
    enough). ``need`` and ``why`` are the rule's own (see
    :func:`covey.aggregate._base.requiring`). None if the rule asks nothing, the
    strategy is asynchronous or the need is met.
    """
    from covey.aggregate._base import min_contributions

    need = min_contributions(strategy.aggregator)
    if need is None or strategy.asynchronous:
        return None
    sampled = connected
    if strategy.selector is None:
        sampled = min(max(strategy.client_count("fit", connected), need[0]), connected)
    return (need[0], need[1], sampled) if sampled < need[0] else None


def unmet_buffer_need(strategy: Any) -> str | None:
    """Why an asynchronous strategy's rule can never run: its buffer holds too few replies.

    Each asynchronous update aggregates exactly ``buffer_size`` replies, however many
    clients there are; a rule that needs more (Krum's ``2f + 3``) would leave the
    model unchanged at every update. None if the strategy is synchronous, its rule
    asks nothing, or the buffer is large enough.
    """
    from covey.aggregate._base import min_contributions

    need = min_contributions(strategy.aggregator)
    size = strategy.buffer_size
    if need is None or size is None or size >= need[0]:
        return None
    return (
        f"{strategy.name} would leave the model unchanged at every update: {need[1]} "
        f"replies per update, but each asynchronous update aggregates buffer_size={size}: "
        f"raise buffer_size to {need[0]} or more"
    )


def refuse_unmet_need(
    strategy: Any, clients: int, *, limit: str, samples: str, advice: str = ""
) -> None:
    """Refuse a rule that no round (or update) of ``strategy`` can satisfy.

    Args:
        strategy: The strategy.
        clients: The most clients a round can sample from.
        limit: The name of that count in the message (``"num_clients"``).
        samples: How a round's count is phrased (``"this run samples"``).
        advice: What to raise, said after the counts (empty: nothing).

    Raises:
        ValueError: naming the rule's need and the counts, as
            :func:`unmet_buffer_need` and :func:`unmet_rule_need` find them.
    """
    short = unmet_buffer_need(strategy)
    if short is not None:
        raise ValueError(short)
    unmet = unmet_rule_need(strategy, clients)
    if unmet is not None:
        raise ValueError(
            f"{strategy.name} would leave the model unchanged every round: {unmet[1]} "
            f"clients per round, but {samples} {unmet[2]} ({limit}={clients}, "
            f"fraction_fit={strategy.fraction_fit}, min_fit_clients="
            f"{strategy.min_fit_clients})" + (f": {advice}" if advice else "")
        )


def refuse_other_federation(strategy: Any, num_clients: int) -> None:
    """Refuse a rule written for a federation of another size than the simulated one.

    Raises:
        ValueError: naming both sizes (SCAFFOLD's ``num_clients``).
    """
    from covey.aggregate._base import federation_size

    size = federation_size(strategy.aggregator)
    if size is not None and size != num_clients:
        raise ValueError(
            f"{strategy.name} was made for num_clients={size}, but the simulation has "
            f"num_clients={num_clients}: SCAFFOLD moves c by 1/num_clients of each "
            "client's change, so give it the federation's size"
        )


def poisson_minimum(strategy: Any, available: int, what: str, where: bool = False) -> str | None:
    """Why ``min_fit_clients`` above ``available`` clients stops a Poisson-sampled run, or None.

    Under central DP each available client trains with probability ``fraction_fit``,
    so ``min_fit_clients`` bounds no round's clients (``docs/privacy.md``): it only
    makes a round wait for that many clients to be available. Said plainly, since
    "needs N clients" would read as a number of trainers. ``what`` names the
    clients there are (``"num_clients=4"``). ``where``: ``available`` counts the
    clients that pass the strategy's ``where=``, whom the draw is made from and
    whom a round needs ``min_fit_clients`` of.
    """
    dp = strategy.hyperparameters.get("dp")
    if not isinstance(dp, Mapping) or dp.get("sampling") != "poisson":
        return None
    rate = float(dp.get("sampling_rate") or 1.0)
    pool = "client that passes where=" if where else "available client"
    held = (
        "need that many clients that pass where="
        if where
        else "wait for that many clients available"
    )
    return (
        f"central DP picks each round's clients by a Poisson draw: every {pool} "
        f"trains with probability fraction_fit={rate:g}, so a round expects {rate * available:g} "
        f"of {available} (or central(expected_clients=...)), and min_fit_clients does not bound "
        f"that number; min_fit_clients={strategy.min_fit_clients} only makes each round {held}, "
        f"more than {what}: lower min_fit_clients to at most "
        f"{available} (0 runs each round with the clients there are)"
    )


def poisson_note(strategy: Any, there: int, which: str = "available") -> str:
    """Under central DP, ``"; "`` and why min_fit_clients held a round, or ``""``.

    ``there`` clients were ``which`` (``"available"``, ``"that pass where="``),
    fewer than ``min_fit_clients`` (and, of those available, than the
    ``min_available_clients`` the round waited for too): the round could not
    start, though ``min_fit_clients`` bounds no Poisson-sampled round.
    """
    where = which != "available"
    waited = 0 if where else strategy.min_available_clients
    held = strategy.min_fit_clients > max(there, waited)
    what = f"the {there} that do" if where else f"the {there} {which}"
    note = poisson_minimum(strategy, there, what, where) if held else None
    return "" if note is None else f"; {note}"
