"""Task kinds: covey's own cannot be replaced by register_task; a user's kind can be again."""

from __future__ import annotations

import importlib
import subprocess
import sys
from typing import Any

import numpy as np
import pytest

import covey
import covey.clients._client as client_module
from covey.core import Task
from covey.sim._simulate import StartMethod


@pytest.mark.parametrize(
    "kind",
    ["fit", "fit_compressed", "secagg.mask", "secagg.unmask", "analyze"],
)
def test_covey_s_own_task_kinds_cannot_be_replaced(
    kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import covey.compress
    import covey.secagg

    client_module.task_kinds()  # covey's own registered in the dict kept after the test
    monkeypatch.setattr(client_module, "_HANDLERS", dict(client_module._HANDLERS))
    before = dict(client_module._HANDLERS)
    with pytest.raises(ValueError, match=rf"task kind '{kind}' is built in \(covey"):
        covey.clients.register_task(kind, lambda client, task: None)
    assert before == client_module._HANDLERS
    covey.clients.register_task("mine", lambda client, task: 1)
    covey.clients.register_task("mine", lambda client, task: 2)  # a user's kind, again
    assert covey.clients.run_task(covey.Client(), 0, Task("mine", 0)).result == 2


def test_covey_s_own_secure_inputs_cannot_be_replaced() -> None:
    from covey.secagg import register_input, register_task_input
    from covey.secagg._handlers import _INPUTS
    from covey.secagg._secure import FIT_INPUT

    kept = _INPUTS[FIT_INPUT]
    with pytest.raises(ValueError, match="covey's own namespace"):
        register_input(FIT_INPUT, lambda client, payload: np.zeros(1, dtype=np.int64))
    with pytest.raises(ValueError, match="covey's own namespace"):
        register_task_input("covey.analytics.answer", lambda client, task, payload: np.zeros(1))
    assert _INPUTS[FIT_INPUT] is kept


def test_every_builtin_kind_is_registered_once_its_subpackage_is_imported() -> None:
    pytest.importorskip("duckdb")
    for name in ("covey.analytics._site", "covey.compress", "covey.secagg"):
        importlib.import_module(name)  # each registers its kinds

    assert set(client_module.BUILTIN_KINDS) <= set(client_module.task_kinds())


def _run_afresh(code: str) -> None:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


# "analyze" is performed by covey.analytics' Site (an optional extra): a client that is
# one has imported it.
_BASE_KINDS = sorted(set(client_module.BUILTIN_KINDS) - {"analyze"})


def test_a_plain_import_of_covey_performs_every_builtin_kind() -> None:
    # `import covey` loads neither covey.compress nor covey.secagg: the runtime must.
    _run_afresh(
        "import covey\n"
        "from covey.clients import run_task\n"
        "from covey.core import Task\n"
        f"for kind in {_BASE_KINDS!r}:\n"
        "    error = run_task(covey.Client(), 0, Task(kind, 1)).error or ''\n"
        "    assert 'unknown task kind' not in error, error\n"
    )
    # What a deployed client tells the server it performs, before any task arrives.
    _run_afresh(
        "import covey\n"
        "from covey.clients import task_kinds\n"
        f"missing = set({_BASE_KINDS!r}) - set(task_kinds())\n"
        "assert not missing, missing\n"
    )


class Shift(covey.Client):
    """Moves each weight by its client's id: defined here, where nothing imports covey.secagg."""

    def __init__(self, cid: int) -> None:
        self.cid = cid

    def fit(self, weights: Any, config: Any) -> covey.FitResult:
        return covey.FitResult(weights={"w": weights["w"] + 0.1 * self.cid}, num_examples=1)


def _shift_beside_the_handlers(cid: int) -> Shift:
    """A Shift in a worker that has covey.secagg's handlers, not secure FedAvg's input.

    covey.analytics imports the handlers alone; secure FedAvg's input is registered
    by another module, which the worker must then load itself.
    """
    import covey.secagg._handlers  # noqa: F401

    return Shift(cid)


@pytest.mark.parametrize("method", ["forkserver", "spawn"])
def test_workers_started_afresh_perform_secure_and_compressed_fits(method: StartMethod) -> None:
    from covey.secagg import secure

    plain = covey.FedAvg(fraction_evaluate=0.0)
    with pytest.warns(UserWarning, match="honest-but-curious"):
        strategy = secure(plain, clip_range=1.0, bits=16)
    init = {"w": np.zeros(3)}
    want = covey.simulate(Shift, 4, 1, plain, init).weights["w"]
    runs: list[tuple[Any, dict[str, Any]]] = [
        (Shift, {"strategy": strategy}),
        (_shift_beside_the_handlers, {"strategy": strategy}),
        (Shift, {"strategy": plain, "compression": "float16"}),
    ]
    for client_fn, kwargs in runs:
        result = covey.simulate(
            client_fn, 4, 1, initial_weights=init, backend="process", num_workers=1,
            start_method=method, **kwargs,
        )  # fmt: skip
        assert not result.history.rounds[0].failures, result.history.rounds[0].failures
        np.testing.assert_allclose(result.weights["w"], want, atol=1e-3)
