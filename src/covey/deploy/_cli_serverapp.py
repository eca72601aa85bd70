"""``covey server --app``: the ServerApp a spec names, loaded and checked."""

from __future__ import annotations

import inspect
import shlex
from pathlib import Path
from typing import Any

from covey.deploy._cli_apps import load_object, required_params
from covey.deploy._cli_errors import fail

__all__ = ["server_app"]


def server_app(spec: str | None, resume: Path | None = None, flag: str = "--app") -> Any:
    """Load the ServerApp named by ``--app`` (an object, or a function returning one).

    ``flag``: where ``spec`` came from, named in errors (a ``--config`` file's key).
    """
    from covey.deploy._app import ServerApp
    from covey.server._base import check_evaluate_fn

    if spec is None and resume is not None:  # the folder keeps the run's state, not its code
        fail(
            f"--resume {resume} needs the run's app too: give --app MODULE:OBJECT naming the "
            "covey.deploy.ServerApp it was started with (its strategy and model; the run folder "
            "keeps the state, not the code), or app = ... in --config"
        )
    if spec is None:
        fail("give --app MODULE:OBJECT naming a covey.deploy.ServerApp (or app = ... in --config)")
    from covey.deploy._app import main_problem

    obj = load_object(spec, flag)
    if callable(obj) and not isinstance(obj, type | ServerApp):
        if required_params(obj) > 0:
            fail(taking_arguments(spec, obj, flag))
        obj = obj()
    if not isinstance(obj, ServerApp):
        fail(
            f"{flag} {spec} is of type {type(obj).__name__}; `covey server --app` needs a "
            "covey.deploy.ServerApp or a function of no arguments returning one"
        )
    problem = main_problem(obj)  # set after it was made, its fields are not checked yet
    if problem is not None:
        fail(f"{flag} {spec}: ServerApp: {problem}")
    try:
        check_evaluate_fn(obj.evaluate_fn)
    except TypeError as exc:
        fail(f"{flag} {spec}: {exc}")
    return obj


def taking_arguments(spec: str, fn: Any, flag: str = "--app") -> str:
    """The error for ``--app`` (``flag``) naming a function of arguments: a factory, a client's."""
    try:
        params = list(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        params = []
    module = spec.partition(":")[0]
    if params[:1] == ["config"]:  # a project's make_server(config)
        return (
            f"{flag} {spec} is a project's server factory, taking its config; "
            "`covey server --app` needs a ServerApp or a function of no arguments returning "
            f"one: give --app {shlex.quote(module + ':server_app')} (a project's own), or "
            "serve the project "
            "with `covey run --federation NAME`"
        )
    return (
        f"{flag} {spec} is a function taking arguments (a client_fn? give it to "
        "`covey client --app`); `covey server --app` needs a ServerApp or a function "
        "of no arguments returning one"
    )
