"""The server side of federated XGBoost: merge clients' trees (bagging) or take turns (cyclic)."""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, NamedTuple

import numpy as np

from covey.aggregate import Aggregate, AggregationError, Begin, Contribution, End, Event, Step
from covey.aggregate._flat import check_switch
from covey.aggregate._order import DESCRIBED
from covey.core._weights import Weights, WeightsError
from covey.strategies import Strategy
from covey.strategies._options import StrategyOptions, preset
from covey.strategies._recorded import described_since, recorded_since
from covey.xgboost._limits import (
    capping,
    check_count,
    check_local_rounds,
    check_max_trees,
    mark_full,
    past_cap,
    start_within,
)
from covey.xgboost._model import MODEL, SIZE, from_weights, load_booster, parse, to_weights
from covey.xgboost._validate import check_model, new_trees, trees_per_iteration

__all__ = ["XGBoostBagging", "XGBoostCyclic", "bagging", "cyclic", "merge_trees", "round_robin"]


def _model(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["learner"]["gradient_booster"]["model"]  # type: ignore[no-any-return]


def _scale_leaves(tree: dict[str, Any], factor: float) -> dict[str, Any]:
    """A copy of ``tree`` whose leaf values are multiplied by ``factor``."""
    out = copy.deepcopy(tree)
    left = out["left_children"]
    for key in ("split_conditions", "base_weights"):
        values = out[key]
        for node, child in enumerate(left):
            if child == -1:
                values[node] = float(values[node]) * factor
    return out


def merge_trees(base: bytes, clients: Sequence[tuple[bytes, float]]) -> bytes:
    """One booster: ``base`` plus each client's trees grown past ``base``, leaves scaled.

    Each client boosted the same ``base`` on its own data; the trees it added
    beyond ``base``'s are appended, their leaf values multiplied by the
    client's factor (its share of the examples, for an example-weighted mean
    of the clients' boosting steps; 1.0 to simply add every client's trees).

    Args:
        base: The global booster the clients started from (XGBoost JSON).
        clients: ``(client booster JSON, factor)`` per client, in client-id order.

    Returns:
        The merged booster as XGBoost JSON bytes.

    Raises:
        WeightsError: A model is not XGBoost JSON, a client's model does not
            extend ``base`` (fewer trees, other features or classes), or one of
            its new trees is malformed (see ``covey.xgboost._validate``).
    """
    return _merge(base, clients, [f"client model {i}" for i in range(len(clients))])


def _merge(
    base: bytes,
    clients: Sequence[tuple[bytes, float]],
    names: Sequence[str],
    local_rounds: int | None = None,
) -> bytes:
    """:func:`merge_trees`, each client's model named in errors by ``names``.

    ``local_rounds``: each client's model must add exactly this many boosting
    iterations' trees (None: any number).
    """
    doc = parse(base)
    per = None if local_rounds is None else trees_per_iteration(doc)
    merged = _model(doc)
    params = doc["learner"]["learner_model_param"]
    objective = (doc["learner"].get("objective") or {}).get("name")
    indptr: list[int] = list(merged["iteration_indptr"])
    known = len(merged["trees"])
    for (model, factor), what in zip(clients, names, strict=True):
        client = parse(model, what)
        trees, info, ends = _new_trees(client, params, known, what, objective)
        if local_rounds is not None and per is not None:
            check_count(client, len(trees), local_rounds, per, what)
        start = len(merged["trees"])
        for tree in trees:
            new = _scale_leaves(tree, factor)
            new["id"] = len(merged["trees"])
            merged["trees"].append(new)
        merged["tree_info"].extend(info)
        indptr.extend(start + end for end in ends)
    merged["iteration_indptr"] = indptr
    merged["gbtree_model_param"]["num_trees"] = str(len(merged["trees"]))
    return json.dumps(doc, separators=(",", ":")).encode()


def _new_trees(
    client: dict[str, Any], params: dict[str, Any], known: int, what: str, objective: str | None
) -> tuple[list[Any], list[int], list[int]]:
    """:func:`new_trees`; a client model missing a field, or with one of another type, named."""
    try:
        return new_trees(client, params, known, what, objective)
    except WeightsError:
        raise
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise WeightsError(
            f"{what} lacks a field of an XGBoost model or has a malformed one: {exc!r}"
        ) from None


def check_start(params: Weights) -> None:
    """Refuse, before round 1, a global model that is no booster XGBoost loads.

    A checkpoint of another kind, or a damaged one, would otherwise fail on every
    client in round 1 with the same error.

    Raises:
        WeightsError: ``initial weights: `` and what is wrong (the entries, the
            declared size, the JSON, a malformed tree).
    """
    try:
        model = from_weights(params)
        _int64_size(params)
        doc = parse(model, averaged=False)  # a damaged checkpoint, not an averaged model
        check_model(doc, "the model")
        load_booster(model)
    except (WeightsError, KeyError, TypeError) as exc:
        raise WeightsError(f"initial weights: {exc}") from None


def _int64_size(params: Weights) -> None:
    """Refuse a ``size`` of another integer dtype: every client's reply holds an int64 one.

    The global model keeps its dtypes, so each reply would be refused as not matching it.
    """
    size = np.asarray(params[SIZE])
    if size.dtype != np.int64:
        raise WeightsError(
            f"{SIZE!r} is {size.dtype}, the clients reply with int64 (as to_weights makes "
            f"it): give {SIZE!r} as int64"
        )


def _accepted(
    params: Weights, contribution: Contribution, local_rounds: int
) -> tuple[bytes, bytes]:
    """A client's model bytes, and the global model plus its new trees, if they can join.

    Checked when the client's reply arrives, so that a client whose trees cannot
    join (another objective or booster, a malformed or non-finite tree, another
    number of trees than ``local_rounds`` boosting rounds grow) fails alone and
    the round goes on with the others.

    Raises:
        AggregationError: What is wrong with this client's model (the round loop
            records the client's fit as failed).
    """
    if contribution.staleness:  # asynchronous rounds (buffer_size)
        raise AggregationError(
            f"the client's model grew from a booster {contribution.staleness} update(s) older "
            "than the global one, whose trees it extends: its own cannot join this one; run "
            "XGBoost in synchronous rounds (no buffer_size)"
        )
    try:
        model = from_weights(contribution.as_weights(params))
        merged = _merge(from_weights(params), [(model, 1.0)], ["the client's model"], local_rounds)
        load_booster(merged)
    except (WeightsError, ValueError) as exc:
        raise AggregationError(str(exc)) from exc
    return model, merged


def _described(step: Step, said: str) -> Step:
    """``step``, recorded in a run's record as ``said``: its call, every setting checked.

    Runs of an older covey recorded the function's name (``bagging.<locals>.update``):
    they resume (see ``covey.strategies._recorded.described_since``).
    """
    setattr(step.update, DESCRIBED, said)
    return step


class _RoundState(NamedTuple):
    """The round's global model and the ``(examples, model bytes)`` of each accepted client."""

    params: Weights | None = None
    models: tuple[tuple[int, bytes], ...] = ()


def bagging(*, weighted: bool = True, max_trees: int | None = None, local_rounds: int = 1) -> Step:
    """An aggregation step that merges the trees each client grew into one booster.

    Every client boosts the global model on its own data and sends the result;
    the new global model is the old one plus every client's new trees, each
    client's leaves scaled by its share of the round's examples (``weighted``)
    or by ``1 / clients``, so the round's step is the mean of the clients'
    boosting steps.

    Each round adds (clients x local rounds x classes) trees, so the booster,
    and the time to evaluate it, grows without end unless ``max_trees`` bounds
    it: a round whose new trees would take the booster past ``max_trees``
    leaves the global model unchanged (whole rounds only, so each round stays
    the mean of its clients' steps; the round's ``aggregate_info`` holds
    ``max_trees_reached`` and the ``trees_left_out``). Earlier trees are never
    dropped: each boosting step fits what the steps before it left. A round
    after which another of as many clients would pass ``max_trees`` holds
    ``max_trees_full`` in its ``aggregate_info``, and the run stops before the
    next round, whatever strategy runs the step (the step carries the run hook).

    Each client's model must add exactly ``local_rounds`` boosting rounds' trees
    (one per class and target, times ``num_parallel_tree``, each round): a model
    adding more or fewer is refused as it arrives, that client's fit failing
    alone. :func:`XGBoostBagging` sends ``local_rounds`` in every fit config; a
    :class:`~covey.Strategy` of one's own with this step must send it too.

    Args:
        weighted: Weigh clients by their number of examples (else equally).
        max_trees: The most trees the global booster holds (None: no bound).
        local_rounds: The boosting rounds each client runs per round.

    Returns:
        A reducer step emitting the merged model as the round's aggregate.

    Raises:
        TypeError, ValueError: ``weighted`` is not True or False, ``max_trees`` is not
            None or an int of at least 1, or ``local_rounds`` is not an int of at least 1.

    References:
        Chen and Guestrin, "XGBoost: A Scalable Tree Boosting System", KDD 2016;
        Breiman, "Bagging Predictors", Machine Learning 24, 1996.
    """
    weighted = check_switch(weighted, "weighted")
    cap = check_max_trees(max_trees)
    rounds = check_local_rounds(local_rounds)

    def init(params: Weights) -> _RoundState:
        check_start(params)
        if cap is not None:
            start_within(params, cap)
        return _RoundState()

    def update(state: _RoundState, event: Event) -> tuple[_RoundState, tuple[Event, ...]]:
        if isinstance(event, Begin):
            return _RoundState(event.params), ()
        if isinstance(event, Contribution):
            if state.params is None:
                raise AggregationError("a contribution arrived before the round began")
            model, _ = _accepted(state.params, event, rounds)
            return state._replace(models=(*state.models, (event.num_examples, model))), ()
        if isinstance(event, End):
            if state.params is None or not state.models:
                return _RoundState(), ()
            total = sum(n for n, _ in state.models)
            if weighted and total <= 0:
                raise AggregationError("every contribution has zero examples")
            factors = [
                (m, n / total if weighted else 1.0 / len(state.models)) for n, m in state.models
            ]
            capacity = int(np.asarray(state.params[MODEL]).size)
            try:
                base = from_weights(state.params)
                merged = merge_trees(base, factors)
                load_booster(merged)  # XGBoost itself must accept what clients sent
                clients = len(state.models)
                kept = past_cap(cap, state.params, base, merged, event, clients, total)
                if kept is not None:
                    return _RoundState(), (mark_full(kept, cap, base, rounds, clients),)
                new = to_weights(merged, capacity)
                out = Aggregate(event.round, clients, total, weights=new, info=dict(event.info))
                return _RoundState(), (mark_full(out, cap, merged, rounds, clients),)
            except (WeightsError, ValueError) as exc:
                raise AggregationError(str(exc)) from exc
        return state, (event,)

    said = f"bagging(weighted={weighted!r}, max_trees={cap!r}, local_rounds={rounds!r})"
    return capping(_described(Step(init, update), said), cap)


def cyclic(*, max_trees: int | None = None, local_rounds: int = 1) -> Step:
    """An aggregation step for cyclic training: the one client's model becomes the global one.

    Each round one client (see :func:`round_robin`) boosts the global model on
    its data; the new model is the global one plus the client's new trees,
    checked (the old trees are the server's own, whatever the client sent).
    A client whose trees cannot extend the global model (no booster, another
    objective, features or classes, a dart booster, non-finite values) is
    refused as its reply arrives: its fit fails, naming why, and the global
    model stays the latest valid booster, which the next client boosts. So is
    a model adding another number of trees than ``local_rounds`` boosting
    rounds grow (one per class and target, times ``num_parallel_tree``, each
    round); :func:`XGBoostCyclic` sends ``local_rounds`` in every fit config.

    Each round adds (local rounds x classes) trees, so the booster grows
    without end unless ``max_trees`` bounds it, as :func:`bagging`'s does: a
    round whose client's trees would take the booster past ``max_trees``
    leaves the global model unchanged (the round's ``aggregate_info`` holds
    ``max_trees_reached`` and the ``trees_left_out``). Earlier trees are never
    dropped: each later tree fits what they left. A round after which the next
    would pass ``max_trees`` holds ``max_trees_full`` in its ``aggregate_info``,
    and the run stops before it, whatever strategy runs the step.

    Args:
        max_trees: The most trees the global booster holds (None: no bound).
        local_rounds: The boosting rounds the client runs per round.

    Returns:
        A reducer step; a round with more than one accepted contribution is an error.

    Raises:
        TypeError, ValueError: ``max_trees`` is not None or an int of at least 1, or
            ``local_rounds`` is not an int of at least 1.

    References:
        Chen and Guestrin, "XGBoost: A Scalable Tree Boosting System", KDD 2016.
    """
    cap = check_max_trees(max_trees)
    rounds = check_local_rounds(local_rounds)

    def init(params: Weights) -> _RoundState:
        check_start(params)
        if cap is not None:
            start_within(params, cap)
        return _RoundState()

    def update(state: _RoundState, event: Event) -> tuple[_RoundState, tuple[Event, ...]]:
        if isinstance(event, Begin):
            return _RoundState(event.params), ()
        if isinstance(event, Contribution):
            if state.params is None:
                raise AggregationError("a contribution arrived before the round began")
            # The global model's own trees come from the server's copy, the new ones
            # from the client, checked: the same booster an honest client sent.
            _, merged = _accepted(state.params, event, rounds)
            return state._replace(models=(*state.models, (event.num_examples, merged))), ()
        if isinstance(event, End):
            if state.params is None or not state.models:
                return _RoundState(), ()  # no valid model this round: the global one stays
            if len(state.models) > 1:
                raise AggregationError(
                    f"cyclic training takes one client per round, got {len(state.models)}: "
                    "use XGBoostCyclic() or a selector that picks one client"
                )
            [(examples, merged)] = state.models
            try:
                base = from_weights(state.params)
                kept = past_cap(cap, state.params, base, merged, event, 1, examples)
                if kept is not None:
                    return _RoundState(), (mark_full(kept, cap, base, rounds, 1),)
                weights = to_weights(merged, int(np.asarray(state.params[MODEL]).size))
                out = Aggregate(event.round, 1, examples, weights=weights, info=dict(event.info))
                return _RoundState(), (mark_full(out, cap, merged, rounds, 1),)
            except (WeightsError, ValueError) as exc:
                raise AggregationError(str(exc)) from exc
        return state, (event,)

    said = f"cyclic(max_trees={cap!r}, local_rounds={rounds!r})"
    return capping(_described(Step(init, update), said), cap)


def round_robin(candidates: Sequence[int], round: int, rng: np.random.Generator) -> list[int]:
    """A selector that picks one client per round, in turn: round 1 the first, and so on.

    Args:
        candidates: The client ids to pick from (none: none picked), in increasing order.
        round: The round (1-based); after the last candidate the first comes again.
        rng: Unused: the pick is deterministic.
    """
    ordered = sorted(int(c) for c in candidates)
    if not ordered:
        return []
    return [ordered[(round - 1) % len(ordered)]]


def XGBoostBagging(
    *, weighted: bool = True, max_trees: int | None = None, local_rounds: int = 1, **options: Any
) -> Strategy:
    """Federated gradient-boosted trees by bagging: every client's new trees join one booster.

    Args:
        weighted: Weigh each client's trees by its share of the examples.
        max_trees: The most trees the global booster holds (None, the default: no
            bound). Each round adds every client's new trees; once a round's would
            take the booster past ``max_trees`` the global model stays as it is
            (see :func:`bagging`), and once the next round's would, the run stops
            before it (``history.stopped_reason`` says so): no client trains for
            trees that would be left out.
        local_rounds: The boosting rounds every client runs each round, sent as the
            fit config's ``"local_rounds"`` (it wins over an
            :class:`~covey.xgboost.XGBoostClient`'s own; ``on_fit_config`` may not
            set it). A client's model adding another number of trees is refused.
        **options: :class:`~covey.Strategy` options (see :func:`covey.FedAvg`).

    Returns:
        A strategy with the :func:`bagging` step.

    References:
        Chen and Guestrin, "XGBoost: A Scalable Tree Boosting System", KDD 2016.
    """
    checked: StrategyOptions = options  # type: ignore[assignment]
    step = bagging(weighted=weighted, max_trees=max_trees, local_rounds=local_rounds)
    settings = {"weighted": check_switch(weighted, "weighted"), **_trees(max_trees, local_rounds)}
    return _sending_rounds(preset("XGBoostBagging", step, checked, **settings))


def _trees(max_trees: int | None, local_rounds: int) -> dict[str, Any]:
    """The hyperparameters both strategies record: ``max_trees`` and ``local_rounds``, checked.

    Every one is recorded, so that a run resumed with another is refused naming
    it; a run of an older covey that recorded no ``local_rounds`` (or ``weighted``)
    resumes with the strategy's and warns, naming it (see ``recorded_since``).
    """
    return {
        "max_trees": check_max_trees(max_trees),
        "local_rounds": check_local_rounds(local_rounds),
    }


def _sending_rounds(strategy: Strategy) -> Strategy:
    """``strategy``, sending its ``local_rounds`` in every fit config.

    A fixed entry: an ``on_fit_config`` setting it too is refused. (The step
    carries the run hook that stops the run at ``max_trees``.)
    """
    rounds = strategy.hyperparameters["local_rounds"]
    entries = {**strategy.fit_config_entries, "local_rounds": rounds}
    return replace(strategy, fit_config_entries=entries)


# What a run of covey 0.1.0, which recorded neither, did: said when such a run resumes.
_CLIENTS_ROUNDS = (
    "the server sent no local_rounds then, so its clients boosted as many rounds as their "
    "own local_rounds said (1 by default), and now the strategy's wins over theirs: if the "
    "run's clients boosted more rounds, resume it with the strategy's local_rounds set to "
    "theirs to train on as it did"
)
recorded_since("XGBoostBagging", "local_rounds", _CLIENTS_ROUNDS)
recorded_since("XGBoostCyclic", "local_rounds", _CLIENTS_ROUNDS)
described_since("XGBoostBagging", "bagging.<locals>.update", "bagging")
described_since("XGBoostCyclic", "cyclic.<locals>.update", "cyclic")
recorded_since(
    "XGBoostBagging",
    "weighted",
    "resume it with the weighted it was started with (True, each client's trees weighed by "
    "its share of the examples, unless it was started with weighted=False)",
)


def XGBoostCyclic(
    *, max_trees: int | None = None, local_rounds: int = 1, **options: Any
) -> Strategy:
    """Federated gradient-boosted trees by cyclic training: clients boost the model in turn.

    One client per round, chosen by :func:`round_robin`; federated evaluation
    samples as the options say. A round whose client fails, or sends a model
    whose trees cannot extend the global one, is recorded among the round's
    fit failures; the global model stays the latest valid booster and the run
    goes on with the next client.

    Args:
        max_trees: The most trees the global booster holds (None, the default: no
            bound). Each round adds its client's new trees; once the next round's
            would take the booster past ``max_trees``, the run stops before it
            (see :func:`XGBoostBagging`).
        local_rounds: The boosting rounds the client runs each round, sent as the fit
            config's ``"local_rounds"`` (see :func:`XGBoostBagging`).
        **options: :class:`~covey.Strategy` options except ``selector``,
            ``fraction_fit`` and ``min_fit_clients``, which cyclic training fixes.

    Returns:
        A strategy with the :func:`cyclic` step.

    References:
        Chen and Guestrin, "XGBoost: A Scalable Tree Boosting System", KDD 2016.
    """
    fixed = {"selector", "fraction_fit", "min_fit_clients"} & set(options)
    if fixed:
        raise TypeError(f"XGBoostCyclic() fixes {sorted(fixed)}: one client per round, in turn")
    checked: StrategyOptions = {
        **options,  # type: ignore[typeddict-item]
        "selector": round_robin,
        "fraction_fit": 0.0,
        "min_fit_clients": 0,  # the selector picks one; its failure keeps the model
    }
    step = cyclic(max_trees=max_trees, local_rounds=local_rounds)
    return _sending_rounds(
        preset("XGBoostCyclic", step, checked, **_trees(max_trees, local_rounds))
    )
