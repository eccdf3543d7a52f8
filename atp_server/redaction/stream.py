"""Wrap an adapter's stream so placeholders split across chunks reach the client restored."""
from contextlib import aclosing

from ..types import Finish, TextDelta
from .vault import StreamRestorer, Vault


async def restoring(upstream, vault: Vault):
    """Yield the adapter's items with TextDelta texts restored (StreamRestorer).

    A chunk held back entirely is not yielded: its tokens ride on the next delta sent, so token
    counts add up the same. The held tail goes out, restored or not, just before Finish; a stream
    without Finish is the pipeline's UPSTREAM_CUT and the tail dies with it.
    """
    restorer, held_tokens = StreamRestorer(vault), 0
    async with aclosing(upstream) as items:
        async for item in items:
            if type(item) is TextDelta:
                text = restorer.feed(item.text)
                if not text:
                    held_tokens += item.tokens
                    continue
                if held_tokens:
                    item, held_tokens = TextDelta(text, item.tokens + held_tokens), 0
                elif text is not item.text:
                    item = TextDelta(text, item.tokens)
            elif type(item) is Finish:
                tail = restorer.flush()
                if tail or held_tokens:
                    yield TextDelta(tail, held_tokens)
            yield item
