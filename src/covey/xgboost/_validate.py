"""Check a tree a client sent before XGBoost sees it: XGBoost trusts the JSON it loads.

A tree whose child indices point past its nodes loads without complaint and
crashes the process at prediction time, so every tree from a client is
checked here: array lengths, a single root, each node reached exactly once,
feature indices in range, finite values, and no categorical splits (which
this integration does not merge).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

from covey.core._weights import WeightsError

__all__ = [
    "check_model",
    "check_tree",
    "new_trees",
    "output_groups",
    "parallel_trees",
    "trees_per_iteration",
]

_ROOT_PARENT = 2147483647  # XGBoost's marker for "no parent"
_NODE_ARRAYS = (
    "left_children",
    "right_children",
    "parents",
    "split_indices",
    "split_conditions",
    "default_left",
    "base_weights",
    "loss_changes",
    "sum_hessian",
)
_CATEGORY_ARRAYS = ("categories", "categories_nodes", "categories_segments", "categories_sizes")


def _ints(values: Any, what: str) -> list[int]:
    if not isinstance(values, list) or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in values
    ):
        raise WeightsError(f"{what} must be a list of integers")
    return values


def _finite(values: Any, what: str) -> None:
    if not isinstance(values, list) or not all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in values
    ):
        raise WeightsError(f"{what} must be a list of finite numbers")
    if not all(math.isfinite(v) for v in values):
        raise WeightsError(
            f"{what} must be a list of finite numbers, holds inf or NaN: the trees were grown "
            "with an infinite or NaN eta, or the training diverged"
        )


def _check_links(
    left: Sequence[int], right: Sequence[int], parents: Sequence[int], what: str
) -> None:
    n = len(left)
    if parents[0] != _ROOT_PARENT:
        raise WeightsError(f"{what}: node 0 is not a root")
    seen = [False] * n
    seen[0] = True
    stack = [0]
    while stack:
        node = stack.pop()
        lo, hi = left[node], right[node]
        if (lo == -1) != (hi == -1):
            raise WeightsError(f"{what}: node {node} has one child")
        if lo == -1:
            continue
        for child in (lo, hi):
            if not 0 < child < n or seen[child]:
                raise WeightsError(f"{what}: node {node} links to node {child}, not a new node")
            if parents[child] != node:
                raise WeightsError(f"{what}: node {child}'s parent is not {node}")
            seen[child] = True
            stack.append(child)
    if not all(seen):
        raise WeightsError(f"{what}: {seen.count(False)} node(s) cannot be reached from the root")


def check_tree(tree: Any, num_feature: int, what: str) -> None:
    """Raise WeightsError unless ``tree`` is a well-formed numeric XGBoost tree.

    Args:
        tree: One entry of the model's ``trees`` list.
        num_feature: The model's number of input features.
        what: How to name the tree in errors, e.g. ``"client 3's tree 7"``.
    """
    if not isinstance(tree, dict):
        raise WeightsError(f"{what} is not a JSON object")
    try:
        param = tree["tree_param"]
        n = int(param["num_nodes"])
        leaf_size = int(param.get("size_leaf_vector", "1"))
        arrays = {key: tree[key] for key in _NODE_ARRAYS}
    except (KeyError, TypeError, ValueError) as exc:
        raise WeightsError(f"{what} lacks a field or has a malformed one: {exc}") from None
    if n < 1 or leaf_size not in (0, 1):  # 0: XGBoost 1.x's "one value"; below 0 crashes it
        raise WeightsError(f"{what}: {n} nodes with leaf vectors of {leaf_size}: not supported")
    for key, values in arrays.items():
        if not isinstance(values, list) or len(values) != n:
            raise WeightsError(f"{what}: {key!r} does not hold one value per node ({n})")
    left = _ints(arrays["left_children"], f"{what}: left_children")
    right = _ints(arrays["right_children"], f"{what}: right_children")
    parents = _ints(arrays["parents"], f"{what}: parents")
    features = _ints(arrays["split_indices"], f"{what}: split_indices")
    for key in ("split_conditions", "base_weights", "loss_changes", "sum_hessian"):
        _finite(arrays[key], f"{what}: {key}")
    if any(not 0 <= f < num_feature for f in features):
        raise WeightsError(f"{what}: a split uses a feature outside 0..{num_feature - 1}")
    if any(tree.get(key) for key in _CATEGORY_ARRAYS) or any(tree.get("split_type") or []):
        raise WeightsError(f"{what}: categorical splits are not supported")
    _check_links(left, right, parents, what)


_COUNTS = (("num_feature", 0), ("num_class", 0), ("num_target", 1))
"""The model's counts XGBoost sizes its outputs by, each with its least value."""

