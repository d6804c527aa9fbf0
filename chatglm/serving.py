"""Continuous batching for serving many chats with one model.

    engine = Engine(model, max_batch_size=32)
    engine.start()
    seq = Sequence(prompt_ids(tokenizer, "你好", [], 2048), max_new_tokens=100, temperature=0)  # chatglm.generation
    engine.submit(seq)
    seq.done.wait()                   # or, in asyncio code: async for _ in follow(engine, seq): ...
    answer = TextStream(tokenizer)
    answer.finish(seq.output_ids)
    print(answer.text)

One background thread runs a step loop over the running sequences. A sequence joins at a step boundary
(its prompt is prefilled alone, then its keys/values are merged into the running batch) and leaves as soon
as it finishes, so every decoding step is ONE forward pass for all running sequences, each with its own
sampling settings. Rows are left-padded to a common length; the model's 2-D padding mask hides the padding
(it covers the cached positions too) and every row carries its own GLM positions, so a batched greedy
answer is the answer `model.chat` gives alone.

Text is produced on the consumer's side (TextStream): the engine deals in token ids only.
"""

import asyncio
import collections
import logging
import threading
import time
import weakref
from collections.abc import Callable
from collections.abc import Sequence as Seq

import torch
import torch.nn.functional as F

from .generation import clean_inside

logger = logging.getLogger("chatglm.serving")

# Finish reasons. "stop" and "length" are what OpenAI clients know; the others end a sequence early.
STOP, LENGTH, CANCELLED, ERROR = "stop", "length", "cancelled", "error"


class QueueFull(Exception):
    """The engine already holds as many waiting sequences as it was allowed; try again later."""


