"""The server's side of a query: ask the sites, check their answers, sum them.

Sites are reached through any :class:`~covey.transport.Transport`: Site
objects in this process (simulation) or a gRPC server that sites joined.
"""

from __future__ import annotations

import itertools
import logging
import math
import re
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from covey import secagg
from covey.analytics._compute import shape
from covey.analytics._fixedpoint import low_bits
from covey.analytics._overflow import overflow_message
from covey.analytics._policy import PolicyError
from covey.analytics._readers import clip_columns
from covey.analytics._site import SECURE_INPUT, TASK_KIND, Site
from covey.analytics._sql import plan
from covey.clients import run_task
from covey.clients._client import not_an_exception
from covey.core import Reply, Task
from covey.transport import MemoryTransport, Transport

logger = logging.getLogger("covey")

MAX_SITE_REPLY_CELLS = 50_000_000
MAX_COUNT = 1 << 53
"""The largest count a site may report (rows, clipped values, groups): exact in float64."""
COUNT_OPS = ("count", "count_col", "bins")
DEFAULT_THREAT = secagg.ThreatModel(corrupt_rate=0.05, dropout_rate=0.0)
COMPLETE_UP_TO = 20
"""Up to this many sites, secure aggregation pairs every site with every other (SecAgg)."""


# how a site's refusal in a secure stage reaches the server: its masking task's error
_REFUSAL = re.compile(r"^(?:[\w.]+\.)?(?:PolicyError|QueryError|PermissionError): (.+)$", re.S)


class FederationQueryError(RuntimeError):
    """Sites failed or answered inconsistently while a query ran."""


def transport_for(sites_or_server: Any) -> tuple[Transport, bool]:
    """A transport to the sites and whether this function made it (so must close it)."""
    if isinstance(sites_or_server, Site):
        sites_or_server = [sites_or_server]
    if isinstance(sites_or_server, Sequence) and not isinstance(sites_or_server, str):
        sites = list(sites_or_server)
        if not sites or not all(isinstance(s, Site) for s in sites):
            raise TypeError("query() takes a list of covey.analytics.Site or a transport")
        first: dict[int, int] = {}
        for i, site in enumerate(sites):
            j = first.setdefault(id(site), i)
            if j != i:  # it would answer twice: its rows counted twice, its budget spent twice
                raise ValueError(
                    f"query() was given the same Site twice (at positions {j} and {i}"
                    f", named {site.name!r}); each site answers once"
                )
        return _SiteTransport(sites), True
    if isinstance(sites_or_server, Transport):
        return sites_or_server, False
    raise TypeError(
        f"query() takes a list of covey.analytics.Site or a transport, "
        f"got {type(sites_or_server).__name__}"
    )


class _SiteTransport(MemoryTransport):
    """Sites in this process, reached by calls; one that fails is named as it names itself."""

    def __init__(self, sites: list[Site]) -> None:
        super().__init__(
            list(range(len(sites))), lambda cid, task: run_site_task(sites[cid], cid, task)
        )
        self._sites = sites

    def client_name(self, cid: int) -> str:
        """The name site ``cid`` was given (``Site(..., name=...)``)."""
        return str(self._sites[cid].name)


def run_site_task(site: Site, cid: int, task: Task) -> Reply:
    """:func:`run_task` for a site in this process, where what is no ``Exception`` fails it too.

    ``sys.exit()`` in a site's code (a subclass's) or a ``CancelledError`` it leaks
    fails that site alone, named in the answer, as a client fails alone in
    training; it does not end the analyst's ``query()``. Ctrl-C still stops it.
    """
    try:
        return run_task(site, cid, task)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # noqa: BLE001 - the site's, not this process's
        what = not_an_exception(exc)
        hint = f"covey: the site {what} in its {task.kind} task\n"
        return Reply(cid, task.kind, error=traceback.format_exc() + hint)


