"""Ctrl-C as Ctrl-C, even when the code it interrupted turned it into another error.

SIGINT raises ``KeyboardInterrupt`` wherever the main thread is. If that is the
initialization of a compiled module (matplotlib's, say, imported as a run draws
its first plot), the module's loader reports an ``ImportError("initialization
failed")`` caused by the interrupt. A run stopped that way was interrupted, not
failed: :func:`interrupt_in` finds the interrupt behind such an error, and
:func:`as_interrupt` gives the ``KeyboardInterrupt`` to record and raise in its place.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

__all__ = ["as_interrupt", "interrupt_in", "interrupts_as_such"]


def interrupt_in(exc: BaseException) -> KeyboardInterrupt | None:
    """The ``KeyboardInterrupt`` that is ``exc`` or that caused it, else None.

    Followed is the chain Python prints under a traceback: each error's
    ``__cause__`` (``raise ... from``), else its ``__context__`` (the error being
    handled as it was raised) unless that was hidden (``raise ... from None``).
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, KeyboardInterrupt):
            return current
        seen.add(id(current))
        if current.__cause__ is not None:
            current = current.__cause__
        elif current.__suppress_context__:
            current = None
        else:
            current = current.__context__
    return None


def as_interrupt(exc: BaseException) -> BaseException:
    """``exc``, or a ``KeyboardInterrupt`` (with the interrupt's args) if one caused it.

    The new interrupt's ``__cause__`` is ``exc``, so its traceback shows where it landed.
    """
    found = interrupt_in(exc)
    if found is None or found is exc:
        return exc
    stop = KeyboardInterrupt(*found.args)  # args: "SIGTERM" for a stop by SIGTERM
    stop.__cause__ = exc
    return stop


@contextlib.contextmanager
def interrupts_as_such() -> Iterator[None]:
    """Raise a ``KeyboardInterrupt`` in place of an error an interrupt caused in the block."""
    try:
        yield
    except Exception as caught:
        exc = as_interrupt(caught)
        if exc is caught:
            raise
        raise exc from caught
