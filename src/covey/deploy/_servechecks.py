"""Checks ``covey.serve`` makes before it listens: settings, capacity and the run resumed."""

from __future__ import annotations

import logging
import math
import os
import shlex
import tempfile
from pathlib import Path
from typing import Any

from covey.compress import Scheme, check_applies, run_scheme
from covey.core._files import a_folder
from covey.core._messages import MAX_ROUNDS
from covey.core._metricvalues import fits_a_float
from covey.server._kept import check_keep_last
from covey.server._readcopy import is_simulation
from covey.server._roundfiles import WEIGHTS_DIR
from covey.server._rundb import LOCK_NAME, is_held
from covey.server._runlock import RunRefusedError
from covey.server._store import RunStore
from covey.strategies._checks import refuse_unmet_need, unmet_rule_need
from covey.strategies._keeps import warn_of_an_unreached_m
from covey.strategies._strategy import Strategy
from covey.transport.grpc._checks import check_heartbeat

logger = logging.getLogger("covey")


RUN_FILES = ("run.sqlite", "history.json", "run.json")
"""The files a run (served or simulated) keeps in its folder: a new run never writes over them."""


def check_new_run_dir(run_dir: str | os.PathLike[str]) -> None:
    """Refuse a new run a folder that holds one, a simulation's included, before listening.

    Its ``history.json`` (and a simulation's ``run.json``) would be written over.

    Raises:
        FileExistsError: naming the folder, the files of the run it holds and, for a
            served run, how to continue it.
        TypeError: ``run_dir`` is no path.
    """
    folder = a_folder(run_dir)
    kept = [name for name in RUN_FILES if (folder / name).exists()]
    if not kept:
        return
    served = "run.sqlite" in kept and not is_simulation(folder)
    more = (
        ": continue it with serve(..., resume=True) "
        f"(covey server --resume {shlex.quote(str(folder))}), or "
        if served
        else "; a new run would write over it: "
    )
    raise FileExistsError(
        f"run_dir {folder} already holds a run ({', '.join(kept)}){more}give this run a "
        "folder of its own"
    )


def reopened(run_dir: str | os.PathLike[str] | None, resume: bool) -> RunStore | None:
    """The store of the served run to resume, or None for a new run (its folder checked)."""
    if resume and run_dir is None:
        raise ValueError("resume=True needs run_dir")
    if run_dir is not None and not resume:
        check_new_run_dir(run_dir)
    return reopen(run_dir) if resume and run_dir is not None else None


def reopen(run_dir: str | os.PathLike[str]) -> RunStore:
    """The store of the served run in ``run_dir``, held to resume it.

    Raises:
        RunRefusedError: Another process holds the run: it is still running (its pid
            is named), and a resume waits for it to end or for it to be stopped; or the
            run cannot be written (a read-only folder).
        OSError: The run cannot be read.
        ValueError: The folder holds a simulation, which a server does not continue.
        TypeError: ``run_dir`` is no path.
    """
    try:
        opened = RunStore.open(a_folder(run_dir), exclusive=True)
    except OSError as exc:
        folder = Path(run_dir)
        if is_held(folder) is not True:
            raise
        try:
            holder = (folder / LOCK_NAME).read_text(errors="replace").strip()
        except OSError:
            holder = ""
        where, kill = (
            (f"pid {holder}", f", or `kill {holder}`")
            if holder.isdigit()
            else ("another covey process", "")
        )
        raise RunRefusedError(
            f"the run in {folder} is still running in {where}, which writes the folder "
            f"until it ends; wait for it to end, or stop it first (Ctrl-C in its terminal"
            f"{kill}), then resume it"
        ) from exc
    if opened.config.get("kind") == "simulated":
        opened.close()
        last = opened.run_dir / WEIGHTS_DIR
        raise ValueError(
            f"run_dir {opened.run_dir} holds a simulation, not a served run: continue it "
            f"with covey.simulate(..., run_dir=..., resume=True) (a project's with `covey "
            f"run --resume {shlex.quote(str(opened.run_dir))}`); to train its model on with "
            "real clients, "
            f"serve it as a new run in a folder of its own, its weights (in {last}/, read "
            "with covey.server.RunStore) as the initial weights"
        )
    return opened


def stored_address(opened: RunStore) -> str:
    """The address a resumed run was served on; a run that records none is told what to give."""
    address = opened.config.get("address")
    if not isinstance(address, str) or not address:
        raise ValueError(
            f"the run in {opened.run_dir} records no address to listen on (made by an older "
            "covey, or by RunStore.create): give one, serve(address=...) or --address"
        )
    return address


