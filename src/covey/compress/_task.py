"""The ``"fit_compressed"`` task: what a compressed fit task carries, and building one."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from covey.compress._plain import scheme_named, scheme_spec
from covey.compress._schemes import Scheme
from covey.core._messages import Task

KIND = "fit_compressed"
CONFIG_KEY = "covey.compression"
"""The key of a ``"fit_compressed"`` task's config under which its compression travels."""


@dataclass(frozen=True)
class CompressedFitPayload:
    """What a ``"fit_compressed"`` task carries besides the fit task's own config and weights.

    On the task it is plain data, so it crosses a network as JSON and arrays:
    ``task.config[CONFIG_KEY]`` is ``{"scheme": spec, "seed": seed, "cid": cid}``,
    with ``"run": token`` when the server names its run and ``"name": name``
    when it names the client (a deployed client's chosen name; ``spec`` as
    :func:`~covey.compress.scheme_named` reads it, e.g. ``"topk:0.01"``)
    and ``task.payload`` is the fit task's own payload, the arrays broadcast
    with it. A scheme of one's own has no spec and travels as the object, which
    only an in-process transport carries.

    Args:
        scheme: How to encode the update.
        seed: Seeds stochastic rounding, with the round and ``cid``.
        cid: The client's id.
        extras: The ``"fit"`` task's own payload (broadcast arrays), or None.
        run: A token naming the run: a client object's top-k residuals of another
            run are dropped (a simulation's clients may outlive it). None: one run.
        name: The client as the server names it, in a refused update's error
            (a deployed client's chosen name); None: ``client <cid>``.
    """

    scheme: Scheme
    seed: int
    cid: int
    extras: Any = None
    run: str | None = None
    name: str | None = None

    def task(self, fit: Task) -> Task:
        """The ``"fit_compressed"`` task that asks for ``fit``'s work, compressed.

        Args:
            fit: The ``"fit"`` task: its round, weights and payload are kept, and
                this payload's scheme, seed, client id, run and name join its
                config under :data:`CONFIG_KEY`.

        Returns:
            The new task; ``fit`` is left as it is.
        """
        scheme = scheme_value(self.scheme)
        return compressed_task(fit, scheme, self.seed, self.cid, self.run, self.name)

    @classmethod
    def of(cls, task: Task) -> tuple[CompressedFitPayload, dict[str, Any]]:
        """Read a ``"fit_compressed"`` task back: its payload and the fit's own config.

        Args:
            task: A ``"fit_compressed"`` task, as a client receives it. Its scheme
                is a spec (``"q8"``) or, from an in-process transport, a scheme
                object.

        Returns:
            The payload (its ``extras`` the task's payload) and a copy of the
            task's config without the compression entry.

        Raises:
            TypeError: if the task lacks weights or its compression entry, or the
                entry names no scheme.
            ValueError: if the entry names a scheme this covey does not know, its
                ``seed`` or ``cid`` is not an integer >= 0, or its ``run`` or
                ``name`` is not a string.
        """
        head = task.config.get(CONFIG_KEY) if isinstance(task.config, Mapping) else None
        if task.weights is None or not isinstance(head, Mapping):
            raise TypeError(f"a {KIND} task needs weights and config[{CONFIG_KEY!r}]")
        value = head.get("scheme")
        scheme = _known_scheme(value) if isinstance(value, str) else value
        if not callable(getattr(scheme, "encode", None)):
            raise TypeError(f"config[{CONFIG_KEY!r}] names no compression scheme")
        seed, cid = head.get("seed"), head.get("cid")
        for what, n in (("seed", seed), ("cid", cid)):
            if not isinstance(n, int) or isinstance(n, bool) or n < 0:
                raise ValueError(f"config[{CONFIG_KEY!r}][{what!r}] must be an integer >= 0")
        run, name = head.get("run"), head.get("name")
        for what, text in (("run", run), ("name", name)):
            if text is not None and not isinstance(text, str):
                raise ValueError(f"config[{CONFIG_KEY!r}][{what!r}] must be a string")
        config = {k: v for k, v in task.config.items() if k != CONFIG_KEY}
        payload = cls(scheme, seed, cid, task.payload, run, name)  # type: ignore[arg-type]
        return payload, config


def _known_scheme(spec: str) -> Scheme:
    """The scheme a task names; one this covey does not know is a newer covey's, said so."""
    try:
        return scheme_named(spec)
    except ValueError as exc:
        from covey import __version__

        raise ValueError(
            f"the server asks for compression {spec!r:.60}, which this client (covey "
            f"{__version__}) does not know ({exc}): run the server's covey major.minor "
            "version on this client"
        ) from None


def scheme_value(scheme: Scheme) -> Any:
    """The scheme as a task carries it: its spec, or the object for a scheme of one's own."""
    spec = scheme_spec(scheme)
    return spec if spec is not None else scheme


def compressed_task(
    fit: Task, scheme: Any, seed: int, cid: int, run: str | None = None, name: str | None = None
) -> Task:
    """The ``"fit_compressed"`` task for ``fit``; ``scheme`` as :func:`scheme_value` gives it.

    ``name``: the client as the server names it (None: a simulated client, ``client <cid>``).
    """
    head: dict[str, Any] = {"scheme": scheme, "seed": seed, "cid": cid}
    if run is not None:
        head["run"] = run
    if name is not None:
        head["name"] = name
    return Task(KIND, fit.round, {**fit.config, CONFIG_KEY: head}, fit.weights, fit.payload)