@dataclass
class StageResult:
    """The sum over sites of one stage's vectors, and what the sites reported."""

    vectors: list[np.ndarray]
    per_site: dict[int, list[np.ndarray]] = field(default_factory=dict)
    clipped: dict[str, int] = field(default_factory=dict)
    outside_domain: int = 0
    withheld_groups: int = 0
    cached: int = 0
    spent: dict[str, float] = field(default_factory=dict)


class Federation:
    """The sites of one query: who answers, their declarations, and the stages run.

    Args:
        transport: How the sites are reached.
        timeout: Seconds to wait for the sites at each stage.
        threat: What secure aggregation withstands (default: 5% of sites colluding
            with the server, no dropout: a site that leaves stops the query).
    """

    def __init__(
        self,
        transport: Transport,
        timeout: float | None = None,
        threat: secagg.ThreatModel | None = None,
    ) -> None:
        self.transport = transport
        self.timeout = timeout
        self.threat = threat or DEFAULT_THREAT
        self.cids: list[int] = sorted(transport.clients())
        self.names: dict[int, str] = {}
        self.refused: dict[str, str] = {}
        self._rounds = itertools.count(1)

    def _exchange(self, payload: Mapping[str, Any], cids: Sequence[int]) -> dict[int, Any]:
        r = next(self._rounds)
        tasks = {cid: Task(TASK_KIND, r, payload=dict(payload)) for cid in cids}
        out: dict[int, Any] = {}
        for reply in self.transport.exchange(tasks, timeout=self.timeout):
            if reply.cid not in tasks or reply.cid in out:
                continue
            if reply.error is not None:
                last = reply.error.strip().splitlines()[-1] if reply.error.strip() else "error"
                out[reply.cid] = {"refused": f"the site failed: {last}"}
            elif not isinstance(reply.result, Mapping):
                out[reply.cid] = {"refused": "the site sent a malformed answer"}
            else:
                out[reply.cid] = reply.result
        return out

    def describe(self, request: Mapping[str, Any]) -> dict[int, dict[str, Any]]:
        """Ask every site whether it answers ``request`` and what it declares."""
        if not self.cids:
            gone = "; ".join(f"{n}: {r}" for n, r in self._left().items())
            raise FederationQueryError("no site is connected" + (f" ({gone})" if gone else ""))
        answers = self._exchange({**request, "op": "describe"}, self.cids)
        ok: dict[int, dict[str, Any]] = {}
        for cid in self.cids:
            got = answers.get(cid, {"refused": "the site did not answer in time"})
            name = str(got.get("site", self._transport_name(cid)))
            self.names[cid] = name if name not in self.names.values() else f"{name}#{cid}"
            if "refused" in got:
                self.refused[self.names[cid]] = str(got["refused"])
            else:
                ok[cid] = dict(got)
        left = self._left()
        self.refused.update(left)
        if not ok:
            reasons = "; ".join(f"{n}: {r}" for n, r in self.refused.items())
            raise PolicyError(f"no site answers this query ({reasons})")
        if self.refused:  # the answer covers only the others' rows: say so where it is asked
            logger.warning(
                "%d of %d sites answer this query; the answer leaves out the rows of %s",
                len(ok),
                len(self.cids) + len(left),
                "; ".join(f"{n} (refused: {r})" for n, r in self.refused.items()),
            )
        self.cids = sorted(ok)
        return ok

    def _left(self) -> dict[str, str]:
        """The sites that joined the transport and left before the query, named, with why.

        Each is named as the transport knows it (its certificate's name), as a site
        that never answers is; it is no part of the query, but is named in its
        ``refused``, so that a site missing from the answer is never silent.
        """
        lookup = getattr(self.transport, "left_clients", None)
        gone = lookup() if callable(lookup) else {}
        out: dict[str, str] = {}
        for cid, (name, why) in sorted(gone.items()):
            if cid in self.cids:  # back since
                continue
            name = str(name) or f"site-{cid}"
            if name in self.names.values() or name in out:
                name = f"{name}#{cid}"
            out[name] = f"the site left before the query ({why})"
        return out

    def _transport_name(self, cid: int) -> str:
        """What the transport calls site ``cid`` (its certificate's name), for a silent site."""
        lookup = getattr(self.transport, "client_name", None)
        name = lookup(cid) if callable(lookup) else None
        return str(name) if name else f"site-{cid}"

    def check_budgets(
        self,
        request: Mapping[str, Any],
        first: Mapping[str, Any],
        releases: int,
        fits: Callable[[list[Mapping[str, Any]]], str] = lambda refusals: "",
    ) -> list[str]:
        """Ask every answering site whether the DP query fits in its budget, before any stage.

        ``fits`` gives what to add to a refusal, from the refusing sites' answers (their
        ``refused`` text and the ``fits`` each budget says, :func:`~covey.analytics.
        _budget_fit.refusal`).

        Returns:
            The sites that will withhold their small groups: their policy does not
            accept the query's noise in place of its minimum group size.

        Raises:
            PolicyError: Naming each site that would refuse (nothing was charged).
        """
        payload = {**request, "op": "describe", "first": dict(first), "releases": releases}
        answers = self._exchange(payload, self.cids)
        late = {"refused": "the site did not answer in time"}
        short = {
            self.names[cid]: got
            for cid in self.cids
            if "refused" in (got := answers.get(cid, late))
        }
        if short:
            reasons = "; ".join(f"{n}: {r['refused']}" for n, r in short.items())
            raise PolicyError(
                f"the query is refused before any site answers it ({reasons})"
                f"{fits(list(short.values()))}"
            )
        return [self.names[c] for c in self.cids if answers[c].get("withholds") is not False]

    def spent(self, request: Mapping[str, Any]) -> dict[str, float]:
        """Each answering site's DP budget spent so far, as it declares it (after a query)."""
        answers = self._exchange({**request, "op": "describe"}, self.cids)
        return {
            self.names[cid]: float(got["spent"])
            for cid, got in answers.items()
            if cid in self.names and isinstance(got.get("spent"), int | float)
        }

    def stage(
        self, request: Mapping[str, Any], groups: int, *, keep_per_site: bool = False
    ) -> StageResult:
        """Run one stage on every answering site and sum the vectors (in site order)."""
        shapes = [shape(s, groups) for s in request["stats"]]
        if request.get("secure"):
            return self._secure_stage(request, shapes)
        answers = self._exchange({**request, "op": "answer"}, self.cids)
        result = StageResult([np.zeros(s) for s in shapes])
        for cid in self.cids:
            got = answers.get(cid)
            name = self.names[cid]
            if got is None or "refused" in got:
                why = "no answer in time" if got is None else got["refused"]
                raise FederationQueryError(f"{name} stopped answering mid-query: {why}")
            vectors = self._check(got, shapes, name)
            for i, (acc, v, stat) in enumerate(
                zip(result.vectors, vectors, request["stats"], strict=True)
            ):
                if stat["op"] not in ("min", "max"):
                    if not np.isfinite(v).all():
                        raise FederationQueryError(_non_finite(name, stat))
                    if stat["op"] in COUNT_OPS and not request.get("dp"):
                        _counts(v, name, stat["op"])
                    with np.errstate(over="ignore"):  # past float64: refused just below
                        result.vectors[i] = acc + v
                    if not np.isfinite(result.vectors[i]).all():
                        p = plan(str(request["sql"]))
                        raise FederationQueryError(overflow_message(p, stat, "across the sites"))
            if keep_per_site:
                result.per_site[cid] = vectors
            self._tally(result, got, name, clip_columns(request["stats"]))
        return result

    @staticmethod
    def _tally(
        result: StageResult, got: Mapping[str, Any], name: str, clip_cols: Sequence[str]
    ) -> None:
        """Add a site's clipped, outside and withheld counts and record its budget spent."""
        clipped = got.get("clipped", {})
        if not isinstance(clipped, Mapping):
            raise FederationQueryError(f"{name} answered a malformed clipped count")
        for col, n in clipped.items():
            if col not in clip_cols:
                raise FederationQueryError(
                    f"{name} answered a clipped count for {str(col)!r:.40}, which no "
                    "statistic of the query clips"
                )
            n = _count(n, name, f"clipped count of {col!r}")
            result.clipped[str(col)] = result.clipped.get(str(col), 0) + n
        result.outside_domain += _count(got.get("outside_domain", 0), name, "outside_domain")
        result.withheld_groups += _count(got.get("withheld_groups", 0), name, "withheld_groups")
        result.cached += bool(got.get("cached"))
        spent = got.get("spent", 0.0)
        if not _number(spent) or spent < 0:
            raise FederationQueryError(f"{name} answered a malformed budget spent: {spent!r:.40}")
        result.spent[name] = float(spent)

    def _secure_stage(
        self, request: Mapping[str, Any], shapes: list[tuple[int, ...]]
    ) -> StageResult:
        """One stage through secure aggregation: only the sum of the sites' vectors is seen."""
        if len(self.cids) < 2:
            refused = "; ".join(f"{n}: {r}" for n, r in self.refused.items())
            raise FederationQueryError(
                "secure aggregation needs at least two answering sites; pass secure=False "
                "(covey query --no-secure)" + (f" (refused: {refused})" if refused else "")
            )
        stats = request["stats"]
        limbs = [int(stat.get("limbs", 1)) for stat in stats]
        sizes = [int(np.prod(s)) * k for s, k in zip(shapes, limbs, strict=True)]
        tail = len(clip_columns(stats)) + 2
        try:
            out = secagg.secure_sum(
                self.transport,
                self.cids,
                round=next(self._rounds),
                input_kind=SECURE_INPUT,
                payload=dict(request, op="answer"),
                length=sum(sizes) + tail,
                bound=int(request["bound"]),
                timeout=self.timeout,
                threat=self.threat,
                complete=len(self.cids) <= COMPLETE_UP_TO or None,
                # the sum of fewer sites holds fewer noise shares than the query was
                # charged for, and no answer uses it: it is never unmasked
                min_survivors=len(self.cids),
                shortfall="and a query sums every answering site's: nothing was unmasked",
            )
        except secagg.SecAggAbort as exc:
            self._refused_mid_query(exc.dropped, f"secure aggregation stopped in stage {exc.stage}")
            why = "; ".join(f"{self.names.get(c, c)}: {w}" for c, w in sorted(exc.dropped.items()))
            raise FederationQueryError(
                f"secure aggregation stopped: {exc}"
                + (f" ({why})" if why else "")
                + _charged(request)
            ) from None
        for cid, what in sorted(out.suspects.items()):
            logger.warning("%s %s in secure aggregation", self.names.get(cid, cid), what)
        if out.dropped or out.excluded:
            gone = {**out.dropped, **out.excluded}
            self._refused_mid_query(gone, "secure aggregation went on without them")
            names = ", ".join(f"{self.names.get(c, c)} ({why})" for c, why in gone.items())
            raise FederationQueryError(f"sites left during secure aggregation: {names}")
        total = np.asarray(out.total, dtype=np.float64)
        result = StageResult([])
        start = 0
        for stat, size, dims, k in zip(stats, sizes, shapes, limbs, strict=True):
            part = total[start : start + size]
            if k == 2:  # the high limbs, then the low ones (see _fixedpoint.fixed_point)
                half = size // 2
                part = part[:half] + part[half:] / float(1 << low_bits(int(request["bound"])))
            result.vectors.append((part / float(stat.get("scale", 1.0))).reshape(dims))
            start += size
        for col in clip_columns(stats):
            result.clipped[col] = int(total[start])
            start += 1
        result.outside_domain = int(total[start])
        result.withheld_groups = int(total[start + 1])
        return result

    def _refused_mid_query(self, why: Mapping[int, str], then: str) -> None:
        """Raise with the reasons of the sites that refused a secure stage, if any did.

        A site's refusal (its policy, the SQL, its budget) reaches the server as the
        error of its masking task, ``module.PolicyError: reason``: the analyst reads
        the reason, as without secure aggregation, not the protocol's summary first.
        """
        refusals: dict[str, list[str]] = {}
        for cid, text in sorted(why.items()):
            found = _REFUSAL.match(text)
            if found:
                refusals.setdefault(found.group(1), []).append(str(self.names.get(cid, cid)))
        if refusals:
            reasons = "; ".join(
                f"{', '.join(names)} stopped answering mid-query: {reason}"
                for reason, names in refusals.items()
            )
            raise FederationQueryError(f"{reasons} ({then})")

    @staticmethod
    def _check(
        got: Mapping[str, Any], shapes: list[tuple[int, ...]], name: str
    ) -> list[np.ndarray]:
        raw = got.get("vectors")
        if not isinstance(raw, list) or len(raw) != len(shapes):
            raise FederationQueryError(
                f"{name} answered {type(raw).__name__}, not {len(shapes)} vectors"
            )
        out = []
        for v, s in zip(raw, shapes, strict=True):
            try:
                arr = np.asarray(v)
            except (ValueError, TypeError):  # ragged nesting: no vector at all
                raise FederationQueryError(
                    f"{name} answered a vector that is no array of numbers"
                ) from None
            if (
                arr.dtype.kind not in "iuf"
                or arr.size != int(np.prod(s))
                or arr.size > MAX_SITE_REPLY_CELLS
            ):
                raise FederationQueryError(
                    f"{name} answered a vector of {arr.size} {arr.dtype} values where "
                    f"{int(np.prod(s))} numbers were expected"
                )
            out.append(arr.astype(np.float64).reshape(s))
        return out


