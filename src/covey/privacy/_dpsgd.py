"""DP-SGD inside a torch client's local training, through Opacus.

:class:`DPSGD` makes a model, optimizer and data loader private with Opacus
(per-example gradient clipping, Gaussian noise on each batch's sum, Poisson
batches) and keeps the client's own ledger of steps in ``dp-accounting``, so the
client can report its (epsilon, delta) after every round. The unit protected is
one example (record) of the client's data, across all the rounds it trains in.
Needs ``pip install 'covey[torch]'`` (torch 2.13.0 and opacus).
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import dp_accounting as dpa
else:
    from covey.privacy._dpa import dpa

from covey.clients._current import current_task
from covey.clients._quiet import ignoring
from covey.clients._torch import dtypes_named, torch_module
from covey.core._extras import MissingExtraError
from covey.core._messages import finite, shown
from covey.privacy._accounting import Accountant, Ledger, check_noise_multiplier, round_event
from covey.privacy._local import check_delta, read_ledger, write_ledger

logger = logging.getLogger("covey")


def _opacus() -> Any:
    try:
        return importlib.import_module("opacus")
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise MissingExtraError("DP-SGD needs Opacus: pip install 'covey[torch]'") from exc


def _check_layers(module: Any) -> None:
    """Refuse layers Opacus cannot train privately, naming each and how to replace it.

    Opacus' own error gives its reasons as one list, without the layers' names.
    """
    validators = importlib.import_module("opacus.validators")
    checks = validators.ModuleValidator.VALIDATORS
    found = [
        f"{name or 'the model'!r} ({type(layer).__name__})"
        for name, layer in module.named_modules()
        if type(layer) in checks
        and any(p.requires_grad for p in layer.parameters())
        and checks[type(layer)](layer)
    ]
    if found:
        raise ValueError(
            f"Opacus cannot train these layers with DP-SGD: {', '.join(found)}. A BatchNorm "
            "mixes the examples of a batch, so no example has a gradient of its own; LSTM, "
            "GRU and MultiheadAttention need Opacus' versions. "
            "opacus.validators.ModuleValidator.fix(model) replaces them (BatchNorm by "
            "GroupNorm); then build the optimizer on the fixed model's parameters"
        )


def _check_objects(torch: Any, module: Any, optimizer: Any, data_loader: Any) -> None:
    """Refuse a class given for an object, or data that is no DataLoader, naming what to give."""
    for what, value in (("module", module), ("optimizer", optimizer)):
        if isinstance(value, type):
            name = value.__name__
            raise TypeError(f"{what} is the class {name}: give an instance of it")
    if not isinstance(data_loader, torch.utils.data.DataLoader):
        data = "a Dataset" if isinstance(data_loader, torch.utils.data.Dataset) else "data"
        raise TypeError(
            f"data_loader is a {type(data_loader).__name__}: give a torch.utils.data.DataLoader "
            f"(of {data}, e.g. DataLoader(dataset, batch_size=64)), whose batch_size Opacus "
            "turns into the rate it samples each example at (1 / len(data_loader))"
        )


def _check_reduction(loss_fn: Any) -> None:
    """Refuse a loss not averaged over the batch: Opacus is told the mean.

    Opacus scales each example's gradient by the batch's size for a mean loss;
    a summed one would be clipped at ``max_grad_norm`` after growing by that
    factor, and its noise would be scaled for a mean.
    """
    reduction = getattr(loss_fn, "reduction", "mean")
    if reduction != "mean":
        raise ValueError(
            f"loss_fn has reduction={reduction!r}, and DP-SGD here takes the mean loss over "
            "a batch (Opacus is told loss_reduction='mean', which its clipping and noise "
            f"assume): give {type(loss_fn).__name__}(reduction='mean'), torch's default; the "
            "optimizer's step averages the clipped gradients over the expected batch size"
        )


def _stream(seed: int, *keys: int) -> int:
    """A 32-bit seed for torch, drawn from ``(seed, *keys)``."""
    return int(np.random.SeedSequence([seed, *keys]).generate_state(1)[0])


def _check_client(client: object) -> None:
    if client is None or (isinstance(client, str) and client):
        return
    if isinstance(client, bool) or not isinstance(client, int) or client < 0:
        raise ValueError(
            f"client must be an int >= 0 or a non-empty str naming the client, got {client!r}"
        )


def _who(client: int | str) -> tuple[int, int]:
    """``client`` as two keys of a seed: an id and a name never give the same keys.

    A name goes through SHA-256 (not ``hash``, which changes with each process).
    """
    if isinstance(client, int):
        return (0, client)
    return (1, int.from_bytes(hashlib.sha256(client.encode()).digest()[:8], "big"))


class DPSGD:
    """Private local training for a torch model: Opacus DP-SGD plus a per-client ledger.

    Args:
        module: The ``torch.nn.Module`` to train. Opacus wraps it in place: load
            and read its weights through ``module`` itself (``covey.torch.to_weights``,
            ``load_weights``); :attr:`module`, the wrapper, names them with a
            ``_module.`` prefix that the global model does not have. Its layers
            must be ones Opacus trains (no BatchNorm: a ValueError names them);
            in eval mode or training mode, as it is left.
        optimizer: Its optimizer.
        data_loader: The client's training data, a ``torch.utils.data.DataLoader``
            (a Dataset is refused: its batch size sets the rate); batches are
            redrawn by Poisson sampling with rate ``1 / len(data_loader)``
            (Opacus' rate, which the ledger accounts).
        noise_multiplier: Noise standard deviation over ``max_grad_norm``.
        max_grad_norm: The per-example gradient clip.
        delta: The delta the client reports its epsilon at (below 1 / examples).
        accountant: ``"rdp"`` (default) or ``"pld"`` for the client's ledger.
        seed: Seeds Opacus' noise and the Poisson sampling of batches (tests),
            each from a stream of its own, drawn from the seed and the client
            (``client``, else the id of the client performing the task), so that
            clients given one seed draw noise of their own, which a ledger read
            from ``ledger_path`` moves on by the steps it holds (a site built
            again draws new noise). :meth:`train` reseeds both streams from the
            round as well (see there). None leaves both to Opacus (torch's global
            generator, or the data loader's ``generator`` for sampling). For a
            real deployment prefer ``secure_mode=True`` in Opacus.
        client: Who this client is, for the seed: an int >= 0 (the partition or
            ``cid`` its data was chosen by) or a name (the site's). None: the id
            covey's runtime gives the client performing the task (the ``cid`` of
            ``client_fn`` in simulation; in a deployed run, the id the server
            keeps for the client's name, another number than in simulation).
            Give it to draw the same noise in a simulation and a deployed run.
        ledger_path: A JSON file keeping the ledger across ``DPSGD`` objects: read
            when built (if it exists), written at the end of every :meth:`train`,
            before the trained weights can leave. Without it the ledger lives on
            this object only, so a client built again (``client_cache``, a
            resumed simulation, a restarted site) reports only what it spent since.

    Example:
        >>> dp = DPSGD(net, torch.optim.SGD(net.parameters(), lr=0.1), loader,  # doctest: +SKIP
        ...            noise_multiplier=1.0, max_grad_norm=1.0, delta=1e-5)
        >>> dp.train(epochs=1); dp.epsilon()  # doctest: +SKIP

    References:
        Abadi et al., "Deep Learning with Differential Privacy", CCS 2016;
        Yousefpour et al., "Opacus: User-Friendly Differential Privacy Library in
        PyTorch", 2021.
    """

    def __init__(
        self,
        module: Any,
        optimizer: Any,
        data_loader: Any,
        *,
        noise_multiplier: float,
        max_grad_norm: float,
        delta: float,
        accountant: Accountant = "rdp",
        seed: int | None = None,
        ledger_path: str | Path | None = None,
        client: int | str | None = None,
    ) -> None:
        torch = torch_module()
        opacus = _opacus()
        for name, value in (
            ("noise_multiplier", noise_multiplier),
            ("max_grad_norm", max_grad_norm),
        ):
            if not finite(value) or not value > 0:  # an int past the largest float too
                raise ValueError(f"{name} must be a finite number > 0, got {shown(value)}")
        check_noise_multiplier(noise_multiplier)
        check_delta(delta)
        _check_client(client)
        _check_objects(torch, module, optimizer, data_loader)
        if len(data_loader) == 0:
            raise ValueError("the data loader holds no examples to train on")
        try:
            examples = len(data_loader.dataset)
        except (AttributeError, TypeError):  # a dataset of no length (an iterable one)
            examples = 0
        if examples and delta >= 1.0 / examples:
            logger.warning(  # (epsilon, delta) then allows leaking one example outright
                "DPSGD: delta=%g is not below 1 / %d, one over the examples it protects: "
                "give a delta well below 1 / number of examples",
                delta,
                examples,
            )
        self.ledger = Ledger(accountant=accountant)
        self.ledger_path = None if ledger_path is None else Path(ledger_path)
        if self.ledger_path is not None and self.ledger_path.exists():
            self.ledger = read_ledger(self.ledger_path, accountant, "DPSGD")
        self.delta = float(delta)
        self.noise_multiplier = float(noise_multiplier)
        # Opacus warns that its noise is not from a CSPRNG unless secure_mode
        # (which needs torchcsprng); say it once in the log instead.
        with ignoring(message="Secure RNG turned off"):
            self.engine = opacus.PrivacyEngine(accountant="rdp")
        if seed is None:
            logger.warning(
                "DP-SGD noise comes from torch's default generator, not a CSPRNG "
                "(Opacus secure_mode needs torchcsprng)"
            )
        # A site built again goes on from the steps its ledger_path has charged: seeded
        # as at its first build, it would draw that build's noise and batches again,
        # and two rounds' updates would differ by their gradients alone, without noise.
        streams = () if not self.ledger.rounds else (self.ledger.rounds,)
        self.seed = seed
        self.client = client
        self._warned = False
        who = self._who()
        # Purposes 1 and 2 (batches, noise) for a seed alone, 5 and 6 mixing in the client.
        purposes = (1, 2) if not who else (5, 6)
        generator = None
        if seed is not None:
            noise_seed = _stream(seed, purposes[1], *who, *streams) if streams or who else seed
            generator = torch.Generator().manual_seed(noise_seed)
        if hasattr(module, "autograd_grad_sample_hooks"):  # Opacus' mark on a wrapped module
            raise ValueError(
                "this module was already made private by another DPSGD (Opacus wraps it "
                "in place, once): build one DPSGD per model and call its train() every "
                "round, or give a new model"
            )
        _check_layers(module)
        # Opacus refuses a module in eval mode (as one is after evaluating the global
        # model); train() puts it in training mode anyway, so its mode is kept instead.
        training = module.training
        module.train()
        self.module, self.optimizer, self.data_loader = self.engine.make_private(
            module=module,
            optimizer=optimizer,
            data_loader=data_loader,
            noise_multiplier=noise_multiplier,
            max_grad_norm=max_grad_norm,
            poisson_sampling=True,
            noise_generator=generator,
        )
        self.module.train(training)
        # the rate Opacus' Poisson loader samples at (1 / batches per epoch), not batch/n:
        # with drop_last or a partial last batch the two differ, and the ledger must
        # account what was drawn
        self.sampling_rate = float(self.data_loader.sample_rate)
        if seed is not None:
            # Opacus seeds the noise only: its Poisson sampler draws from the loader's
            # own generator, else torch's global one. A stream of its own, apart from
            # the noise's, makes the batches follow the seed too.
            self.data_loader.batch_sampler.generator = torch.Generator().manual_seed(
                _stream(seed, purposes[0], *who, *streams)
            )

    def _who(self) -> tuple[int, ...]:
        """The client's keys for the seed: ``client``, else the task's client id, else none."""
        if self.client is not None:
            return _who(self.client)
        task = current_task()
        return () if task is None else _who(task.cid)

    def train(self, epochs: int = 1, loss_fn: Any = None, *, round: int | None = None) -> float:
        """Train ``epochs`` passes of DP-SGD; return the mean training loss.

        Args:
            epochs: Passes over the data (Poisson-sampled batches).
            loss_fn: The loss (default: cross entropy), the mean over a batch:
                Opacus is told ``loss_reduction="mean"``, so a loss module with
                ``reduction="sum"`` or ``"none"`` is refused with a ValueError.
                A batch of floating-point data in another dtype than the model's
                (float64 for a float32 model) raises a TypeError saying so.
            round: The round being trained (``config["round"]`` in ``fit``).
                None: the round of the task the client is performing (covey's
                runtime tells it, simulated and deployed alike). With a ``seed``,
                the noise and the batches are drawn from streams of ``(seed,
                client, round, steps in the ledger)``: a site built again every
                round (``client_cache``, a resumed simulation, a restarted site)
                draws new noise each round even without ``ledger_path``, and a
                run started again with the same seed draws the same. Outside a
                task and without ``round`` it goes on with this object's streams,
                and a seeded one logs a warning once: built again each round
                without ``ledger_path``, it would draw the same noise every round.

        Returns:
            The mean training loss over the batches of the passes.

        Raises:
            ValueError: if ``epochs`` or ``round`` is not a whole number in range, or
                ``loss_fn`` does not take the mean over a batch.
            TypeError: if a batch's floating-point dtype is not the model's.
        """
        torch = torch_module()
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise ValueError(f"epochs must be an int >= 1, got {epochs!r}")
        if round is not None and (
            isinstance(round, bool) or not isinstance(round, int) or round < 0
        ):
            raise ValueError(f"round must be an int >= 0 or None, got {round!r}")
        if loss_fn is not None:
            _check_reduction(loss_fn)
        task = current_task()
        if round is None and task is not None:
            round = task.round
        if self.seed is not None:
            if round is not None:
                self._reseed(self.seed, round)
            elif not self._warned:
                self._warn_unseeded()
        loss_fn = loss_fn or torch.nn.functional.cross_entropy
        self.module.train()
        total, batches = 0.0, 0
        steps = 0
        try:
            for _ in range(epochs):
                for x, y in self.data_loader:
                    self.optimizer.zero_grad(set_to_none=True)
                    with dtypes_named(self.module, x, y):
                        out = self.module(x)
                        # Poisson sampling can draw an empty batch. It still takes its step,
                        # of noise alone, as the accountant assumes: a skipped step would
                        # leave the model unchanged and so tell that no example was drawn.
                        loss = loss_fn(out, y) if len(y) else out.sum()
                        # Opacus' per-example hooks fire on the first layer, whose input
                        # needs no gradient; torch warns of it, harmlessly.
                        with ignoring(message="Full backward hook is firing"):
                            loss.backward()
                    steps += 1  # counted before it changes the model: never one too few
                    self.optimizer.step()
                    if len(y):
                        total += float(loss.detach())
                        batches += 1
        finally:  # a loader or loss failing part-way: the steps taken are charged all the same
            self._charge(steps)
        return total / batches if batches else math.nan

    def _reseed(self, seed: int, round: int) -> None:
        """Seed the noise and the batches from ``(seed, client, round, steps charged so far)``.

        The steps tell apart two trainings of one round by one object (or by sites
        sharing a ``ledger_path``); the client, clients given one seed. Purposes 3
        and 4 (7 and 8 with a client) keep these streams apart from the ones seeded
        when built (2 and 1, or 6 and 5), however the keys line up.
        """
        torch = torch_module()
        who = self._who()
        # purposes 7 and 8 when the client is known: its streams are its own
        noise, batches = (3, 4) if not who else (7, 8)
        keys = (*who, round, self.ledger.rounds)
        self.optimizer.generator = torch.Generator().manual_seed(_stream(seed, noise, *keys))
        self.data_loader.batch_sampler.generator = torch.Generator().manual_seed(
            _stream(seed, batches, *keys)
        )

    def _warn_unseeded(self) -> None:
        """Say, once, what a seeded DPSGD told neither its round nor its client draws again."""
        self._warned = True
        again = []
        if self.ledger_path is None:
            again.append(
                "built again each round it draws the same noise and batches every round "
                "(pass train(round=config['round']))"
            )
        if self.client is None:
            again.append(
                "every client given this seed draws the same noise "
                "(pass DPSGD(client=...), the client's id or name)"
            )
        if again:
            logger.warning(
                "DPSGD: seed=%d, trained outside a covey task without round=: %s",
                self.seed,
                "; ".join(again),
            )

    def _charge(self, steps: int) -> None:
        """Add ``steps`` noisy steps to the ledger (and its file)."""
        if steps:
            event = round_event(self.noise_multiplier, self.sampling_rate)
            self.ledger = self.ledger.add(event, steps)
            if self.ledger_path is not None:
                write_ledger(self.ledger_path, self.ledger)

    def epsilon(self) -> float:
        """The client's epsilon so far at :attr:`delta`, from its dp-accounting ledger."""
        return self.ledger.epsilon(self.delta)

    def opacus_epsilon(self) -> float:
        """The same budget as Opacus' own accountant reads it (for comparison)."""
        return float(self.engine.get_epsilon(self.delta))

    def events(self) -> dpa.DpEvent:
        """The client's ledger as one ``dp_accounting`` event."""
        return self.ledger.event()