MAX_OUTPUTS = 2**16
"""The most outputs (classes times targets) of a model: one tree each per iteration.

XGBoost sizes its buffers by them unchecked: ``num_class`` 1e9 hangs it allocating
them. Far above any model XGBoost trains (a few hundred classes, tens of targets).
"""


def _check_counts(params: Any) -> None:
    """Refuse counts of features, classes or targets that are no whole number, or too large.

    XGBoost reads them unchecked: ``num_target`` below 1 wraps to billions of outputs
    and ``num_class`` 1e9 asks for as many (XGBoost hangs allocating them), so they are
    checked before it loads the model, and ``base_score`` against them.
    """
    if not isinstance(params, dict):
        raise WeightsError("the global model's learner_model_param is not a JSON object")
    if "num_feature" not in params:
        raise WeightsError("the global model's learner_model_param lacks 'num_feature'")
    for key, least in _COUNTS:
        value = params.get(key, str(least))
        text = value if isinstance(value, str) else ""
        if not text.isdecimal() or not text.isascii() or int(text) < least:
            raise WeightsError(
                f"the global model's learner_model_param {key!r} is {value!r}: XGBoost "
                f"writes a whole number of at least {least}, as a string"
            )
    outputs = output_groups(params)
    if outputs > MAX_OUTPUTS:
        raise WeightsError(
            f"the global model's learner_model_param has num_class {params.get('num_class')!r} "
            f"and num_target {params.get('num_target', '1')!r}: {outputs} outputs, over the "
            f"cap of {MAX_OUTPUTS}"
        )
    _check_base_score(params.get("base_score"), outputs)


def output_groups(params: dict[str, Any]) -> int:
    """The model's outputs (output groups): classes (or 1) times targets."""
    return max(int(params.get("num_class", "0")), 1) * max(int(params.get("num_target", "1")), 1)


def parallel_trees(model: Any, what: str) -> int:
    """The ``num_parallel_tree`` a model's ``gbtree_model_param`` records (1 if it records none).

    Raises:
        WeightsError: naming ``what``, if it is no whole number from 1 to :data:`MAX_OUTPUTS`.
    """
    param = model.get("gbtree_model_param") if isinstance(model, dict) else None
    value = param.get("num_parallel_tree", "1") if isinstance(param, dict) else "1"
    text = value if isinstance(value, str) else ""
    if not (text.isdecimal() and text.isascii() and len(text) <= 9) or not (
        1 <= int(text) <= MAX_OUTPUTS
    ):
        raise WeightsError(
            f"{what}'s gbtree_model_param 'num_parallel_tree' is {str(value)[:80]!r}: XGBoost "
            f"writes a whole number from 1 to {MAX_OUTPUTS}, as a string"
        )
    return int(text)


def trees_per_iteration(doc: dict[str, Any]) -> tuple[int, int]:
    """The output groups of a parsed booster and its ``num_parallel_tree``.

    One boosting iteration grows one tree per output group (class and target)
    and parallel tree: their product.
    """
    params = doc["learner"]["learner_model_param"]
    _check_counts(params)
    model = doc["learner"]["gradient_booster"]["model"]
    return output_groups(params), parallel_trees(model, "the global model")