def check_resumable(opened: RunStore, rounds: int) -> None:
    """Refuse to resume a run with fewer rounds than it ran (a finished one: no more).

    Otherwise the server would listen and wait for clients to train no round, or
    mark a run finished whose recorded count is below the rounds it holds. An
    asynchronous run's messages count updates, as its ``rounds`` does.
    """
    last = opened.last_round() or 0
    step = opened.step  # "update" for an asynchronous run
    if opened.info()["status"] == "finished" and rounds <= last:
        raise ValueError(
            f"the run in {opened.run_dir} is finished ({step} {last} was its last): there is "
            f"nothing to resume with rounds={rounds}; to train it on, resume it with more "
            f"{step}s than {last} (serve(rounds=...), covey server --rounds, covey run "
            f"--set rounds={last + 1} or more), or give a new run a folder of its own"
        )
    if rounds < last:
        raise ValueError(
            f"the run in {opened.run_dir} stopped after {step} {last}: it cannot be resumed "
            f"with rounds={rounds}, fewer {step}s than it ran; resume it with rounds={last} "
            "or more (serve(rounds=...), covey server --rounds), or give a new run a folder "
            "of its own"
        )


def check_writable(opened: RunStore) -> None:
    """Refuse to resume a run whose folder cannot be written, before listening.

    Each round's model is saved in the folder's ``weights``: a run resumed in a
    folder made read-only would take clients and train a whole round before its
    first save failed. A file is created and removed in each, as the check
    (permissions alone do not say: an immutable folder refuses its owner too).
    """
    for folder in (opened.run_dir, opened.run_dir / WEIGHTS_DIR):
        if not folder.is_dir():
            continue  # the store makes it when it saves
        try:
            fd, probe = tempfile.mkstemp(prefix=".covey-write-check-", dir=folder)
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            raise OSError(
                f"the run in {opened.run_dir} cannot be resumed: {folder} cannot be written "
                f"({exc.strerror or exc}), and each round's model is saved there"
            ) from None


def check_settings(
    rounds: int,
    round_timeout: float | None,
    wait_timeout: float | None,
    heartbeat: float,
    round_retries: int = 0,
) -> None:
    """Refuse numbers that would end a run at once or never (a NaN wait waits forever)."""
    for name, count in (("rounds", rounds), ("round_retries", round_retries)):
        if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= MAX_ROUNDS:
            raise ValueError(f"{name} must be an int from 0 to {MAX_ROUNDS:,}, got {count!r}")
    for name, value in (
        ("round_timeout", round_timeout),
        ("wait_timeout", wait_timeout),
        ("heartbeat", heartbeat),
    ):
        if value is None and name != "heartbeat":
            continue
        given: object = value  # typed a float, given an int: 10**400 is no float
        if isinstance(given, int) and not fits_a_float(given):
            raise ValueError(
                f"{name} must be a number of seconds above 0, got an int of "
                f"{given.bit_length()} bits, too large for a float"
            )
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not (math.isfinite(value) and value > 0)
        ):
            raise ValueError(f"{name} must be a number of seconds above 0, got {value!r}")
    check_heartbeat(heartbeat)  # within what a client takes


def check_capacity(strategy: Strategy, max_clients: int) -> None:
    """Refuse a client cap that is no count, or below what the strategy waits for.

    Otherwise the server would turn away as full the very clients its rounds wait
    for, and stop after ``wait_timeout`` (or wait forever) blaming them for not coming.
    """
    if isinstance(max_clients, bool) or not isinstance(max_clients, int) or max_clients < 1:
        raise ValueError(f"max_clients must be a whole number above 0, got {max_clients!r}")
    waits = (strategy.min_available_clients, strategy.min_fit_clients)
    if not strategy.asynchronous and waits == (0, 0):
        raise ValueError(
            "min_available_clients=0 and min_fit_clients=0: each round would start with no "
            "client connected and train none, and the run finish having trained nothing; "
            "raise min_available_clients (or min_fit_clients) to 1 or more"
        )
    # First: a robust preset waits for its rule's need, and lowering that would not help.
    _refuse_unmet_need(strategy, max_clients)
    warn_of_an_unreached_m(strategy, max_clients, "max_clients")
    wanted = {"min_available_clients": strategy.min_available_clients}
    if not strategy.asynchronous:  # a synchronous round waits for its fit clients too
        wanted["min_fit_clients"] = strategy.min_fit_clients
    name, most = max(wanted.items(), key=lambda item: item[1])
    if most > max_clients:
        raise ValueError(
            f"the strategy waits for {most} clients connected at once ({name}={most}) but "
            f"the server takes at most max_clients={max_clients}: raise it "
            f"(serve(max_clients=...), covey server --max-clients) or lower {name}"
        )
    _warn_of_short_minimums(strategy)
    _warn_of_a_buffer_above_capacity(strategy, max_clients)


