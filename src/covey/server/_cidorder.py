"""Replies in the order of the clients they answer, whatever order they arrive in.

The synchronous round loop folds its replies in client-id order, so a round's
aggregate is the same number however the network orders them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence

from covey.core._messages import Reply

__all__ = ["in_cid_order"]

logger = logging.getLogger("covey")


def in_cid_order(replies: Iterable[Reply], cids: Sequence[int]) -> Iterator[Reply]:
    """Re-order ``replies`` into the order of ``cids``, releasing each once all before it are in.

    The round loop passes ``cids`` sorted, so replies come out in client-id order.
    Replies for ids not in ``cids`` and repeated replies are dropped. Holds only
    the replies that arrived early, so with in-order arrival memory stays O(1)
    replies. Ids that never replied are simply absent from the output.

    Args:
        replies: The replies in the order they arrive.
        cids: The clients asked, in the order their replies are to come out.
    """
    order = {cid: i for i, cid in enumerate(cids)}
    held: dict[int, Reply] = {}
    nxt = 0  # the position in cids of the next reply to release
    for reply in replies:
        idx = order.get(reply.cid)
        # Below nxt: released already; in held: waiting already. Either way a repeat.
        if idx is None or idx < nxt or idx in held:
            logger.warning("dropping an unexpected reply from client %s", reply.cid)
            continue
        if idx != nxt:
            held[idx] = reply
            continue
        yield reply
        del reply  # not held while the next one is awaited: it may be a model-sized mapping
        nxt += 1
        while held and nxt in held:
            yield held.pop(nxt)
            nxt += 1
    for idx in sorted(held):
        yield held[idx]
