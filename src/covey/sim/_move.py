"""A worker's reply moved into shared memory: each page of its arrays given back once copied.

A client that returns new arrays (``w + noise``) holds one model of its own;
copying it into the reply's file made two per worker until the reply was sent
and dropped. When nothing but the reply can reach those arrays (no client,
model or buffer holds the result, its weights dict or an array), the worker
copies each array into the file a step at a time, reserving the file's space
as it fills, and gives the pages it has copied back to the system
(``madvise(MADV_DONTNEED)``): the worker holds about one model, as a client
that trains in place does (:mod:`covey.sim._room`). The reply's bytes are the
same; only when its pages are freed changes. Whether nothing else holds the
arrays is read from reference counts, exact on CPython 3.11 to 3.13 with its
GIL; elsewhere (and off Linux) every reply is copied as before.
"""

from __future__ import annotations

import mmap
import sys
import weakref
from typing import Any

import numpy as np

from covey.core import _codec
from covey.core._messages import FitResult
from covey.core._pages import CAN_RELEASE_OWNED, release_owned
from covey.core._weights import Array, Weights
from covey.server._direct import EXACT_REFCOUNTS
from covey.sim import _shm

__all__ = ["movable", "write_moving"]

_PAGE = mmap.PAGESIZE


def movable(reply: Any) -> frozenset[int]:
    """The ids of ``reply``'s arrays whose pages may be given back as they are copied.

    Empty unless ``reply`` carries a plain :class:`FitResult` (weights or delta,
    no extras) that nothing else can reach: the caller's one name for ``reply``
    is the only reference to it, the reply's the only one to its result, the
    result's the only one to its weights dict. Each array then counts if the
    dict's entry is its only reference, no weak reference names it, and it owns
    its memory (a view does not).
    The references counted besides those: this function's names and
    ``getrefcount``'s argument.
    """
    if not CAN_RELEASE_OWNED or not EXACT_REFCOUNTS:
        return frozenset()
    count = sys.getrefcount
    result = getattr(reply, "result", None)
    if type(result) is not FitResult or result.extras:
        return frozenset()
    weights = result.weights if result.delta is None else result.delta
    # reply: the caller's name, the parameter, the argument; result and weights:
    # the field holding each, this function's name, the argument.
    if count(reply) > 3 or count(result) > 3 or count(weights) > 3 or type(weights) is not dict:
        return frozenset()
    owned = []
    for array in weights.values():  # the dict's entry, the loop's name, the argument
        if (
            type(array) is np.ndarray
            and array.nbytes >= _PAGE  # a smaller array holds no whole page to give back
            and array.flags.owndata
            and count(array) <= 3
            and not weakref.getweakrefcount(array)  # a weak reference could reach it later
        ):
            owned.append(id(array))
    return frozenset(owned)


def write_moving(
    prefix: str, weights: Weights, owned: frozenset[int], plan: Any = None
) -> tuple[str, list[int]]:
    """:func:`covey.sim._shm.write_file` of one part, giving back the pages of ``owned`` arrays.

    The file's space is reserved a step at a time (:data:`covey.core._codec.STEP`
    bytes, or an array's step) as it is written, so that the system holds at most
    a step of reserved pages for source pages not yet given back; a model of many
    small arrays takes one reservation per step, not one per array. ``plan``:
    :func:`covey.core._codec.layout` of ``weights``, if the caller has it.

    Raises:
        OSError: There is no room in the shared-memory file system (the file is removed).
    """
    if plan is None:
        plan = _codec.layout(weights)
    size = plan.total
    total = _shm.aligned(size)
    payload = plan.payload_start

    def give_back(array: Array, start: int, stop: int) -> None:
        if id(array) in owned:
            release_owned(array, start, stop)

    with (
        _shm.new_file(prefix, total, reserved=False) as (fd, path),
        mmap.mmap(fd, total, flags=mmap.MAP_SHARED) as mm,
    ):
        ahead = [payload]  # the payload's bytes are claimed in order; reserved up to here

        def claim(start: int, stop: int) -> None:
            if start < payload:  # the prefix and header, claimed last
                _shm.reserve(fd, stop - start, path, offset=start, whole=total)
            elif stop > ahead[0]:
                begin = max(start, ahead[0])
                end = min(total, max(stop, begin + _codec.STEP))
                _shm.reserve(fd, end - begin, path, offset=begin, whole=total)
                ahead[0] = end

        try:
            _codec.encode_into(weights, mm, claim=claim, copied=give_back, plan=plan)
        except BaseException as exc:
            # The frames of its traceback, and of any error it was raised while handling,
            # view the mapping (a frame keeps its callers'), which then cannot close.
            link: BaseException | None = exc
            while link is not None:
                link.__traceback__ = None
                link = link.__context__
            raise exc from None
    return path, [size]
