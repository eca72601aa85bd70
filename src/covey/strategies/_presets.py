"""Named strategies: each is a short function that builds an aggregation chain.

Every preset takes its algorithm's parameters plus the :class:`~covey.Strategy`
options (sampling, selection, config, metrics) as keywords, and returns a
:class:`~covey.Strategy`. Anything a preset does not offer is one
``Strategy(aggregator=chain(...))`` away: the presets are only the common chains.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any, Unpack

from covey.aggregate import (
    Step,
    bulyan,
    chain,
    geometric_median,
    krum,
    mean,
    median,
    multi_krum,
    qfedavg,
    scaffold,
    server_adagrad,
    server_adam,
    server_sgd,
    server_yogi,
    trimmed_mean,
    weighted_mean,
)
from covey.aggregate._base import min_contributions
from covey.aggregate._flat import check_positive
from covey.aggregate._opt import fraction
from covey.core._messages import plain
from covey.core._qfair import LOSS_BEFORE_FIT, MAX_KEY_CHARS
from covey.strategies._fedbuff import FedBuff
from covey.strategies._names import flower_names, not_a_class
from covey.strategies._options import StrategyOptions, named_as_given, preset
from covey.strategies._strategy import Strategy


def FedAvg(**options: Unpack[StrategyOptions]) -> Strategy:
    """Federated Averaging: the global model becomes the example-weighted mean of client models.

    Args:
        **options: Sampling, selection, config and metrics options of :class:`Strategy`:
            ``fraction_fit``, ``min_fit_clients``, ``fraction_evaluate``,
            ``min_evaluate_clients``, ``evaluate_every``, ``min_available_clients``,
            ``on_fit_config``, ``on_evaluate_config``, ``on_client_fit_config``,
            ``on_client_evaluate_config``, ``accept_failures``, ``fit_metrics``,
            ``evaluate_metrics``, ``selector`` and ``where``.

    Returns:
        A :class:`Strategy` whose aggregator is ``chain(weighted_mean())``.

    Example:
        >>> strategy = FedAvg(fraction_fit=0.1, on_fit_config=lambda r: {"lr": 0.1})

    References:
        McMahan et al., "Communication-Efficient Learning of Deep Networks from
        Decentralized Data", AISTATS 2017.
    """
    return preset("FedAvg", chain(weighted_mean()), options)


def FedAvgM(
    *, server_lr: float = 1.0, server_momentum: float = 0.9, **options: Unpack[StrategyOptions]
) -> Strategy:
    """FedAvg with server momentum: ``chain(weighted_mean(), server_sgd(lr, momentum))``.

    Args:
        server_lr: The server learning rate.
        server_momentum: The server momentum.
        **options: :class:`~covey.Strategy` options (see :func:`covey.FedAvg`).

    Returns:
        A :class:`~covey.Strategy` whose aggregator is
            ``chain(weighted_mean(), server_sgd(server_lr, server_momentum))``.

    References:
        Hsu, Qi and Brown, "Measuring the Effects of Non-Identical Data
        Distribution for Federated Visual Classification", 2019.
    """
    check_positive(server_lr, "FedAvgM server_lr")  # named as given, not as server_sgd's
    fraction(server_momentum, "FedAvgM server_momentum")
    step = chain(weighted_mean(), server_sgd(server_lr, server_momentum))
    return preset("FedAvgM", step, options, server_lr=server_lr, server_momentum=server_momentum)


@flower_names
def FedProx(*, proximal_mu: float, **options: Unpack[StrategyOptions]) -> Strategy:
    """FedProx: FedAvg whose clients add ``mu/2 ||w - w_global||^2`` to their local loss.

    The server side is FedAvg; ``proximal_mu`` is sent in every fit config (beside
    ``on_fit_config``'s entries, which may not set it), and clients apply it with
    :func:`covey.clients.proximal_grad` or the torch helpers beside it.
    ``proximal_mu=0`` is exactly FedAvg.

    Args:
        proximal_mu: The proximal term's weight ``mu >= 0``.
        **options: :class:`~covey.Strategy` options (see :func:`covey.FedAvg`).

    Returns:
        A :class:`~covey.Strategy` whose aggregator is
            ``chain(weighted_mean())``, sending ``proximal_mu`` in every fit config.

    References:
        Li et al., "Federated Optimization in Heterogeneous Networks", MLSys 2020.
    """
    mu = plain(proximal_mu)
    if isinstance(mu, bool) or not isinstance(mu, int | float):
        raise TypeError(
            f"proximal_mu must be a finite number >= 0, got {type(mu).__name__} {proximal_mu!r}"
        )
    if not mu >= 0.0 or mu == float("inf"):
        raise ValueError(f"proximal_mu must be a finite number >= 0, got {proximal_mu!r}")
    strategy = preset("FedProx", chain(weighted_mean()), options, proximal_mu=float(mu))
    # A fixed entry: an on_fit_config (or on_client_fit_config) setting it too is refused,
    # where it was dropped (or won, per client, with the run recording another value).
    entries = {**strategy.fit_config_entries, "proximal_mu": float(mu)}
    return replace(strategy, fit_config_entries=entries)


def FedAdam(
    *,
    eta: float = 1e-2,
    beta1: float = 0.9,
    beta2: float = 0.99,
    tau: float = 1e-3,
    **options: Unpack[StrategyOptions],
) -> Strategy:
    """FedAdam: ``chain(weighted_mean(), server_adam(eta, beta1, beta2, tau))``.

    The server applies Adam (without bias correction, as in the paper) to the
    mean update; see :func:`covey.aggregate.server_adam`.

    Args:
        eta: The server learning rate.
        beta1: Decay of the first moment, in ``[0, 1)``.
        beta2: Decay of the second moment, in ``[0, 1)``.
        tau: Adaptivity: added to the root of the second moment (larger is closer
            to server SGD).
        **options: :class:`~covey.Strategy` options (see :func:`covey.FedAvg`).

    Returns:
        A :class:`~covey.Strategy` whose aggregator is
            ``chain(weighted_mean(), server_adam(eta, beta1, beta2, tau))``.

    References:
        Reddi et al., "Adaptive Federated Optimization", ICLR 2021.
    """
    step = named_as_given(
        "FedAdam",
        "server_adam",
        lambda: chain(weighted_mean(), server_adam(eta, beta1, beta2, tau)),
    )
    return preset("FedAdam", step, options, eta=eta, beta1=beta1, beta2=beta2, tau=tau)


def FedYogi(
    *,
    eta: float = 1e-2,
    beta1: float = 0.9,
    beta2: float = 0.99,
    tau: float = 1e-3,
    **options: Unpack[StrategyOptions],
) -> Strategy:
    """FedYogi: ``chain(weighted_mean(), server_yogi(eta, beta1, beta2, tau))``.

    Like FedAdam with Yogi's additive second-moment update; see
    :func:`covey.aggregate.server_yogi`.

    Args:
        eta: The server learning rate.
        beta1: Decay of the first moment, in ``[0, 1)``.
        beta2: Rate of the second-moment update, in ``[0, 1)``.
        tau: Adaptivity: added to the root of the second moment (larger is closer
            to server SGD).
        **options: :class:`~covey.Strategy` options (see :func:`covey.FedAvg`).

    Returns:
        A :class:`~covey.Strategy` whose aggregator is
            ``chain(weighted_mean(), server_yogi(eta, beta1, beta2, tau))``.

    References:
        Reddi et al., "Adaptive Federated Optimization", ICLR 2021.
    """
    step = named_as_given(
        "FedYogi",
        "server_yogi",
        lambda: chain(weighted_mean(), server_yogi(eta, beta1, beta2, tau)),
    )
    return preset("FedYogi", step, options, eta=eta, beta1=beta1, beta2=beta2, tau=tau)


def FedAdagrad(
    *,
    eta: float = 1e-1,
    beta1: float = 0.0,
    tau: float = 1e-3,
    **options: Unpack[StrategyOptions],
) -> Strategy:
    """FedAdagrad: ``chain(weighted_mean(), server_adagrad(eta, beta1, tau))``.

    See :func:`covey.aggregate.server_adagrad`.

    Args:
        eta: The server learning rate.
        beta1: Decay of the first moment, in ``[0, 1)`` (0: plain Adagrad).
        tau: Adaptivity: added to the root of the summed squares.
        **options: :class:`~covey.Strategy` options (see :func:`covey.FedAvg`).

    Returns:
        A :class:`~covey.Strategy` whose aggregator is
            ``chain(weighted_mean(), server_adagrad(eta, beta1, tau))``.

    References:
        Reddi et al., "Adaptive Federated Optimization", ICLR 2021.
    """
    step = named_as_given(
        "FedAdagrad",
        "server_adagrad",
        lambda: chain(weighted_mean(), server_adagrad(eta, beta1, tau)),
    )
    return preset("FedAdagrad", step, options, eta=eta, beta1=beta1, tau=tau)


def FedMedian(**options: Unpack[StrategyOptions]) -> Strategy:
    """The coordinate-wise median of the updates: ``chain(median())``.

    Args:
        **options: :class:`~covey.Strategy` options (see :func:`covey.FedAvg`).

    Returns:
        A :class:`~covey.Strategy` whose aggregator is
            ``chain(median())``.

    References:
        Yin et al., "Byzantine-Robust Distributed Learning: Towards Optimal
        Statistical Rates", ICML 2018.
    """
    return preset("FedMedian", chain(median()), options)


def FedTrimmedAvg(*, beta: float = 0.2, **options: Unpack[StrategyOptions]) -> Strategy:
    """The coordinate-wise ``beta``-trimmed mean of the updates: ``chain(trimmed_mean(beta))``.

    Args:
        beta: Fraction of the updates cut from each end of every coordinate, in
            ``[0, 0.5)``; see :func:`covey.aggregate.trimmed_mean`.
        **options: :class:`~covey.Strategy` options (see :func:`covey.FedAvg`).

    Returns:
        A :class:`~covey.Strategy` whose aggregator is
            ``chain(trimmed_mean(beta))``.

    References:
        Yin et al., "Byzantine-Robust Distributed Learning: Towards Optimal
        Statistical Rates", ICML 2018.
    """
    step = named_as_given("FedTrimmedAvg", "trimmed_mean", lambda: chain(trimmed_mean(beta)))
    return preset("FedTrimmedAvg", step, options, beta=beta)


@flower_names
def Krum(*, f: int, **options: Unpack[StrategyOptions]) -> Strategy:
    """Keep the update with the best Krum score, tolerating ``f`` Byzantine clients.

    Args:
        f: The number of Byzantine clients to tolerate (needs ``n >= 2f + 3``
            updates per round); see :func:`covey.aggregate.krum`.
        **options: :class:`~covey.Strategy` options (see :func:`covey.FedAvg`);
            ``min_available_clients`` defaults to ``2f + 3``, so that a round
            waits for the clients the rule needs.

    Returns:
        A :class:`~covey.Strategy` whose aggregator is
            ``chain(krum(f))``.

    References:
        Blanchard et al., "Machine Learning with Adversaries: Byzantine Tolerant
        Gradient Descent", NeurIPS 2017.
    """
    return _robust("Krum", krum(f), options, f=f)


@flower_names
def MultiKrum(
    *, f: int, m: int | None = None, weighted: bool = False, **options: Unpack[StrategyOptions]
) -> Strategy:
    """Average the ``m`` updates with the best Krum scores (default ``m = n - f``).

    Args:
        f: The number of Byzantine clients to tolerate (needs ``n >= 2f + 3``).
        m: How many updates to average (None: ``n - f``; never more than ``n - f``;
            1 is Krum). A run none of whose rounds can hold ``m + f`` updates warns
            as it starts: ``m`` is then never used.
        weighted: Average the chosen updates weighted by their number of examples
            (as Flower's ``Krum(num_clients_to_keep=m)`` does) instead of equally.
        **options: :class:`~covey.Strategy` options (see :func:`covey.FedAvg`);
            ``min_available_clients`` defaults to ``2f + 3``.

    Returns:
        A :class:`~covey.Strategy` whose aggregator is
            ``chain(multi_krum(f, m, weighted=weighted))``.

    References:
        Blanchard et al., "Machine Learning with Adversaries: Byzantine Tolerant
        Gradient Descent", NeurIPS 2017.
    """
    step = multi_krum(f, m, weighted=weighted)
    return _robust("MultiKrum", step, options, f=f, m=m, weighted=weighted)


@flower_names
def Bulyan(*, f: int, **options: Unpack[StrategyOptions]) -> Strategy:
    """Bulyan over Krum, tolerating ``f`` Byzantine clients (needs ``n >= 4f + 3``).

    Args:
        f: The number of Byzantine clients to tolerate; see :func:`covey.aggregate.bulyan`.
        **options: :class:`~covey.Strategy` options (see :func:`covey.FedAvg`);
            ``min_available_clients`` defaults to ``4f + 3``.

    Returns:
        A :class:`~covey.Strategy` whose aggregator is
            ``chain(bulyan(f))``.

    References:
        El Mhamdi, Guerraoui and Rouault, "The Hidden Vulnerability of Distributed
        Learning in Byzantium", ICML 2018.
    """
    return _robust("Bulyan", bulyan(f), options, f=f)


def _robust(name: str, step: Step, options: StrategyOptions, **hyperparameters: Any) -> Strategy:
    """A preset around a rule that needs ``n`` updates a round: it waits for ``n`` clients.

    Unless given, ``min_available_clients`` is the rule's need, so that no round
    starts with fewer clients connected than the rule can use (with the default
    ``fraction_fit=1`` every one of them trains). ``min_fit_clients`` keeps its
    default: a round that gets fewer replies keeps the model, it does not stop the run.
    """
    need = min_contributions(step)
    if need is not None:
        options.setdefault("min_available_clients", need[0])
    return preset(name, chain(step), options, **hyperparameters)


def FedRFA(
    *, max_iter: int = 100, tol: float = 1e-6, eps: float = 1e-5, **options: Unpack[StrategyOptions]
) -> Strategy:
    """Robust Federated Aggregation: the weighted geometric median of the updates.

    Args:
        max_iter: Most smoothed Weiszfeld iterations.
        tol: Stop once a step moves the point by at most this times the weighted
            median of its distances to the updates.
        eps: Smoothing: distances below it count as ``eps``; see
            :func:`covey.aggregate.geometric_median`.
        **options: :class:`~covey.Strategy` options (see :func:`covey.FedAvg`).

    Returns:
        A :class:`~covey.Strategy` whose aggregator is
            ``chain(geometric_median(max_iter=max_iter, tol=tol, eps=eps))``.

    References:
        Pillutla, Kakade and Harchaoui, "Robust Aggregation for Federated
        Learning", IEEE Transactions on Signal Processing 70, 2022.
    """
    step = geometric_median(max_iter=max_iter, tol=tol, eps=eps)
    return preset("FedRFA", chain(step), options, max_iter=max_iter, tol=tol, eps=eps)


def QFedAvg(
    *,
    q: float = 0.2,
    client_lr: float = 0.1,
    loss_key: str = "loss",
    **options: Unpack[StrategyOptions],
) -> Strategy:
    """q-FedAvg: fair aggregation; clients report their pre-training loss as ``loss_key``.

    Args:
        q: The fairness parameter (0 is FedSGD-like averaging).
        client_lr: The clients' learning rate (``L = 1/client_lr``).
        loss_key: The fit metric with the client's loss at the received weights.
            Every fit config names it as ``"loss_before_fit"``, and the built-in
            clients (``TorchClient``, ``SklearnClient``, ``LogisticClient``)
            report that loss, on their training data, under it.
        **options: :class:`~covey.Strategy` options (see :func:`covey.FedAvg`).

    Returns:
        A :class:`~covey.Strategy` whose aggregator is
            ``chain(qfedavg(q, client_lr, loss_key=loss_key))``, asking clients for
            their loss before fitting in every fit config.

    References:
        Li, Sanjabi, Beirami and Smith, "Fair Resource Allocation in Federated
        Learning", ICLR 2020.
    """
    if not isinstance(loss_key, str) or not loss_key or len(loss_key) > MAX_KEY_CHARS:
        raise ValueError(
            f"loss_key must name a fit metric (1 to {MAX_KEY_CHARS} characters), got {loss_key!r}"
        )
    check_positive(client_lr, "QFedAvg client_lr")  # named as given, not as qfedavg's lr
    step = named_as_given(
        "QFedAvg", "qfedavg", lambda: chain(qfedavg(q, client_lr, loss_key=loss_key))
    )
    strategy = preset("QFedAvg", step, options, q=q, client_lr=client_lr, loss_key=loss_key)
    # the built-in clients report their loss at the received weights when asked
    entries = {**strategy.fit_config_entries, LOSS_BEFORE_FIT: loss_key}
    return replace(strategy, fit_config_entries=entries)


def Scaffold(
    *, num_clients: int, server_lr: float = 1.0, **options: Unpack[StrategyOptions]
) -> Strategy:
    """SCAFFOLD: control variates correct client drift on heterogeneous data.

    The aggregator is ``chain(scaffold(num_clients), mean(), server_sgd(server_lr))``;
    clients use :class:`covey.clients.ControlVariate` to correct their local
    gradients and report their control-variate change.

    A client advances its ``c_i`` when it builds its reply, and is not told whether
    the server counted it: a reply the server discards after the client trained
    (a non-finite value or a wrong layout, past ``round_timeout``) leaves that
    client's ``c_i`` advanced while ``c`` never adds its ``Delta c_i / N``, so ``c``
    differs from the mean of the ``c_i`` by that share for the rest of the run. Such
    clients are the round's ``fit_failures``; ``accept_failures=False`` stops the
    run at the first (see "SCAFFOLD" in docs/strategies.md).

    With update compression only the model update is compressed: ``c`` (sent
    with each fit task) and each client's ``Delta c_i`` (a reply's extra) travel
    uncompressed, model-sized, and count in the round's ``bytes_sent`` and
    ``bytes_received``.

    Args:
        num_clients: ``N``, the number of clients in the federation.
        server_lr: The global step size ``eta_g``.
        **options: :class:`~covey.Strategy` options (see :func:`covey.FedAvg`).

    Returns:
        A :class:`~covey.Strategy` whose aggregator is
            ``chain(scaffold(num_clients), mean(), server_sgd(server_lr))``
            (without ``server_sgd`` when ``server_lr`` is 1).

    References:
        Karimireddy et al., "SCAFFOLD: Stochastic Controlled Averaging for
        Federated Learning", ICML 2020.
    """
    steps: list[Step] = [scaffold(num_clients), mean()]
    if server_lr != 1.0:
        steps.append(server_sgd(server_lr))
    return preset("Scaffold", chain(*steps), options, num_clients=num_clients, server_lr=server_lr)


#: The presets a strategy is made with, as ``covey.NAME()``.
PRESETS: tuple[Callable[..., Strategy], ...] = (
    FedAvg, FedAvgM, FedProx, FedAdam, FedYogi, FedAdagrad, FedMedian, FedTrimmedAvg,
    Krum, MultiKrum, Bulyan, FedRFA, QFedAvg, Scaffold, FedBuff,
)  # fmt: skip

for _preset in PRESETS:
    not_a_class(_preset)
