"""``python -m covey ...`` processes started by a test, each logging to a file of its folder."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _childenv import apps_env, child_pythonpath


class CoveyProcesses:
    """Starts covey commands in ``tmp`` with ``env``; :meth:`close` kills what still runs."""

    def __init__(self, tmp: Path, env: dict[str, str]) -> None:
        self.tmp = tmp
        self.env = env
        self.procs: list[subprocess.Popen[bytes]] = []

    def _spawn(self, args: list[str], log: str) -> subprocess.Popen[bytes]:
        out = open(self.tmp / log, "ab")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(
            [sys.executable, "-m", "covey", *args],
            env=self.env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=self.tmp,
        )
        out.close()
        self.procs.append(proc)
        return proc

    def log(self, name: str) -> str:
        """The output of one of the processes."""
        path = self.tmp / name
        return path.read_text(errors="replace") if path.exists() else ""

    def close(self) -> None:
        """Kill whatever is still running of what was started."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)


STAMP = r"(?:\d{4}-\d\d-\d\d \d\d:\d\d:\d\d[+-]\d{4}|\d\d:\d\d:\d\d) "
"""The time each line of a served run begins with: ``15:43:07 `` on a terminal, else dated."""

DATED_STAMP = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d[+-]\d{4} "
"""The time a line begins with outside a terminal (a file): ``2026-12-07 15:43:07+0000 ``."""


def undated(text: str) -> str:
    """``text`` without the time (and date) that each line of a served run begins with."""
    return re.sub(f"(?m)^{STAMP}", "", text)


COVEY_TAKING_CTRL_C = [
    sys.executable,
    "-c",
    "import runpy, signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "runpy.run_module('covey', run_name='__main__', alter_sys=True)",
]
"""``python -m covey`` taking SIGINT as Ctrl-C even when started with it ignored.

A background job of a shell without job control (a CI script's ``&``) starts with
SIGINT ignored, and its children inherit that. Resetting it in ``preexec_fn``
runs Python between fork and exec, which can hang there on a lock another
thread of the test process (gRPC's) held at the fork.
"""


IGNORING_SIGINT = (
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_IGN); "
    "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])"
)
"""``python -c IGNORING_SIGINT ARGS`` runs ``python ARGS`` started with SIGINT ignored, as a
non-interactive shell starts its background jobs (``covey server ... &`` in a script)."""