def check_retries(strategy: Strategy, round_retries: int) -> None:
    """Refuse ``round_retries`` for an asynchronous strategy, which has no round to run again.

    It used to be taken and ignored: a FedBuff run waits for clients gone to come
    back (up to ``wait_timeout``) on its own.
    """
    if round_retries and strategy.asynchronous:
        raise ValueError(
            f"round_retries={round_retries} runs a synchronous round again, but "
            f"{strategy.name} is asynchronous (buffer_size={strategy.buffer_size}): it has "
            "no round to run again, and waits up to wait_timeout for clients gone to come "
            "back on its own; leave round_retries (covey server --round-retries) at 0"
        )


def _warn_of_a_buffer_above_capacity(strategy: Strategy, max_clients: int) -> None:
    """Warn if an update needs more distinct clients than the server takes at once.

    Not refused: a client whose reply waits in the buffer may leave and another
    take its place. Without such turnover the run stops when every connected
    client waits in the buffer ("no client can be given a task").
    """
    if strategy.buffer_size is None or strategy.buffer_size <= max_clients:
        return
    logger.warning(
        "%s's buffer_size=%d exceeds max_clients=%d: an update needs that many distinct "
        "clients' replies, more than the server takes at once, so it fills only if clients "
        "whose replies wait in the buffer leave and others take their places; raise "
        "max_clients (covey server --max-clients) or lower buffer_size",
        strategy.name,
        strategy.buffer_size,
        max_clients,
    )


def _refuse_unmet_need(strategy: Strategy, max_clients: int) -> None:
    """Refuse a rule that no round (or update) can satisfy, even with ``max_clients`` connected."""
    refuse_unmet_need(
        strategy,
        max_clients,
        limit="max_clients",
        samples="a round samples at most",
        advice="raise max_clients or fraction_fit",
    )


def _warn_of_short_minimums(strategy: Strategy) -> None:
    """Warn if a round may start with too few clients connected for the rule to run.

    A round waits for the strategy's minimums connected and samples at least the
    rule's need when that many are there; if the minimums are below the need, a
    round may start with fewer, train none and keep the model. More clients joining
    may still fix it: a warning, not a refusal. The robust presets wait for their
    need by default.
    """
    least = max(strategy.min_available_clients, strategy.min_fit_clients, 1)
    unmet = unmet_rule_need(strategy, least)
    if unmet is None:
        return
    logger.warning(
        "%s: %s clients per round, but a round may start with the %d clients it waits for "
        "(min_available_clients=%d, min_fit_clients=%d), too few: it then trains none and "
        "leaves the model unchanged; raise min_available_clients to %d",
        strategy.name,
        unmet[1],
        least,
        strategy.min_available_clients,
        strategy.min_fit_clients,
        unmet[0],
    )


def served_scheme(
    compression: Scheme | str | None, opened: RunStore | None, strategy: Strategy
) -> Scheme | None:
    """The run's compression: ``compression``, else a resumed run's own.

    Raises:
        ValueError: an unknown scheme, or one that does not apply to ``strategy``.
    """
    scheme = run_scheme(compression, None if opened is None else opened.config)
    check_applies(scheme, strategy)
    return scheme


def kept_last(keep_last: int | None, opened: RunStore | None) -> int | None:
    """How many rounds keep their weights file: ``keep_last``, else a resumed run's own.

    A run started with ``--keep-last 5`` and resumed after a crash without it
    goes on pruning to five, rather than keeping every round's file from then on.
    A recorded value that is not a valid ``keep_last`` (a hand-edited file) keeps
    every round: nothing is deleted on a guess.

    Raises:
        ValueError: ``keep_last`` is neither None nor a whole number of 1 or more.
    """
    check_keep_last(keep_last)
    if keep_last is not None or opened is None:
        return keep_last
    recorded = opened.config.get("keep_last")
    try:
        check_keep_last(recorded)
    except ValueError:
        logger.warning(
            "the run's recorded keep_last %r is not valid: every round is kept", recorded
        )
        return None
    return recorded


def record_keep_last(store: RunStore | None, config: dict[str, Any], keep_last: int | None) -> None:
    """Record ``keep_last`` in the run's settings (``covey runs show`` and a resume read it)."""
    config["keep_last"] = keep_last
    if store is not None:
        store.update_config({"keep_last": keep_last})


def record_tls(opened: RunStore | None, run: Any, tls: object) -> None:
    """Record whether the run is served with TLS; warn if a resume drops the TLS it had.

    Args:
        opened: The run resumed, if any (its settings say how it was served).
        run: The run as opened (its ``store`` and ``config``).
        tls: The server's TLS material, None for ``insecure``.
    """
    served = tls is not None
    if opened is not None and not served and opened.config.get("tls") is True:
        logger.warning(
            "the run in %s was served with TLS and now goes on WITHOUT it: the model and "
            "its clients' updates travel in the clear from this round on",
            opened.run_dir,
        )
    run.config["tls"] = served
    if run.store is not None:
        run.store.update_config({"tls": served})
