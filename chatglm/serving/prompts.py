"""Prompts built in worker processes.

Tokenizing a long history is seconds of pure Python. In a thread of the server's process it would hold the
GIL against the event loop and the engine thread (a decoding step needs the GIL between its torch ops), so
every running stream would stall with it; worker processes have GILs of their own.
"""

import asyncio
import logging
import multiprocessing
import signal
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from ..generation import prompt_ids

logger = logging.getLogger(__name__)

_tokenizer = None  # in a worker: the server's tokenizer, sent once when the worker starts


def _keep(tokenizer):
    global _tokenizer
    _tokenizer = tokenizer
    # a signal to the server's process group is the server's to handle: its drain still needs the workers
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _prompt_ids(query: str, history: list, max_length: int) -> list[int]:
    return prompt_ids(_tokenizer, query, history, max_length)


def _worker_context():
    """How worker processes start. Not forked from the server's process, which runs threads (the engine's,
    torch's) by then, but from a fork server: a clean process that imports the server's modules once, so
    that each worker starts in a fraction of a second instead of importing torch and transformers again.
    Spawned where there is no fork server (Windows)."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    # a worker also imports the server's main script; these are the heavy modules it imports
    context.set_forkserver_preload(["chatglm.entrypoints.loader", "chatglm.serving.app"])
    return context


class PromptWorkers:
    """``await workers.prompt_ids(query, history, max_length)``: generation.prompt_ids in a worker process
    (raises PromptTooLong the same way). A worker that dies (killed, out of memory) breaks the whole pool;
    the pool is then started again and the prompt built there, so one lost process costs one slow request,
    not every later one."""

    def __init__(self, tokenizer, processes: int = 2):
        self.tokenizer, self.processes = tokenizer, processes
        self.pool = self._new_pool()
        self.restarts = 0

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(self.processes, mp_context=_worker_context(), initializer=_keep,
                                   initargs=(self.tokenizer,))

    async def prompt_ids(self, query: str, history, max_length: int) -> list[int]:
        args = (query, list(history), max_length)
        pool = self.pool
        try:
            return await asyncio.get_running_loop().run_in_executor(pool, _prompt_ids, *args)
        except BrokenProcessPool:
            self._replace(pool)
        return await asyncio.get_running_loop().run_in_executor(self.pool, _prompt_ids, *args)

    def _replace(self, broken: ProcessPoolExecutor) -> None:
        if self.pool is not broken:  # another request has already replaced it
            return
        logger.warning("a prompt worker process died; starting the prompt workers again")
        broken.shutdown(wait=False, cancel_futures=True)
        self.pool = self._new_pool()
        self.restarts += 1

    async def start(self):
        """Start every worker now (each imports the package: seconds), not on the first requests."""
        await asyncio.gather(*(self.prompt_ids("", [], 16) for _ in range(self.processes)))

    def close(self):
        self.pool.shutdown(wait=False, cancel_futures=True)
