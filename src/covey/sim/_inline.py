"""The inline backend: every client in this process, one after another, arrays by reference.

Clients receive the global weights as read-only views of the server's own
arrays, with no copy. NumPy refuses writes through them, but a library that
ignores NumPy's read-only flag (``torch.from_numpy``, ctypes, some compiled
extensions) can still write into that memory: the global model, and the model
every later client of the round trains from, would change silently. The
transport therefore fingerprints the weights a round hands out before its first
client runs and after its last, and stops the run if they changed.
"""

from __future__ import annotations

import traceback
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import replace
from typing import Any

from covey.clients._build import build_client
from covey.clients._client import ClientFn, fit_result, not_an_exception, run_task
from covey.core._messages import FitResult, Reply, Task
from covey.core._weights import Weights, fingerprint
from covey.sim._sendable import Unsent, as_sent, received, unsendable
from covey.transport._memory import Handler, MemoryTransport

Lent = dict[int, tuple[Weights, tuple[int, ...]]]
"""The weights a round lends its clients, by ``id``, with their fingerprints."""


class InlineTransport(MemoryTransport):
    """A :class:`MemoryTransport` that stops the run if clients change the weights they share.

    Args:
        clients: The ids of the clients this transport serves.
        handler: ``(cid, task) -> Reply``.
    """

    def exchange(
        self, tasks: Mapping[int, Task], *, timeout: float | None = None
    ) -> Iterator[Reply]:
        """Run the tasks as :meth:`MemoryTransport.exchange`, then check the weights sent.

        Raises:
            RuntimeError: once the last reply is taken, if the weights the tasks
                carried changed while the clients ran.
        """
        lent = self.lend(tasks)
        yield from super().exchange(tasks, timeout=timeout)
        self.check_lent(tasks, lent)

    fit_one: Callable[[int, Task], Any]
    """``(cid, task) -> FitResult | Reply``: client ``cid``'s fit task, run now; raises only Ctrl-C.

    One step of :meth:`exchange` with no timeout, for a caller that runs a
    round's fit tasks itself in client-id order, between :meth:`lend` and
    :meth:`check_lent`: the client's :class:`~covey.FitResult` itself when it
    succeeded (see :func:`covey.clients._client.fit_result`), its
    :class:`~covey.core.Reply` otherwise.
    """

    def __init__(
        self,
        clients: Sequence[int],
        handler: Handler,
        fit_one: Callable[[int, Task], Any] | None = None,
    ) -> None:
        """Serve ``clients`` with ``handler``; ``fit_one`` as above (default: ``handler``)."""
        super().__init__(clients, handler)
        self.fit_one = handler if fit_one is None else fit_one

    @staticmethod
    def lend(tasks: Mapping[int, Task]) -> Lent:
        """Fingerprint the weights ``tasks`` carry, before their clients run."""
        lent: Lent = {}
        for task in tasks.values():
            if task.weights is not None and id(task.weights) not in lent:
                lent[id(task.weights)] = (task.weights, fingerprint(task.weights))
        return lent

    @staticmethod
    def check_lent(tasks: Mapping[int, Task], lent: Lent) -> None:
        """Check, once the clients of ``tasks`` ran, that the weights :meth:`lend` saw are intact.

        Raises:
            RuntimeError: naming the clients, if the weights changed.
        """
        for weights, before in lent.values():
            if fingerprint(weights) != before:
                why = "the global model changed too, so the run stops"
                raise RuntimeError(lent_weights_changed(tasks, why))


def lent_weights_changed(tasks: Mapping[int, Task], consequence: str) -> str:
    """The error for lent weights that a client wrote into although they are read-only.

    Args:
        tasks: The tasks of the clients that ran on those weights, by client id.
        consequence: What follows, e.g. ``"the run stops"``.
    """
    first = next(iter(tasks.values()))
    cids = sorted(tasks)
    who = ", ".join(str(c) for c in cids[:10]) + (", ..." if len(cids) > 10 else "")
    later = _LATER.get(first.kind, f"ran their {first.kind} task on a changed model")
    return (
        f"round {first.round}: the global weights changed in place while clients {who} ran "
        f"their {first.kind} task. A client wrote into the read-only arrays it was given "
        "through a library that ignores NumPy's read-only flag (torch.from_numpy, ctypes, "
        "a compiled extension such as scikit-learn's SGD estimators, which train their coef_ "
        f"in place), so later clients {later}; {consequence}. "
        "Copy before writing: torch.tensor(array) rather than torch.from_numpy(array), "
        "model.coef_ = weights['coef'].copy() (or covey.sklearn.set_params), "
        "or array.copy()"
        + batch_norm_hint(first.weights or {}, first.kind)
        + (_INITIAL_VIEWS.format(use=_USE.get(first.kind, "use")) if first.round == 1 else "")
    )


_LATER = {"fit": "trained from a changed model", "evaluate": "evaluated a changed model"}
"""What the clients after the writer did with the changed weights, by task kind."""

_USE = {"fit": "train", "evaluate": "evaluate (or train)"}

_INITIAL_VIEWS = (
    ". In the first round the weights are initial_weights as given: if they are views of "
    "a model the clients go on to {use} (covey.torch.to_weights(model) shares the tensors' "
    "memory), writing into that model wrote into them; give to_weights(model, copy=True)"
)

_RUNNING_STATS = ("running_mean", "running_var", "num_batches_tracked")
"""The buffers a torch BatchNorm layer updates in place at every forward pass in train mode."""