class Sequence:
    """One request in the engine: a prompt, its sampling settings, and the ids generated so far.

    ``temperature`` 0 means greedy; ``top_k`` 0 means no top-k limit, None the model's generation config (as
    ``model.chat`` samples; the engine fills it in at ``submit``); ``ignore_eos`` generates past the
    end-of-answer token up to ``max_new_tokens``. ``on_update`` (if set) is called from
    the engine thread whenever ``output_ids`` grew or the sequence finished; ``done`` is set at the end.
    ``finish_reason`` is None while running, then "stop" (end-of-answer token), "length" (max_new_tokens),
    "cancelled" or "error" (``error`` says why).
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


class BatchKVCache:
    """Keys and values of every layer for a batch of left-padded rows, [batch, heads, seq, head_dim] each.

    The model only calls ``update`` and ``get_seq_length``; the engine adds and removes rows between steps.
    Each layer's keys/values live in a buffer with spare columns, so that a decoding step writes one column
    instead of copying the whole cache (that copy was a fifth of a step's time at batch 8).
    """

    def __init__(self):
        self.keys: list[torch.Tensor] = []  # buffers [batch, heads, capacity, head_dim]
        self.values: list[torch.Tensor] = []
        self.lengths: list[int] = []  # columns in use, per layer

    def update(self, key, value, layer_idx, *args, **kwargs):
        if layer_idx == len(self.keys):
            self.keys.append(key)
            self.values.append(value)
            self.lengths.append(key.shape[2])
            return key, value
        start = self.lengths[layer_idx]
        end = start + key.shape[2]
        if end > self.keys[layer_idx].shape[2]:
            spare = max(64, end // 2)
            self.keys[layer_idx] = F.pad(self.keys[layer_idx][:, :, :start], (0, 0, 0, end - start + spare))
            self.values[layer_idx] = F.pad(self.values[layer_idx][:, :, :start], (0, 0, 0, end - start + spare))
        self.keys[layer_idx][:, :, start:end] = key
        self.values[layer_idx][:, :, start:end] = value
        self.lengths[layer_idx] = end
        return self.keys[layer_idx][:, :, :end], self.values[layer_idx][:, :, :end]

    def get_seq_length(self, layer_idx=0):
        return self.lengths[layer_idx] if layer_idx < len(self.lengths) else 0

    def _map(self, fn):
        """Replace every layer's keys and values with ``fn`` of the columns in use."""
        self.keys = [fn(t[:, :, :n]) for t, n in zip(self.keys, self.lengths)]
        self.values = [fn(t[:, :, :n]) for t, n in zip(self.values, self.lengths)]
        self.lengths = [t.shape[2] for t in self.keys]

    def keep_rows(self, rows: torch.Tensor):
        self._map(lambda t: t.index_select(0, rows))

    def drop_columns(self, count: int):
        """Forget the first ``count`` positions (padding in every row)."""
        self._map(lambda t: t[:, :, count:])

    def pad_left(self, count: int):
        self._map(lambda t: F.pad(t, (0, 0, count, 0)))

    def append_rows(self, other: "BatchKVCache"):
        """Add ``other``'s rows below these; both must already have the same length."""
        self._map(lambda t: t)
        other._map(lambda t: t)
        self.keys = [torch.cat(pair) for pair in zip(self.keys, other.keys)]
        self.values = [torch.cat(pair) for pair in zip(self.values, other.values)]


class RunningBatch:
    """The engine's state between steps: row i belongs to ``sequences[i]``.

    ``padding`` [batch, cached]: 1 for a real token, 0 for left padding. ``next_tokens`` [batch]: the tokens
    sampled last, to be fed in at the next step, and ``positions`` [batch, 2, 1] (or [batch, 1] without 2-D
    encoding) their GLM positions, which do not depend on the padding.
    """

    def __init__(self, sequence, cache, padding, next_tokens, positions):
        self.sequences = [sequence]
        self.cache, self.padding = cache, padding
        self.next_tokens, self.positions = next_tokens, positions
        self.settings = sampling_settings(self.sequences, padding.device)

    def __len__(self):
        return len(self.sequences)

    def merge(self, other: "RunningBatch"):
        """Add ``other``'s rows; the shorter side is left-padded to the longer one."""
        difference = self.padding.shape[1] - other.padding.shape[1]
        shorter = other if difference > 0 else self
        shorter.cache.pad_left(abs(difference))
        shorter.padding = F.pad(shorter.padding, (abs(difference), 0))
        self.cache.append_rows(other.cache)
        self.padding = torch.cat((self.padding, other.padding))
        self.positions = torch.cat((self.positions, other.positions))
        self.next_tokens = torch.cat((self.next_tokens, other.next_tokens))
        self.sequences += other.sequences
        self.settings = sampling_settings(self.sequences, self.padding.device)

    def keep(self, keep: list[bool]):
        """Keep the rows marked True, then drop the leading columns that are padding in every row."""
        rows = torch.tensor([i for i, k in enumerate(keep) if k], device=self.padding.device)
        self.sequences = [s for s, k in zip(self.sequences, keep) if k]
        self.settings = sampling_settings(self.sequences, self.padding.device)
        self.cache.keep_rows(rows)
        self.padding = self.padding.index_select(0, rows)
        self.positions = self.positions.index_select(0, rows)
        self.next_tokens = self.next_tokens.index_select(0, rows)
        unused = int(self.padding.any(dim=0).int().argmax())  # first column holding a real token
        if unused:
            self.cache.drop_columns(unused)
            self.padding = self.padding[:, unused:]


def sampling_settings(sequences: list[Sequence], device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The sampling settings of each row: temperature, top_p, top_k, each [batch]."""
    return (torch.tensor([s.temperature for s in sequences], device=device),
            torch.tensor([s.top_p for s in sequences], device=device),
            torch.tensor([s.top_k for s in sequences], device=device))


def sample_next_tokens(logits: torch.Tensor, temperature: torch.Tensor, top_p: torch.Tensor,
                       top_k: torch.Tensor) -> torch.Tensor:
    """One token per row of ``logits`` [batch, vocab] (fp32), each row with its own settings [batch]:
    temperature 0 = greedy (argmax), else temperature, then top-k (0 = off), then top-p (nucleus) sampling."""
    # a row with NaN/inf scores picks token 5, as the original's InvalidScoreLogitsProcessor does;
    # 0 * score is 0 when the score is finite and NaN otherwise: one sum per row finds them (isfinite().all()
    # took 7x as long, a tenth of a batch-8 step's sampling)
    invalid = (logits * 0).sum(dim=-1).isnan()
    if invalid.any():
        logits[invalid] = 0.0
        logits[invalid, 5] = 5e4
    sampled = temperature > 0
    if not sampled.any():
        return logits.argmax(dim=-1)
    every_row = bool(sampled.all())  # then neither the argmax nor the row selections are needed
    scores = logits
    if not every_row:
        scores, temperature, top_p, top_k = logits[sampled], temperature[sampled], top_p[sampled], top_k[sampled]
    vocab = logits.shape[-1]
    top_k = torch.where(top_k > 0, top_k.clamp(max=vocab), vocab)
    values, indices = (scores / temperature[:, None]).topk(int(top_k.max()), dim=-1)  # sorted, highest first
    rank = torch.arange(values.shape[-1], device=values.device)
    keep = rank < top_k[:, None]
    probs = F.softmax(values.masked_fill(~keep, float("-inf")), dim=-1)
    # nucleus: keep a token while the mass of the tokens ranked above it is below top_p (the first always)
    keep &= (probs.cumsum(dim=-1) - probs < top_p[:, None]) | (rank == 0)
    probs = probs.masked_fill(~keep, 0.0)
    chosen = indices.gather(-1, torch.multinomial(probs, num_samples=1)).squeeze(-1)
    if every_row:
        return chosen
    tokens = logits.argmax(dim=-1)
    tokens[sampled] = chosen
    return tokens


def default_engine_threads() -> int:
    """CPU threads an engine computes with by default: all cores but one, which the HTTP side (JSON,
    detokenizing, streams of events) needs for itself; generation threads sharing a core with it stall at
    every step."""
    return max(1, torch.get_num_threads() - 1)


class Engine:
    """Runs every submitted Sequence to its end on one background thread, batching them together.

    ``max_batch_size`` sequences decode together; more wait in a queue of at most ``max_waiting`` (then
    ``submit`` raises QueueFull). ``cancel`` takes effect at the next step boundary. ``threads`` is the
    number of CPU threads the steps compute with (None: torch's setting).
    """

    def __init__(self, model, *, max_batch_size: int = 32, max_waiting: int = 256, threads: int | None = None):
        self.model = model
        self.threads = threads
        self.max_batch_size = max_batch_size
        self.max_waiting = max_waiting
        eos = model.generation_config.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos])
        # a sequence that names no top_k samples as `model.chat` does: with the model's generation config
        self.default_top_k = model.generation_config.top_k or 0
        self.batch: RunningBatch | None = None  # touched by the engine thread only
        self.waiting: collections.deque = collections.deque()
        self.wakeup = threading.Condition()
        self.stopping = False
        self.thread = threading.Thread(target=self._run, name="chatglm-engine", daemon=True)
        # read by other threads while the engine thread updates them, so every key exists from the start
        self.counts = dict.fromkeys(["submitted", "prompt_tokens", "generated_tokens", "steps"]
                                    + [f"finished_{r}" for r in (STOP, LENGTH, CANCELLED, ERROR)], 0)

    # --- called from other threads ---

    def start(self):
        """Start the engine thread. Call it from the main thread: on CPU, torch ops in another thread ran
        10-20x slower (measured with libgomp on 2 cores: its idle workers spin against ours) until the main
        thread has run one parallel op itself, which is what the first line does."""
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

    def submit(self, sequence: Sequence):
        with self.wakeup:
            if self.stopping:
                raise QueueFull("the server is shutting down")
            if len(self.waiting) >= self.max_waiting:
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
        return {"running": running, "waiting": len(self.waiting), **self.counts}

    # --- the engine thread ---

    def _run(self):
        if self.threads:
            torch.set_num_threads(self.threads)
        with torch.inference_mode():
            while True:
                with self.wakeup:
                    while not self.stopping and not self.waiting and self.batch is None:
                        self.wakeup.wait()
                    if self.stopping:
                        break
                    free = self.max_batch_size - (len(self.batch) if self.batch is not None else 0)
                    joining = [self.waiting.popleft() for _ in range(min(free, len(self.waiting)))]
                try:
                    self._drop_cancelled()
                    for sequence in joining:
                        self._prefill(sequence)
                    if self.batch is not None:
                        self._decode_step()
                except Exception as exc:  # a whole-batch failure (e.g. out of memory): the server goes on
                    logger.exception("decoding step failed")
                    for sequence in self.batch.sequences if self.batch is not None else []:
                        self._finish(sequence, ERROR, f"{type(exc).__name__}: {exc}")
                    self.batch = None
        for sequence in list(self.waiting) + (self.batch.sequences if self.batch is not None else []):
            self._finish(sequence, CANCELLED)
        self.waiting.clear()
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

    def _prefill(self, sequence: Sequence):
        """Run the prompt alone (exactly as chat does), sample its first token, and merge it in. A failure
        here (a bad id, out of memory on a long prompt) fails this sequence only."""
        if sequence.cancel_requested:
            self._finish(sequence, CANCELLED)
            return
        model = self.model
        try:
            ids = torch.tensor([sequence.prompt_ids], device=model.device)  # [1, prompt]
            cache = BatchKVCache()
            logits = model(ids, position_ids=model.transformer.get_position_ids(ids), cache=cache,
                           use_cache=True).logits[:, -1].float()
            token = sample_next_tokens(logits, *sampling_settings([sequence], model.device))
            # the positions of the token just sampled, fed in at the next step
            positions = model.transformer.get_position_ids(torch.cat((ids, token[:, None]), dim=1),
                                                           past_length=ids.shape[1])
        except Exception as exc:
            logger.warning("prefill failed: %s: %s", type(exc).__name__, exc)
            self._finish(sequence, ERROR, f"{type(exc).__name__}: {exc}")
            return
        self.counts["prompt_tokens"] += len(sequence.prompt_ids)
        joined = RunningBatch(sequence, cache, torch.ones_like(ids), token, positions)
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
        tokens = sample_next_tokens(logits, *batch.settings)
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


class _LoopWaker:
    """Sets asyncio events of one event loop from the engine thread with one ``call_soon_threadsafe`` for
    all the events of a step: each call writes to the loop's self-pipe, and one per sequence per step took
    15% of the engine thread's time with 8 streaming clients."""

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


# what the tokenizer's space clean-up may still rewrite when more text follows (" n" + "'t" -> "n't")
_CLEANUP_PATTERNS = (" n't", " 'm", " 's", " 've", " 're", " ' ")
_TRAINING_DATE = "[[训练时间]]"  # process_response replaces it once it is complete


class TextStream:
    """Turns the growing list of generated ids of one answer into text pieces that add up to the final
    answer exactly as ``model.chat`` returns it (decoded, then cleaned by ``process_response``).

    Each update decodes and cleans the ids from the last newline token on (the lines before it were decoded
    and cleaned once: text split just before a newline decodes and cleans the same piece by piece as whole,
    see ``clean_inside``), so an update costs the length of the current line, not of the whole answer. It
    then holds back the tail while that could still change: an incomplete UTF-8 character, a half-width
    mark that becomes full-width if a CJK character follows, the start of the training-date placeholder or
    of a stop string, and the start of a tokenizer space clean-up. ``stop`` strings end the answer before
    their first occurrence.
    """

    def __init__(self, tokenizer, stop: Seq[str] = ()):
        self.tokenizer = tokenizer
        self.stop = [s for s in stop if s]
        self.text = ""  # what has been handed out so far
        self.stopped = False  # a stop string was found
        newline = tokenizer.convert_tokens_to_ids("<n>")
        self.newline_id = newline if tokenizer.decode([newline]) == "\n" else None  # None: decode everything
        self.lines_end = 0  # ids[:lines_end] (up to just before a newline token) are decoded in lines_text
        self.lines_text = ""
        self.scanned = 0  # ids[:scanned] were searched for newline tokens

    def update(self, ids: Seq[int]) -> str:
        """The new piece of text after ``ids`` (all ids so far, each call extending the last); sets
        ``stopped`` at a stop string."""
        text = self._clean(ids)
        return self._advance(text if self.stopped else self._stable_part(text))

    def finish(self, ids: Seq[int]) -> str:
        """The last piece once generation has ended; ``text`` then holds the whole answer."""
        text = self._clean(ids)
        piece = self._advance(text)
        self.text = text
        return piece

    def _clean(self, ids):
        last_newline = self.lines_end
        for index in range(self.scanned, len(ids)):
            if ids[index] == self.newline_id:
                last_newline = index
        self.scanned = len(ids)
        if last_newline > self.lines_end:
            self.lines_text += self._decode(ids[self.lines_end:last_newline])
            self.lines_end = last_newline
        text = (self.lines_text + self._decode(ids[self.lines_end:])).strip()  # = process_response(decode(ids))
        cut = min((i for i in (text.find(s) for s in self.stop) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            return text[:cut]
        return text

    def _decode(self, ids) -> str:
        return clean_inside(self.tokenizer.decode(list(ids)))

    def _advance(self, text: str) -> str:
        if not text.startswith(self.text):  # cannot take back what was sent; should not happen
            return ""
        piece, self.text = text[len(self.text):], text
        return piece

    def _stable_part(self, text: str) -> str:
        text = text.rstrip("\ufffd")  # an incomplete UTF-8 character
        held = int(text[-1:] in (",", "!", ":", ";", "?"))
        for pattern in (_TRAINING_DATE, *self.stop, *_CLEANUP_PATTERNS):
            for length in range(min(len(pattern) - 1, len(text)), held, -1):
                if text.endswith(pattern[:length]):
                    held = length
                    break
        return text[: len(text) - held]
