"""Waiting for a submitted Sequence's tokens: ``follow`` in asyncio code, ``follow_blocking`` in a thread."""

import asyncio
import threading
import weakref

from .engine import Engine, Sequence


class _LoopWaker:
    """Sets asyncio events of one event loop from the engine thread with one ``call_soon_threadsafe`` for
    all the events of a step: each call writes to the loop's self-pipe, and one call per sequence per step
    would cost the engine thread a write and the GIL for every streaming client."""

    def __init__(self, loop):
        self.loop = loop
        self.lock = threading.Lock()
        self.pending: set = set()

    def wake(self, event: asyncio.Event):
        with self.lock:
            first = not self.pending
            self.pending.add(event)
        if first:
            self.loop.call_soon_threadsafe(self._set_pending)

    def _set_pending(self):
        with self.lock:
            events, self.pending = self.pending, set()
        for event in events:
            event.set()


_wakers: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopWaker]" = weakref.WeakKeyDictionary()


async def follow(engine: Engine, sequence: Sequence, each_token: bool = True):
    """Yield whenever the submitted ``sequence`` has new tokens (with ``each_token=False`` only once, when it
    has finished), the last time once it has finished (``finish_reason`` set). Leaving early (break, an
    exception, task cancellation) cancels the sequence, so an abandoned request stops costing anything at the
    next step. Use it with ``contextlib.aclosing`` so that leaving early takes effect at once."""
    loop = asyncio.get_running_loop()
    waker = _wakers.setdefault(loop, _LoopWaker(loop))
    news = asyncio.Event()
    if each_token:
        sequence.on_update = lambda: waker.wake(news)
    else:  # a whole answer: waking the event loop at every token costs the engine thread the GIL each time
        sequence.on_update = lambda: sequence.finish_reason is not None and waker.wake(news)
    news.set()  # tokens may have come before we listened
    try:
        while sequence.finish_reason is None:
            await news.wait()
            news.clear()
            yield
    finally:
        if sequence.finish_reason is None:
            engine.cancel(sequence)


def follow_blocking(engine: Engine, sequence: Sequence):
    """`follow` for a thread that may block (e.g. a gradio handler): yield whenever the submitted
    ``sequence`` has new tokens, the last time once it has finished. Closing the generator early cancels the
    sequence."""
    news = threading.Event()
    sequence.on_update = news.set
    news.set()  # tokens may have come before we listened
    try:
        while sequence.finish_reason is None:
            news.wait()
            news.clear()
            yield
    finally:
        if sequence.finish_reason is None:
            engine.cancel(sequence)
