"""Sample the memory of a whole process tree from ``/proc`` (Linux only).

The tree of a started process is every live descendant of this process (which
makes itself a child subreaper, so that daemonized grandchildren are reparented
to it and stay in view) plus every process in the started process's session.
Its memory is the sum of PSS (``/proc/<pid>/smaps_rollup``) over the tree, so
that pages shared between processes (Ray workers, forked pools) count once;
where PSS cannot be read, RSS (``/proc/<pid>/status``) is used and the sampler
counts it. See :class:`TreeSampler` for how often PSS is read.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import threading
import time
from dataclasses import dataclass, field

PR_SET_CHILD_SUBREAPER = 36
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


def become_subreaper() -> bool:
    """Make this process adopt orphaned descendants (instead of init). True on success."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


@dataclass(frozen=True)
class ProcInfo:
    pid: int
    ppid: int
    sid: int
    state: str
    comm: str
    cpu_ticks: int  # utime + stime, in clock ticks


def _read_stat(pid: int) -> ProcInfo | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    lpar, rpar = data.find(b"("), data.rfind(b")")
    fields = data[rpar + 2 :].split()
    if lpar < 0 or rpar < 0 or len(fields) < 13:
        return None
    return ProcInfo(
        pid=pid,
        ppid=int(fields[1]),
        sid=int(fields[3]),
        state=fields[0].decode(),
        comm=data[lpar + 1 : rpar].decode(errors="replace"),
        cpu_ticks=int(fields[11]) + int(fields[12]),
    )


def all_processes() -> dict[int, ProcInfo]:
    procs: dict[int, ProcInfo] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            info = _read_stat(int(name))
            if info is not None:
                procs[info.pid] = info
    return procs


def tree(root_sid: int | None, ancestor: int | None = None) -> list[ProcInfo]:
    """Live processes below ``ancestor`` (default: this process) or in session ``root_sid``."""
    me = os.getpid() if ancestor is None else ancestor
    procs = all_processes()
    children: dict[int, list[int]] = {}
    for p in procs.values():
        children.setdefault(p.ppid, []).append(p.pid)
    found: set[int] = set()
    stack = list(children.get(me, []))
    while stack:
        pid = stack.pop()
        if pid in found:
            continue
        found.add(pid)
        stack.extend(children.get(pid, []))
    if root_sid is not None:
        found.update(p.pid for p in procs.values() if p.sid == root_sid and p.pid != me)
    return [procs[pid] for pid in sorted(found) if procs[pid].state not in ("Z", "X")]


