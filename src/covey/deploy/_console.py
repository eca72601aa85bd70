"""The server's console: timestamped lines on who joined, each round, and who failed, by name."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping

from covey.core._history import RoundRecord
from covey.deploy._shown import escape, stamp
from covey.server._callbacks import replayed_round

__all__ = ["MOST_NAMED", "ServerConsole"]

#: Clients a round's lines name, and failures they show one by one; the rest are counted
#: (a round of 1,000 clients would write a line of every name, and a line per failure).
#: Every participant and failure stays in the run's history (``covey runs show``).
MOST_NAMED = 10

_SHOWN_EVENTS = {
    "join": "joined",
    "rejoin": "reconnected",
    "leave": "left",
}
"""The fleet events the console writes a line of. A refusal and a broken protocol are
not among them: the transport logs each as a WARNING naming the client, its address and
why (``refused s1 from ipv4:...: certificate revoked``), and a line here too wrote every
one of them twice into the server's log."""


def _number(value: object) -> float | None:
    """``value`` as a float if it is a number (not a bool), else None.

    A custom metrics function may give a metric of any type (a list of the
    clients' values, a string): the console shows only the numbers.
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _metrics(record: RoundRecord) -> list[str]:
    """The round's losses and accuracies that are numbers, as ``"label value"``."""
    shown = (
        ("train loss", record.fit_metrics.get("train_loss")),
        ("eval loss", record.evaluate_loss),
        ("eval accuracy", record.evaluate_metrics.get("accuracy")),
        ("loss", record.central_loss),
        ("accuracy", record.central_metrics.get("accuracy")),
    )
    return [
        f"{label} {number:.4f}" for label, value in shown if (number := _number(value)) is not None
    ]


def _not_run(record: RoundRecord) -> set[str]:
    """The evaluation stages ``record`` times that did not run: its line leaves them out.

    A round times only the stages that ran; ``"central"`` also times an
    ``evaluate_fn`` that returned None (nothing to show), and a round record of
    an older covey timed both whether or not they ran: microseconds that the
    line would show as ``evaluate 0.00 s``.
    """
    skipped = set()
    if not record.evaluate_participants and not record.evaluate_failures:
        skipped.add("evaluate")
    if record.central_loss is None and not record.central_metrics:
        skipped.add("central")
    return skipped


class ServerConsole:
    """Writes the server's progress as timestamped lines, naming clients by their chosen name.

    Args:
        write: Prints one line (e.g. a rich console's ``print``).
        needed: How many clients the run waits for (``min_available_clients``); 0 if
            not known (a loop of the app's own waits for those it needs itself).
        names: The name of each client id, kept up to date by :func:`covey.serve`.
        step: What one step of the run is called: ``"round"``, or ``"update"`` for the
            global updates of an asynchronous (FedBuff) run.
        dated: Begin each line with the date too (see :func:`~covey.deploy._shown.stamp`):
            the lines go to a file, journald or a pipe, not a terminal.
    """

    def __init__(
        self,
        write: Callable[[str], None],
        needed: int,
        names: Mapping[int, str],
        step: str = "round",
        *,
        dated: bool = False,
    ) -> None:
        """A console that has seen no client yet."""
        self._write = write
        self.needed = needed
        self.names = names
        self.step = step
        self.dated = dated
        self._connected: set[str] = set()
        self._lock = threading.Lock()

    def line(self, text: str) -> None:
        """Write ``text`` after the time of day (and the date, if :attr:`dated`)."""
        self._write(f"[dim]{stamp(self.dated)}[/] {text}")

    def waiting(self) -> None:
        """Say the server waits for its clients, counting those that joined already.

        Clients that dial before the server listens (they retry) may join between
        its listening line and this one; once as many as it needs have, it waits
        for none and says nothing.
        """
        with self._lock:
            count = len(self._connected)
        if count < self.needed:
            self.line(f"waiting for clients ({count} of {self.needed} connected)")

    def on_event(self, name: str, event: str, detail: str = "") -> None:
        """A fleet event from the transport: joins, leaves, refusals."""
        with self._lock:
            if event in ("join", "rejoin"):
                self._connected.add(name)
            elif event == "leave":
                self._connected.discard(name)
            count = len(self._connected)
        shown = _SHOWN_EVENTS.get(event)
        if shown is None:
            return
        if event in ("join", "rejoin"):  # its peer, then a covey version not the server's
            _, said, version = detail.partition(" (covey ")
            why = f" {escape('(covey ' + version)}" if said else ""
        else:
            why = f": {escape(detail)}" if detail else ""
        # "9 of 2 connected" would read as a miscount once more clients come than the run needs.
        tally = (
            f"{count} connected"  # 0 needed: not known (an app's own loop waits for its own)
            if self.needed <= 0
            else f"{count} of {self.needed} connected"
            if count <= self.needed
            else f"{count} connected, {self.needed} needed"
        )
        self.line(f"client {escape(name)} {shown}{why} ({tally})")

    def who(self, cids: list[int]) -> str:
        """The names of clients ``cids``: the first :data:`MOST_NAMED`, then how many more."""
        named = ", ".join(escape(self.names.get(c) or f"client {c}") for c in cids[:MOST_NAMED])
        if len(cids) > MOST_NAMED:
            named += f" and {len(cids) - MOST_NAMED} more ({len(cids)} clients)"
        return named or "none"

    def on_round(self, record: RoundRecord) -> None:
        """A finished round (or update): participants, durations, metrics and failures by name."""
        step = self.step
        if replayed_round() == record.round:  # a resumed run's saved round, called again
            metrics = ", ".join(_metrics(record))
            self.line(
                f"resuming after {step} {record.round}, saved before the run stopped"
                + (f" ({metrics})" if metrics else "")
            )
            return
        if record.round == 0:
            self.line(f"{step} 0 (initial model): {', '.join(_metrics(record)) or 'no metrics'}")
            return
        # in the order of the round (a stage is recorded when it ends: "aggregate" before "fit")
        order = {k: i for i, k in enumerate(("fit", "aggregate", "evaluate", "central", "total"))}
        skipped = _not_run(record)
        stages = sorted(
            (k for k in record.durations if k != "wait" and k not in skipped),
            key=lambda k: order.get(k, 5),
        )
        took = ", ".join(f"{k} {record.durations[k]:.2f} s" for k in stages)
        if "wait" in record.durations:  # the wait for clients, apart from training
            took += f" (after waiting {record.durations['wait']:.2f} s for clients)"
        parts = [f"{step} {record.round}: fit by {self.who(record.fit_participants)}"]
        if record.evaluate_participants:
            parts.append(f"evaluated by {self.who(record.evaluate_participants)}")
        self.line("; ".join(parts))
        detail = _metrics(record)
        if took:
            detail.append(f"took {took}")
        if detail:
            self.line(f"{step} {record.round}: {', '.join(detail)}")
        for failure in record.failures[:MOST_NAMED]:
            self.line(
                f"[red]{step} {record.round}: {escape(failure.who)} failed in {failure.stage}:[/] "
                f"{escape(failure.error)}"
            )
        rest = record.failures[MOST_NAMED:]
        if rest:
            by_stage: dict[str, int] = {}
            for failure in rest:
                by_stage[failure.stage] = by_stage.get(failure.stage, 0) + 1
            counts = ", ".join(f"{n} in {stage}" for stage, n in by_stage.items())
            noun = "client" if len(rest) == 1 else "clients"
            self.line(
                f"[red]{step} {record.round}: {len(rest)} more {noun} failed[/] ({counts}); "
                "every failure is in the run's history (`covey runs show`)"
            )
