"""Hints appended to a failed client's traceback: what to do about common mistakes."""

from __future__ import annotations

READ_ONLY_HINT = (
    "covey: the weights a client receives are shared read-only arrays (no copy is "
    "made for each client); copy before changing them in place: "
    "w = {name: array.copy() for name, array in weights.items()}"
)


#: What torch says of a name (text) where it expects an array: a Flower ``set_parameters``
#: zipping ``state_dict().keys()`` with covey's weights, a dict, gets its names.
_GOT_A_NAME = ("invalid data type 'str'", "(got str)", "received <class 'str'>")

NAMES_HINT = (
    "if it came from a Flower-style set_parameters: a client's weights are a dict of name "
    "to array, not a list of arrays, so zip(net.state_dict().keys(), weights) pairs names "
    "with names; load them with covey.torch.load_weights(net, weights), or take "
    "weights[name] for each name"
)


def hint(exc: BaseException) -> str:
    """A last line saying what to do, for the mistakes clients commonly make."""
    text = str(exc)
    if isinstance(exc, ValueError) and ("read-only" in text or "WRITEABLE flag" in text):
        return READ_ONLY_HINT + "\n"
    if isinstance(exc, TypeError | RuntimeError) and any(s in text for s in _GOT_A_NAME):
        said = text.strip().splitlines()[0] if text.strip() else ""
        return f"covey: {type(exc).__name__}: {said} ({NAMES_HINT})\n"
    if isinstance(exc, KeyError) and exc.args == ("server_round",):
        return (
            "covey: the config a client receives has the round as config['round']; "
            "'server_round' is there only if on_fit_config (or on_evaluate_config) sends it\n"
        )
    return ""
