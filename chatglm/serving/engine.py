"""Continuous batching for serving many chats with one model.

    engine = Engine(model, max_batch_size=32)
    engine.start()
    seq = Sequence(prompt_ids(tokenizer, "你好", [], 2048), max_new_tokens=100, temperature=0)  # chatglm.generation
    engine.submit(seq)
    seq.done.wait()                   # or, in asyncio code: async for _ in follow(engine, seq): ... (follow.py)
    answer = TextStream(tokenizer)
    answer.finish(seq.output_ids)
    print(answer.text)

One background thread runs a step loop over the running sequences. A sequence joins between steps: its
prompt is prefilled alone, a chunk of work at a time between two decoding steps (so a long prompt does not
pause the running answers for the whole of its prefill), then its keys/values are merged into the running
batch. It leaves as soon as it finishes, so every decoding step is ONE forward pass for all running
sequences, each with its own sampling settings. Rows are left-padded to a common length; the model's 2-D
padding mask hides the padding (it covers the cached positions too) and every row carries its own GLM
positions, so a batched greedy answer is the answer `model.chat` gives alone.

Text is produced on the consumer's side (TextStream): the engine deals in token ids only.
"""

import collections
import logging
import threading
import time
from collections.abc import Callable
from collections.abc import Sequence as Seq

import torch
import torch.nn.functional as F

from ..sampling import replace_invalid_scores, sample_next_tokens
from .batch import BatchKVCache, RunningBatch, sampling_settings
from .prefill import prefill_in_pieces

logger = logging.getLogger(__name__)

# Finish reasons. "stop" and "length" are what OpenAI clients know; the others end a sequence early
# ("shutdown": the server's drain time ran out).
STOP, LENGTH, CANCELLED, ERROR, SHUTDOWN = "stop", "length", "cancelled", "error", "shutdown"
FINISH_REASONS = (STOP, LENGTH, CANCELLED, ERROR, SHUTDOWN)

# Prompt tokens' worth of prefill work done between two decoding steps: small enough that a long prompt
# joining pauses the running answers for a few decoding steps' time at most, large enough that its
# products stay efficient (the per-piece overhead is paid once per layer, twice, per chunk).
DEFAULT_PREFILL_CHUNK_TOKENS = 64


class QueueFull(Exception):
    """The engine already holds as many waiting sequences as it was allowed; try again later."""


class Sequence:
    """One request in the engine: a prompt, its sampling settings, and the ids generated so far.

    ``temperature`` 0 means greedy; ``top_k`` 0 means no top-k limit, None the model's generation config (as
    ``model.chat`` samples; the engine fills it in at ``submit``); ``ignore_eos`` generates past the
    end-of-answer token up to ``max_new_tokens``. ``on_update`` (if set) is called from
    the engine thread whenever ``output_ids`` grew or the sequence finished; ``done`` is set at the end.
    ``finish_reason`` is None while running, then "stop" (end-of-answer token), "length" (max_new_tokens),
    "cancelled", "shutdown" (cut when the server's drain time ran out) or "error" (``error`` says why).
    """

    def __init__(self, prompt_ids: Seq[int], max_new_tokens: int, *, temperature: float = 0.95,
                 top_p: float = 0.7, top_k: int | None = None, ignore_eos: bool = False,
                 on_update: Callable[[], None] | None = None):
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        self.prompt_ids = list(prompt_ids)
        self.max_new_tokens = max_new_tokens
        self.temperature, self.top_p = float(temperature), float(top_p)
        self.top_k = None if top_k is None else int(top_k)
        self.ignore_eos = ignore_eos
        self.on_update = on_update
        self.output_ids: list[int] = []
        self.finish_reason: str | None = None
        self.error: str | None = None
        self.cancel_requested = False
        self.done = threading.Event()
        self.submitted_at = self.first_token_at = None


def next_tokens(logits: torch.Tensor, settings) -> torch.Tensor:
    """One token per row of a step's ``logits`` [batch, vocab]: rows are independent requests, so the
    invalid-score rule applies to each row alone."""
    return sample_next_tokens(replace_invalid_scores(logits, each_row=True), *settings)


class Prefill:
    """A joining sequence's prompt on its way into its own KV cache: ``pieces`` is the model's
    prefill_in_pieces generator, advanced a little between decoding steps."""

    def __init__(self, sequence: Sequence, model, chunk_tokens: int):
        self.sequence = sequence
        self.ids = torch.tensor([sequence.prompt_ids], device=model.device)  # [1, prompt]
        self.cache = BatchKVCache()
        self.pieces = prefill_in_pieces(model.transformer, self.ids, self.cache, chunk_tokens)


def default_engine_threads() -> int:
    """CPU threads an engine computes with by default: all cores but one, which the HTTP side (JSON,
    detokenizing, streams of events) needs for itself; generation threads sharing a core with it stall at
    every step."""
    return max(1, torch.get_num_threads() - 1)