def interrupt_tiny_server(
    tmp: Path, sig: signal.Signals, *, ignoring_sigint: bool = False
) -> tuple[int, str, Path]:
    """Start ``covey server`` of ``tests/apps/tiny_app``, send ``sig`` once it listens.

    ``ignoring_sigint`` starts it with SIGINT ignored (:data:`IGNORING_SIGINT`).
    Returns its exit code, its standard error and its run folder.
    """
    env = apps_env()
    port_file, run = tmp / "port", tmp / "run"
    wrapper = ("-c", IGNORING_SIGINT) if ignoring_sigint else ()
    server = subprocess.Popen(
        [
            *(sys.executable, *wrapper, "-m", "covey", "server", "--app", "tiny_app:server_app"),
            *("--insecure", "--address", "127.0.0.1:0", "--port-file", str(port_file)),
            *("--run-dir", str(run), "--wait-timeout", "60", "--no-plot"),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not port_file.exists() and server.poll() is None:
            assert time.monotonic() < deadline, "the server never listened"
            time.sleep(0.05)
        assert port_file.exists(), server.communicate(timeout=10)
        server.send_signal(sig)
        _, err = server.communicate(timeout=60)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(10)
    return server.returncode, err, run


def python_json(code: str, *args: str) -> Any:
    """Run ``python -c code args`` with this test's imports and return the JSON it prints.

    For what a test must not do in its own process (lower a resource limit, read
    a folder as a child would). A failing child fails the test with its stderr.
    """
    child = subprocess.run(
        [sys.executable, "-c", code, *args],
        env={**os.environ, "PYTHONPATH": child_pythonpath(base=os.pathsep.join(sys.path))},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert child.returncode == 0, child.stderr
    return json.loads(child.stdout)


def run_one_round(project: Path) -> subprocess.CompletedProcess[str]:
    """``covey run PROJECT --set rounds=1`` in a terminal 200 columns wide, output kept."""
    return subprocess.run(
        [sys.executable, "-m", "covey", "run", str(project), "--set", "rounds=1"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "COLUMNS": "200"},
    )


def until_listening(server: subprocess.Popen[str], port_file: Path) -> str:
    """The port ``server`` writes to ``port_file`` once it listens (60 s at most)."""
    for _ in range(600):
        if port_file.is_file() and port_file.read_text().strip():
            return port_file.read_text().strip()
        assert server.poll() is None, server.communicate()[0]
        time.sleep(0.1)
    raise AssertionError("the server did not listen")


def serve_project(
    root: Path,
    command: list[str],
    port_file: Path,
    client_app: str,
    env: dict[str, str],
    *,
    clients: int = 2,
    timeout: float = 120,
) -> tuple[int, str]:
    """Run ``covey COMMAND`` (a served project) in ``root`` with ``clients`` ``covey client``.

    Once the server writes its port to ``port_file``, clients ``0`` to
    ``clients - 1`` (named ``site-K``) join it with ``--app client_app``. Waits
    for the server to end; whatever still runs then is killed.

    Returns:
        The server's exit code and its output (stdout and stderr).
    """
    server = subprocess.Popen(
        [sys.executable, "-m", "covey", *command],
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    procs = [server]
    try:
        port = until_listening(server, port_file)
        for k in range(clients):
            client = [sys.executable, "-m", "covey", "client", "--insecure", "--cid", str(k)]
            client += ["--app", client_app, "--name", f"site-{k}"]
            client += ["--server", f"127.0.0.1:{port}"]
            procs.append(
                subprocess.Popen(
                    client,
                    cwd=root,
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                )
            )
        out = server.communicate(timeout=timeout)[0]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.communicate(timeout=30)
    return server.returncode, out


def killed_script(script: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    """Run the Python ``script`` with ``args``, which is to SIGKILL itself; its outcome.

    The child imports covey as this test run does (its ``sys.path``).
    """
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    killed = subprocess.run(
        [sys.executable, str(script), *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    return killed


def killed_then_resumed(
    tmp_path: Path, script_text: str, module: str, prefix: str, *, saved: int | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run ``script_text`` until it SIGKILLs itself, resume its run; the same as one never stopped.

    The script's ``run(run_dir, state_dir, resume)`` runs three clients that keep their
    state in ``state_dir`` as ``<prefix><cid>.bin``; run as a script, it starts a run in
    its first argument and kills itself once every client's file is written. The run
    resumed from those files must end bit for bit where a run never stopped ends.

    Given ``saved``, the killed run's last saved round must be that one.

    Returns:
        The script's namespace (its ``run`` and helpers) and the unstopped run's weights.
    """
    import numpy as np

    from covey.server._store import RunStore

    script = tmp_path / f"{module}.py"
    script.write_text(script_text)
    (tmp_path / "killed").mkdir()
    killed_script(script, tmp_path / "run", tmp_path / "killed")
    kept = sorted(p.name for p in (tmp_path / "killed").glob(f"{prefix}*.bin"))
    assert kept == [f"{prefix}{cid}.bin" for cid in range(3)]
    if saved is not None:
        with RunStore.open(tmp_path / "run") as store:
            assert store.last_round() == saved
    namespace: dict[str, Any] = {"__name__": module}
    exec(compile(script_text, str(script), "exec"), namespace)  # the same clients, not killed
    run = namespace["run"]
    (tmp_path / "whole").mkdir()
    whole = dict(run(tmp_path / "whole_run", tmp_path / "whole", False).weights)
    resumed = dict(run(tmp_path / "run", tmp_path / "killed", True).weights)
    for name, value in whole.items():
        np.testing.assert_array_equal(resumed[name], value)
    return namespace, whole


def site_answers(
    transport: Any, command: list[str], sql: str, cwd: Path
) -> tuple[Any, str, int | None]:
    """Run ``covey site`` (``command``) until it joins ``transport``, ask it ``sql``, close.

    Returns the answer (None if the site never joined), the site's output and its
    exit status; a site still running a minute after the close is killed.
    """
    from covey.analytics import query

    site = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=cwd
    )
    answer = None
    try:
        if transport.wait_for_clients(1, 60):
            answer = query(transport, sql, secure=False, timeout=60)
    finally:
        transport.close("the query is answered")
        try:
            out, _ = site.communicate(timeout=60)
        finally:
            if site.poll() is None:
                site.kill()
                site.wait(timeout=30)
    return answer, out, site.returncode