def _check_base_score(text: Any, outputs: int) -> None:
    """Refuse a ``base_score`` that is no list of finite numbers, one or one per output.

    XGBoost loads a wrong count without complaint and fails only when it predicts.
    """
    if text is None:
        return  # XGBoost's default
    scores = _scores(text)
    if not isinstance(scores, tuple):
        raise WeightsError(
            f"the global model's learner_model_param 'base_score' is {str(text)[:80]!r}: "
            "XGBoost writes numbers, as a string such as '[5E-1]'"
        )
    if len(scores) not in (1, outputs):
        raise WeightsError(
            f"the global model's learner_model_param 'base_score' holds {len(scores)} "
            f"numbers; the model has {outputs} output{'s' * (outputs != 1)} (num_class, "
            f"num_target): XGBoost takes one, or one per output"
        )
    if not all(math.isfinite(score) for score in scores):
        raise WeightsError(
            f"the global model's learner_model_param 'base_score' is {str(text)[:80]!r}, "
            "not finite: XGBoost boosts from a finite base_score; train the model again "
            "from a finite one"
        )


def check_model(doc: dict[str, Any], what: str) -> None:
    """Raise WeightsError unless ``doc`` (a parsed booster) holds only well-formed trees.

    Its counts (features, classes, targets), ``tree_info``, iterations and every
    tree are checked, as :func:`new_trees` checks a client's new ones.
    """
    try:
        params = doc["learner"]["learner_model_param"]
    except (KeyError, TypeError) as exc:
        raise WeightsError(f"{what} lacks a field of an XGBoost model: {exc!r}") from None
    new_trees(doc, params, 0, what)


def new_trees(
    client: dict[str, Any],
    params: dict[str, Any],
    known: int,
    what: str,
    objective: str | None = None,
) -> tuple[list[Any], list[int], list[int]]:
    """A client model's trees past the first ``known``, checked, with their groups and iterations.

    ``objective``: the global model's; a client's trees grown for another one, or
    from another ``base_score``, fit other residuals and are refused.

    Returns:
        The new trees, their ``tree_info`` (output group of each) and the end of
        each new boosting iteration, counted from the first new tree.
    """
    _check_counts(params)
    theirs = client["learner"]["learner_model_param"]
    for key in ("num_feature", "num_class", "num_target"):
        if theirs.get(key) != params.get(key):
            raise WeightsError(
                f"{what} has other features, classes or targets than the global model "
                f"({key} {theirs.get(key)!r}, the global model's {params.get(key)!r}): "
                "train every client on the global model's features and classes"
            )
    if _scores(theirs.get("base_score")) != _scores(params.get("base_score")):
        raise WeightsError(
            f"{what} boosts from base_score {theirs.get('base_score')}, the global model from "
            f"{params.get('base_score')}: its trees fit other residuals; give every client "
            "the global model's base_score"
        )
    name = (client["learner"].get("objective") or {}).get("name")
    if objective is not None and name != objective:
        raise WeightsError(
            f"{what} was trained for objective {name!r}, the global model for {objective!r}: "
            "give every client the global model's objective"
        )
    model = client["learner"]["gradient_booster"]["model"]
    trees, info, ptr = model["trees"], model.get("tree_info"), model.get("iteration_indptr")
    if len(trees) < known:
        raise WeightsError(
            f"{what} has {len(trees)} trees, fewer than the global model's {known}: "
            "it does not extend it"
        )
    groups = output_groups(params)
    if not isinstance(info, list) or len(info) != len(trees):
        raise WeightsError(f"{what}: tree_info does not hold one group per tree")
    if any(not isinstance(g, int) or not 0 <= g < groups for g in info):
        raise WeightsError(f"{what}: tree_info names an output group outside 0..{groups - 1}")
    if (
        not isinstance(ptr, list)
        or not all(isinstance(p, int) for p in ptr)
        or known not in ptr
        or ptr[-1] != len(trees)
        or any(b < a for a, b in itertools.pairwise(ptr))
    ):
        raise WeightsError(f"{what}: its iterations do not continue the global model's")
    num_feature = int(params["num_feature"])
    for t, tree in enumerate(trees[known:], start=known):
        check_tree(tree, num_feature, f"{what}'s tree {t}")
    ends = [end - known for end in ptr[ptr.index(known) + 1 :]]
    return trees[known:], info[known:], ends


def _scores(text: Any) -> tuple[float, ...] | Any:
    """A ``base_score`` as numbers: XGBoost writes ``"5E-1"``, or ``"[5E-1]"`` since 2.0."""
    if not isinstance(text, str):
        return text
    try:
        return tuple(float(part) for part in text.strip("[] ").split(","))
    except ValueError:
        return text