def batch_norm_hint(weights: Weights, kind: str) -> str:
    """The likely cause when ``weights`` hold a torch BatchNorm's running statistics.

    Named by every backend's error for a write into the read-only global weights:
    the inline and Ray backends' (:func:`lent_weights_changed`), and the segmentation
    fault of a process worker, whose mapping the operating system protects.
    """
    stats = [str(n) for n in weights if str(n).rpartition(".")[2] in _RUNNING_STATS]
    if not stats:
        return ""
    hint = (
        f". The model has BatchNorm running statistics ({stats[0]!r}"
        f"{', ...' if len(stats) > 1 else ''}), a likely cause: a BatchNorm layer in train "
        "mode updates them in place at every forward pass, so a model whose buffers share "
        "the given arrays' memory (torch.from_numpy, load_state_dict(..., assign=True)) "
        "writes into them; copy the weights into the model (covey.torch.load_weights, "
        "load_state_dict without assign=True)"
    )
    if kind == "evaluate":
        hint += ", and call model.eval() before evaluating, as covey.torch.evaluate_model does"
    return hint


def inline_transport(
    client_fn: ClientFn, num_clients: int, client_cache: int | None = None
) -> MemoryTransport:
    """A transport running every client in this process, sequentially, without serialization.

    Each client is built by ``client_fn`` the first time it is needed and reused
    in later rounds, as the process backend does; with ``client_cache`` set, only
    that many recently used clients stay built (0: a client is built per task).
    The weights of each exchange are checked after it (see :class:`InlineTransport`).

    Args:
        client_fn: ``cid -> client``: builds the client with id ``cid``.
        num_clients: The clients, with ids ``0`` to ``num_clients - 1``.
        client_cache: How many built clients to keep; None keeps every one.
    """
    built = _Built(client_fn, client_cache)
    return InlineTransport(range(num_clients), built.handle, built.fit_one)


class _Built:
    """The clients an inline transport built, running their tasks (see :func:`inline_transport`)."""

    def __init__(self, client_fn: ClientFn, client_cache: int | None) -> None:
        self.client_fn = client_fn
        self.cache = client_cache
        self.clients: OrderedDict[int, Any] = OrderedDict()
        self.unsent = Unsent()

    def perform(self, run: Callable[[Any, int, Task], Any], cid: int, task: Task) -> Any:
        """``run(client, cid, task)``, client ``cid`` built if need be; a failed Reply if it raised.

        Raises:
            KeyboardInterrupt: Ctrl-C, the run's.
        """
        cache, clients = self.cache, self.clients
        try:
            client = clients.get(cid)
            if client is None:
                client = build_client(self.client_fn, cid)
                if cache != 0:
                    clients[cid] = client
                    if cache is not None and len(clients) > cache:
                        clients.popitem(last=False)
            elif cache is not None:
                clients.move_to_end(cid)
            return run(client, cid, task)
        except KeyboardInterrupt:  # Ctrl-C: the run's
            raise
        except Exception:  # noqa: BLE001 - client_fn's error is that client's reply
            return Reply(cid, task.kind, error=traceback.format_exc())
        except BaseException as exc:  # noqa: BLE001 - sys.exit(), a CancelledError: the client's
            return _exited(cid, task.kind, exc)

    def handle(self, cid: int, task: Task) -> Reply:
        """Client ``cid``'s task run: its Reply (see :func:`~covey.clients._client.run_task`).

        A config or payload a deployed server could not send it, or a result one would
        refuse (a metric over the network's limits), fails the client, with the error of every
        backend (:mod:`covey.sim._sendable`). The client reads the payload, and the
        server the result, as they arrive deployed (:func:`~covey.sim._sendable.as_sent`).
        """
        failed = self.unsent(cid, task)
        if failed is not None:
            return failed
        sent = as_sent(task.payload)
        if sent is not task.payload:
            task = replace(task, payload=sent)
        return received(self.perform(run_task, cid, task), task.weights)

    def fit_one(self, cid: int, task: Task) -> Any:
        """``perform(fit_result, cid, task)``; one frame less for a client built and kept.

        A config, payload or result that cannot be sent fails the client, as in
        :meth:`handle`.
        """
        if self.unsent.fresh(task):  # checked once per round, not per client
            failed = self.unsent(cid, task)
            if failed is not None:
                return failed
        client = self.clients.get(cid) if self.cache is None else None
        if client is None:
            result = self.perform(fit_result, cid, task)
        else:
            try:
                result = fit_result(client, cid, task)
            except KeyboardInterrupt:
                raise
            except BaseException as exc:  # noqa: BLE001 - as in perform
                return _exited(cid, task.kind, exc)
        usual = type(result) is FitResult and not result.metrics and not result.extras
        if usual or isinstance(result, Reply):
            return result  # a failed reply, or the usual result: nothing to measure
        return unsendable(cid, task.kind, result, task.weights) or result


def _exited(cid: int, kind: str, exc: BaseException) -> Reply:
    """The failed reply of client ``cid`` whose task raised ``exc``, no ``Exception``; see below."""
    return Reply(cid, kind, error=traceback.format_exc() + exited(exc, kind))


def exited(exc: BaseException, kind: str) -> str:
    """The hint for a client (or its ``client_fn``) that raised what is no ``Exception``.

    ``sys.exit()`` or a ``BaseException`` such as asyncio's ``CancelledError``
    ends the client's task on every backend, not what runs it: here the whole
    simulation (which it ended with no error and no history), in a process
    worker the clients queued behind it, in a Ray actor the other clients of
    its call.
    """
    return (
        f"covey: the client {not_an_exception(exc)} in its {kind} task: it fails alone, and "
        "the run goes on without it\n"
    )
