"""Task kinds: covey's own cannot be replaced by register_task; a user's kind can be again."""

from __future__ import annotations

import importlib

import numpy as np
import pytest

import covey.clients._client as client_module
from covey.core import Task


@pytest.mark.parametrize(
    "kind",
    ["fit", "fit_compressed", "secagg.mask", "secagg.unmask", "analyze"],
)
def test_covey_s_own_task_kinds_cannot_be_replaced(
    kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import covey.compress
    import covey.secagg

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