class Engine:
    """Runs every submitted Sequence to its end on one background thread, batching them together.

    ``max_batch_size`` sequences decode together (a sequence being prefilled takes its place already); more
    wait in a queue of at most ``max_queue`` (then ``submit`` raises QueueFull). Between two decoding steps
    the engine does at most ``prefill_chunk_tokens`` prompt tokens' worth of prefill work (see
    prefill.prefill_in_pieces), for the oldest joining sequences first. ``cancel`` takes effect at the
    next step boundary. ``threads`` is the number of CPU threads the steps compute with (None: torch's
    setting). ``drain`` stops taking sequences and gives the ones it holds a deadline.
    """

    def __init__(self, model, *, max_batch_size: int = 32, max_queue: int = 256, threads: int | None = None,
                 prefill_chunk_tokens: int = DEFAULT_PREFILL_CHUNK_TOKENS):
        if prefill_chunk_tokens < 1:
            raise ValueError(f"prefill_chunk_tokens must be at least 1, got {prefill_chunk_tokens}")
        self.model = model
        self.prefill_chunk_tokens = prefill_chunk_tokens
        self.threads = threads
        self.max_batch_size = max_batch_size
        self.max_queue = max_queue
        eos = model.generation_config.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos])
        # a sequence that names no top_k samples as `model.chat` does: with the model's generation config
        self.default_top_k = model.generation_config.top_k or 0
        self.batch: RunningBatch | None = None  # touched by the engine thread only
        self.prefilling: Prefill | None = None  # the joining sequence whose prompt is half prefilled
        self.waiting: collections.deque = collections.deque()
        self.wakeup = threading.Condition()
        self.stopping = False
        self.drain_deadline: float | None = None  # time.monotonic() at which held sequences are cut
        self.thread = threading.Thread(target=self._run, name="chatglm-engine", daemon=True)
        # read by other threads while the engine thread updates them, so every key exists from the start
        self.counts = dict.fromkeys(["submitted", "prompt_tokens", "generated_tokens", "steps"]
                                    + [f"finished_{r}" for r in FINISH_REASONS], 0)

    # --- called from other threads ---

    def start(self):
        """Start the engine thread. Call it from the main thread: on CPU, torch ops in another thread run
        much slower (libgomp's idle workers spin against ours) until the main thread has run one parallel op
        itself, which is what the first line does."""
        torch.ones(64, 64) @ torch.ones(64, 64)
        self.thread.start()
        return self

    def stop(self, timeout: float = 10.0):
        """Finish the current step, end every sequence (reason "cancelled") and stop the thread."""
        with self.wakeup:
            self.stopping = True
            self.wakeup.notify()
        if self.thread.is_alive():
            self.thread.join(timeout)

    def drain(self, seconds: float):
        """Take no more sequences; the ones held now go on for at most ``seconds``, then end as "shutdown"."""
        with self.wakeup:
            self.drain_deadline = time.monotonic() + seconds
            self.wakeup.notify()

    def idle(self) -> bool:
        return self.batch is None and self.prefilling is None and not self.waiting

    def submit(self, sequence: Sequence):
        with self.wakeup:
            if self.stopping or self.drain_deadline is not None:
                raise QueueFull("the server is shutting down")
            if len(self.waiting) >= self.max_queue:
                raise QueueFull(f"the queue is full: {len(self.waiting)} waiting")
            if sequence.top_k is None:
                sequence.top_k = self.default_top_k
            sequence.submitted_at = time.perf_counter()
            self.waiting.append(sequence)
            self.counts["submitted"] += 1
            self.wakeup.notify()

    def cancel(self, sequence: Sequence):
        """Stop generating for ``sequence``: at once if it is still waiting, else at the next step."""
        with self.wakeup:
            sequence.cancel_requested = True
            if sequence in self.waiting:
                self.waiting.remove(sequence)
                self._finish(sequence, CANCELLED)

    def stats(self) -> dict:
        running = len(self.batch) if self.batch is not None else 0
        return {"running": running + (self.prefilling is not None), "waiting": len(self.waiting), **self.counts}

    # --- the engine thread ---

    def _run(self):
        if self.threads:
            torch.set_num_threads(self.threads)
        with torch.inference_mode():
            while True:
                with self.wakeup:
                    while not self.stopping and self.idle():
                        self.wakeup.wait()
                    if self.stopping:
                        break
                    if self.drain_deadline is not None and time.monotonic() >= self.drain_deadline:
                        self._end_all(SHUTDOWN)
                        continue
                try:
                    self._drop_cancelled()
                    self._prefill_some()
                    if self.batch is not None:
                        self._decode_step()
                except Exception as exc:  # a whole-batch failure (e.g. out of memory): the server goes on
                    logger.exception("decoding step failed")
                    for sequence in self.batch.sequences if self.batch is not None else []:
                        self._finish(sequence, ERROR, f"{type(exc).__name__}: {exc}")
                    self.batch = None
        self._end_all(CANCELLED)

    def _end_all(self, reason: str):
        """End every held sequence (called with ``wakeup`` held)."""
        prefilling = [self.prefilling.sequence] if self.prefilling is not None else []
        for sequence in list(self.waiting) + prefilling + (self.batch.sequences if self.batch is not None else []):
            self._finish(sequence, reason)
        self.waiting.clear()
        self.prefilling = None
        self.batch = None

    def _finish(self, sequence: Sequence, reason: str, error: str | None = None):
        sequence.error = error
        sequence.finish_reason = reason
        self.counts[f"finished_{reason}"] += 1
        sequence.done.set()
        self._notify(sequence)

    def _notify(self, sequence: Sequence):
        if sequence.on_update is None:
            return
        try:
            sequence.on_update()
        except Exception:  # the consumer is gone (e.g. its event loop closed): stop generating for it
            logger.warning("cannot deliver tokens to a request; cancelling it", exc_info=True)
            sequence.cancel_requested = True

    def _drop_cancelled(self):
        if self.batch is None:
            return
        keep = [not s.cancel_requested for s in self.batch.sequences]
        if all(keep):
            return
        for sequence, kept in zip(self.batch.sequences, keep):
            if not kept:
                self._finish(sequence, CANCELLED)
        self._keep_rows(keep)

    def _keep_rows(self, keep: list[bool]):
        if any(keep):
            self.batch.keep(keep)
        else:
            self.batch = None

    def _prefill_some(self):
        """Spend up to ``prefill_chunk_tokens`` prompt tokens' worth of prefill work on the joining
        sequences, oldest first; a sequence whose prefill ends samples its first token and joins the batch.
        A failure here (a bad id, out of memory on a long prompt) fails that sequence only."""
        budget = self.prefill_chunk_tokens
        while budget > 0:
            if self.prefilling is None and not self._start_prefill():
                return
            job = self.prefilling
            if job.sequence.cancel_requested:
                self.prefilling = None
                self._finish(job.sequence, CANCELLED)
                continue
            try:
                budget -= next(job.pieces)
            except StopIteration as end:
                self._join(job, end.value)
                self.prefilling = None  # only now: idle() must not be true for a moment in between
            except Exception as exc:
                self.prefilling = None
                logger.warning("prefill failed: %s: %s", type(exc).__name__, exc)
                self._finish(job.sequence, ERROR, f"{type(exc).__name__}: {exc}")

    def _start_prefill(self) -> bool:
        """Take the oldest waiting sequence, if the batch has room for it; return whether one was taken."""
        with self.wakeup:  # held throughout, so that idle() never sees the sequence in neither place
            running = len(self.batch) if self.batch is not None else 0
            if not self.waiting or running >= self.max_batch_size:
                return False
            sequence = self.waiting.popleft()
            try:
                self.prefilling = Prefill(sequence, self.model, self.prefill_chunk_tokens)
            except Exception as exc:
                logger.warning("prefill failed: %s: %s", type(exc).__name__, exc)
                self._finish(sequence, ERROR, f"{type(exc).__name__}: {exc}")
            return True

    def _join(self, job: "Prefill", hidden: torch.Tensor):
        """Sample the first token after a finished prefill and merge the sequence into the running batch."""
        sequence, ids, model = job.sequence, job.ids, self.model
        try:
            logits = model.lm_head(hidden)[:, -1].float()
            token = next_tokens(logits, sampling_settings([sequence], model.device))
            # the positions of the token just sampled, fed in at the next step
            positions = model.transformer.get_position_ids(torch.cat((ids, token[:, None]), dim=1),
                                                           past_length=ids.shape[1])
        except Exception as exc:
            logger.warning("prefill failed: %s: %s", type(exc).__name__, exc)
            self._finish(sequence, ERROR, f"{type(exc).__name__}: {exc}")
            return
        self.counts["prompt_tokens"] += len(sequence.prompt_ids)
        joined = RunningBatch(sequence, job.cache, torch.ones_like(ids), token, positions)
        if self._append_token(sequence, int(token)):
            if self.batch is None:
                self.batch = joined
            else:
                self.batch.merge(joined)

    def _decode_step(self):
        """One forward pass for every running row, then one new token per row."""
        batch, model = self.batch, self.model
        padding = F.pad(batch.padding, (0, 1), value=1)  # [batch, width + 1]
        logits = model(batch.next_tokens[:, None], position_ids=batch.positions, attention_mask=padding,
                       cache=batch.cache, use_cache=True).logits[:, -1].float()
        tokens = next_tokens(logits, batch.settings)
        batch.padding, batch.next_tokens = padding, tokens
        batch.positions = model.transformer.next_position_ids(batch.positions)
        self.counts["steps"] += 1
        keep = [self._append_token(s, t) for s, t in zip(batch.sequences, tokens.tolist())]
        if not all(keep):
            self._keep_rows(keep)

    def _append_token(self, sequence: Sequence, token: int) -> bool:
        """Record a new token; return whether the sequence goes on."""
        if sequence.first_token_at is None:
            sequence.first_token_at = time.perf_counter()
        sequence.output_ids.append(token)
        self.counts["generated_tokens"] += 1
        if token in self.eos_ids and not sequence.ignore_eos:
            self._finish(sequence, STOP)
        elif len(sequence.output_ids) >= sequence.max_new_tokens:
            self._finish(sequence, LENGTH)
        elif sequence.cancel_requested:
            self._finish(sequence, CANCELLED)
        else:
            self._notify(sequence)
            return True
        return False
