"""Text of a growing answer, piece by piece, as ``model.chat`` would return it whole."""

from collections.abc import Sequence as Seq

from ..generation import TRAINING_DATE, clean_inside

# what the tokenizer's space clean-up may still rewrite when more text follows (" n" + "'t" -> "n't")
_CLEANUP_PATTERNS = (" n't", " 'm", " 's", " 've", " 're", " ' ")


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
        for pattern in (TRAINING_DATE, *self.stop, *_CLEANUP_PATTERNS):
            for length in range(min(len(pattern) - 1, len(text)), held, -1):
                if text.endswith(pattern[:length]):
                    held = length
                    break
        return text[: len(text) - held]