def _charged(request: Mapping[str, Any]) -> str:
    """What a stopped secure DP stage cost: the sites that answered it charged their budgets."""
    if not request.get("dp"):
        return ""
    return (
        "; the sites that computed their answer charged it to their DP budgets (as did an "
        "analyst's budget the query was charged to): asked again of the same sites, the "
        "query is answered from their caches at no further cost"
    )


def _non_finite(name: str, stat: Mapping[str, Any]) -> str:
    """Why site ``name`` answered NaN or inf for ``stat``: a faulty site, or a sum past float64.

    No honest site counts NaN or inf, but a sum of values (or of their squared
    deviations) over its own rows passes the largest float64 when bounds let
    them be as large: the server cannot tell which, so it names both.
    """
    said = f"{name} answered non-finite values (NaN or inf) for its {stat['op']} statistic"
    if stat["op"] not in ("sum", "sq"):
        return said
    col = stat.get("col")
    what = "values" if stat["op"] == "sum" else "squared deviations"
    return (
        f"{said} of {col!r}: either the {what} over its rows add up past the largest "
        f"float64 (the bounds of {col!r} let them; declare bounds nearer the values) or "
        "the site is faulty"
    )


def _number(value: Any) -> bool:
    """Whether ``value`` is a finite int or float (not a bool); an int of any size is finite."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return isinstance(value, int) or math.isfinite(value)


def _count(value: Any, name: str, what: str = "count") -> int:
    """A count a site reported beside its vectors, or FederationQueryError naming the site.

    A whole number from 0 to :data:`MAX_COUNT` (no site holds more rows).
    """
    if not _number(value) or not 0 <= value <= MAX_COUNT or value != int(value):
        raise FederationQueryError(f"{name} answered a malformed {what}: {value!r:.40}")
    return int(value)


def _counts(v: np.ndarray, name: str, op: str) -> None:
    """Refuse a noiseless count vector that is not whole numbers from 0 to MAX_COUNT."""
    if v.size and not (
        np.all(v >= 0) and np.all(v <= MAX_COUNT) and np.array_equal(v, np.floor(v))
    ):
        raise FederationQueryError(
            f"{name} answered {op} values that are not whole numbers from 0 to {MAX_COUNT} "
            "in a query without noise"
        )
