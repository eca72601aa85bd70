"""Starting or joining the Ray a run uses; a local Ray started here is watched.

A local Ray started for a run ends with the process that started it, even one
killed with SIGKILL: Ray ties most of its processes to it, and on Linux a
watchdog (:mod:`covey.sim._raywatch`) ends the others.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Mapping
from typing import Any

from covey.core._extras import MissingExtraError
from covey.sim._rayplan import check_joined, check_reachable
from covey.sim._raywatch import watch

logger = logging.getLogger("covey")


def ray_module(local: bool = False) -> Any:
    """The ``ray`` module, or a clear error naming the extra that installs it."""
    if local and "ray" not in sys.modules:
        # A Ray started here serves only this machine: no multi-node cluster on
        # Windows or macOS, where Ray then binds to loopback (Ray reads this when
        # imported). On Linux Ray's servers listen on every interface regardless.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    try:
        import ray
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise MissingExtraError("backend='ray' needs Ray: pip install 'covey[ray]'") from exc
    return ray


def start_or_join(ray: Any, address: str | None, init_args: Mapping[str, Any] | None) -> bool:
    """Start or join a Ray unless this process has one already; whether it did."""
    if ray.is_initialized():
        if address is not None:
            check_joined(address, str(ray.get_runtime_context().gcs_address))
        return False
    if address is not None:
        check_reachable(address)
    # "local" starts a new Ray: None would join any Ray already running here.
    kwargs: dict[str, Any] = {
        "address": address if address is not None else "local",
        "include_dashboard": False,
        "log_to_driver": True,
    }
    kwargs.update(init_args or {})
    ray.init(**kwargs)
    return True


def watch_local(ray: Any) -> subprocess.Popen[bytes] | None:
    """Start the watchdog that ends the local Ray this process started if it dies.

    None where there is none: not on Linux, or a Ray that does not say its session
    folder (Ray's own ties to this process then end most of its processes).
    """
    try:
        session = str(ray._private.worker._global_node.get_session_dir_path())
    except Exception:  # noqa: BLE001 - another Ray's internals: watched as Ray watches it
        return None
    try:
        return watch(session)
    except OSError as exc:  # no process can be started: the run goes on
        logger.warning("could not start the watchdog of the local Ray %s: %s", session, exc)
        return None