def memory_kb(pid: int) -> tuple[int, int, bool] | None:
    """``(pss_kb, rss_kb, pss_is_real)`` of one process, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
            text = f.read()
        pss = rss = None
        for line in text.splitlines():
            if line.startswith(b"Pss:"):
                pss = int(line.split()[1])
            elif line.startswith(b"Rss:"):
                rss = int(line.split()[1])
        if pss is not None and rss is not None:
            return pss, rss, True
    except OSError:
        pass
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmRSS:"):
                    rss = int(line.split()[1])
                    return rss, rss, False
    except OSError:
        return None
    return None  # a kernel thread or a zombie: no memory of its own


def statm_kb(pid: int) -> tuple[int, int] | None:
    """``(rss_kb, private_kb)`` from ``/proc/<pid>/statm``: cheap (no page-table walk).

    ``private`` is resident minus resident file-backed and shared-memory pages,
    i.e. the anonymous memory (arrays, heap) of the process.
    """
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            fields = f.read().split()
    except OSError:
        return None
    if len(fields) < 3:
        return None
    rss, shared = int(fields[1]) * PAGE_KB, int(fields[2]) * PAGE_KB
    return rss, rss - shared


@dataclass
class Sample:
    t: float
    pss_kb: int  # exact where ``exact``, else estimated (see TreeSampler)
    rss_kb: int
    nprocs: int
    exact: bool


@dataclass
class TreeSampler:
    """Samples a process tree's memory in a background thread.

    Every ``interval`` seconds it lists the tree and reads each process's RSS from
    ``statm`` (cheap). PSS comes from ``smaps_rollup``, which walks page tables
    and costs tens of milliseconds for a tree of big processes (Ray): it is read
    on every tick while that costs at most ``max_duty`` of one core, and less
    often otherwise (``interval`` stretched to ``cost / max_duty``), so that the
    sampler does not steal the CPU it measures. Between two exact reads a
    process's PSS is estimated as its PSS at the last exact read plus the
    change of its anonymous memory since (``statm``: resident - shared): new
    arrays count in full, file-backed pages (libraries) and sharing stay as
    last seen. Whenever a process joins or leaves the tree, every process is
    read exactly (sharing changes on fork and exit).
    """

    root_sid: int | None
    interval: float = 0.05
    max_duty: float = 0.10
    samples: list[Sample] = field(default_factory=list)
    peak_kb: int = 0
    peak_exact_kb: int = 0
    peak_breakdown: list[tuple[int, str, int]] = field(default_factory=list)
    max_nprocs: int = 0
    pss_fallbacks: int = 0
    sample_seconds: float = 0.0
    exact_ticks: int = 0
    _pss_interval: float = 0.0
    _last_exact: float = float("-inf")
    _last_exact_kb: dict[int, tuple[int, int]] = field(default_factory=dict)
    _cpu_ticks: dict[int, int] = field(default_factory=dict)
    _pids: set[int] = field(default_factory=set)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def sample_once(self) -> Sample:
        t0 = time.perf_counter()
        t = time.time()
        procs = tree(self.root_sid)
        pids = {p.pid for p in procs}
        # A process that starts (fork) or ends changes how pages are shared, and so
        # everyone's PSS: re-read all exactly then rather than estimate.
        exact_tick = t0 - self._last_exact >= self._pss_interval or pids != self._pids
        self._pids = pids
        pss_total = rss_total = 0
        all_exact = True
        breakdown: list[tuple[int, str, int]] = []
        for p in procs:
            self._cpu_ticks[p.pid] = p.cpu_ticks
            statm = statm_kb(p.pid)
            if statm is None or statm[0] == 0:
                continue  # gone, a zombie or a kernel thread
            rss, private = statm
            if exact_tick or p.pid not in self._last_exact_kb:
                mem = memory_kb(p.pid)
                if mem is None:
                    continue
                pss, _, real = mem
                if not real:
                    self.pss_fallbacks += 1
                self._last_exact_kb[p.pid] = (pss, private)
            else:
                pss0, private0 = self._last_exact_kb[p.pid]
                pss = max(0, pss0 + private - private0)
                all_exact = False
            pss_total += pss
            rss_total += rss
            breakdown.append((p.pid, p.comm, pss))
        s = Sample(t, pss_total, rss_total, len(breakdown), all_exact)
        self.samples.append(s)
        if pss_total > self.peak_kb:
            self.peak_kb = pss_total
            self.peak_breakdown = sorted(breakdown, key=lambda x: -x[2])
        if all_exact:
            self.peak_exact_kb = max(self.peak_exact_kb, pss_total)
        self.max_nprocs = max(self.max_nprocs, len(breakdown))
        cost = time.perf_counter() - t0
        if exact_tick:
            self.exact_ticks += 1
            self._last_exact = t0
            self._pss_interval = max(self.interval, cost / self.max_duty)
        self.sample_seconds += cost
        return s

    def _run(self) -> None:
        while not self._stop.is_set():
            t0 = time.perf_counter()
            self.sample_once()
            self._stop.wait(max(0.0, self.interval - (time.perf_counter() - t0)))

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="tree-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    # --- queries over the recorded samples ---------------------------------

    @property
    def cpu_seconds_seen(self) -> float:
        """CPU time of every process of the tree, as last sampled (a lower bound)."""
        return sum(self._cpu_ticks.values()) / os.sysconf("SC_CLK_TCK")

    def peak_between(self, t0: float, t1: float) -> int | None:
        vals = [s.pss_kb for s in self.samples if t0 <= s.t <= t1]
        return max(vals) if vals else None

    def last_before(self, t: float) -> Sample | None:
        before = [s for s in self.samples if s.t <= t]
        return before[-1] if before else None


def kill_tree(root_sid: int | None, grace: float = 5.0) -> list[str]:
    """SIGTERM, then SIGKILL after ``grace`` s, every process of the tree; return their names."""
    names: list[str] = []
    procs = tree(root_sid)
    for p in procs:
        names.append(f"{p.comm}[{p.pid}]")
        with contextlib.suppress(ProcessLookupError):
            os.kill(p.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while procs and time.monotonic() < deadline:
        time.sleep(0.1)
        reap_zombies()
        procs = tree(root_sid)
    for p in procs:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p.pid, signal.SIGKILL)
    reap_zombies()
    return names


def reap_zombies() -> None:
    """Collect exit statuses of adopted orphans (we are a subreaper)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
