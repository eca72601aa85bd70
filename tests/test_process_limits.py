"""The process backend under a low open-files limit: a clear error, no worker left running."""

from __future__ import annotations

from _procs import python_json

_POOL = """
import json, multiprocessing, os, resource
import numpy as np
import covey

open_now = len(os.listdir("/proc/self/fd"))
hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
resource.setrlimit(resource.RLIMIT_NOFILE, (open_now + 12, hard))  # room for about 5 workers
said = {}
try:
    covey.simulate(lambda cid: covey.Client(), 40, 1, covey.FedAvg(), {"w": np.zeros(2)},
                   backend="process", num_workers=40)
    said["error"] = None
except OSError as exc:
    said["error"] = str(exc)
said["children"] = len(multiprocessing.active_children())
said["shm"] = [f for f in os.listdir("/dev/shm") if f.startswith(f"covey-{os.getpid()}-")]
print(json.dumps(said))
"""


def test_too_few_open_files_for_the_workers_is_named_and_stops_them() -> None:
    said = python_json(_POOL)
    assert said["error"].startswith("[Errno 24] cannot start worker ")
    assert "of num_workers=40: Too many open files; this process may open " in said["error"]
    assert said["children"] == 0
    assert said["shm"] == []
