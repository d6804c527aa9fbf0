"""The ChatGLM-6B tokenizer: SentencePiece `ice_text.model` plus GLM's whitespace and special-token rules."""

import os
import re
import shutil

import sentencepiece as spm
import torch
from transformers import PreTrainedTokenizer
from transformers.utils import PaddingStrategy

from .positions import glm_position_ids

VOCAB_FILE = "ice_text.model"
MAX_BLANK = 80  # runs of 2..80 spaces have their own pieces


def encode_whitespace(text):
    """Turn newlines, tabs and runs of spaces into the dedicated pieces (longest run first)."""
    text = text.replace("\n", "<n>").replace("\t", "<|tab|>")
    for n in range(MAX_BLANK, 1, -1):
        text = text.replace(" " * n, f"<|blank_{n}|>")
    return text


_WHITESPACE_PIECE = re.compile(r"<n>|<\|tab\|>|<\|blank_(\d+)\|>")


def decode_whitespace(text):
    def restore(match):
        if match.group(0) == "<n>":
            return "\n"
        if match.group(0) == "<|tab|>":
            return "\t"
        return " " * int(match.group(1))

    return _WHITESPACE_PIECE.sub(restore, text)


class ChatGLMTokenizer(PreTrainedTokenizer):
    """Tokenizer of ChatGLM-6B.

    Prompts end with `[gMASK] <sop>`; a pair adds `b + <eop>`. Padding is on the left and, when a
    batch is padded, `position_ids` of shape [2, seq] (GLM's absolute and block positions) are
    returned next to a standard 2-D `attention_mask`; the model builds the GLM attention mask itself.
    """

    vocab_files_names = {"vocab_file": VOCAB_FILE}
    model_input_names = ["input_ids", "attention_mask", "position_ids"]

    def __init__(
        self,
        vocab_file,
        do_lower_case=False,
        remove_space=False,
        bos_token="<sop>",
        eos_token="<eop>",
        end_token="</s>",
        mask_token="[MASK]",
        gmask_token="[gMASK]",
        padding_side="left",
        pad_token="<pad>",
        unk_token="<unk>",
        num_image_tokens=0,
        clean_up_tokenization_spaces=True,
        **kwargs,
    ):
        if not vocab_file or not os.path.isfile(vocab_file):
            raise ValueError(
                f"ChatGLM tokenizer file {VOCAB_FILE!r} not found (looked for {vocab_file!r}); "
                "the model folder must contain the SentencePiece model that came with the weights."
            )
        # transformers 5 lifts unknown `*_token` entries of tokenizer_config.json out of the kwargs;
        # these two are plain strings here, not special tokens.
        named = kwargs.pop("model_specific_special_tokens", None) or {}
        end_token = named.get("end_token", end_token)
        gmask_token = named.get("gmask_token", gmask_token)
        # The base class asks for the vocabulary during its own __init__, so load it first.
        self.vocab_file = vocab_file
        self.sp = spm.SentencePieceProcessor(model_file=vocab_file)
        self.num_image_tokens = num_image_tokens
        self.do_lower_case = do_lower_case
        self.remove_space = remove_space
        self.end_token = end_token
        self.gmask_token = gmask_token
        super().__init__(
            do_lower_case=do_lower_case,
            remove_space=remove_space,
            bos_token=bos_token,
            eos_token=eos_token,
            mask_token=mask_token,
            padding_side=padding_side,
            pad_token=pad_token,
            unk_token=unk_token,
            num_image_tokens=num_image_tokens,
            clean_up_tokenization_spaces=clean_up_tokenization_spaces,
            **kwargs,
        )
        # Saved in tokenizer_config.json but, as in the original, not HF special tokens: "[gMASK]" and
        # "</s>" in input text stay ordinary text.
        self.init_kwargs.update(end_token=end_token, gmask_token=gmask_token)
        # Literal special tokens in text (surrounding whitespace swallowed), as the original does.
        literals = "|".join(re.escape(t) for t in self.all_special_tokens)
        self._special_split = re.compile(rf"\s*({literals})\s*")

    # --- vocabulary -------------------------------------------------------------------------

    @property
    def vocab_size(self):
        return self.sp.get_piece_size() + self.num_image_tokens

    def get_vocab(self):
        return {self._convert_id_to_token(i): i for i in range(self.vocab_size)}

    @property
    def gmask_token_id(self):
        return self._convert_token_to_id(self.gmask_token)

    @property
    def end_token_id(self):
        return self._convert_token_to_id(self.end_token)

    def _convert_token_to_id(self, token):
        if token.startswith("<image_") and token[7:-1].isdigit():
            return int(token[7:-1])
        return self.sp.piece_to_id(token) + self.num_image_tokens

    def _convert_id_to_token(self, index):
        if index < self.num_image_tokens:
            return f"<image_{index}>"
        return self.sp.id_to_piece(index - self.num_image_tokens)

    # --- encoding ---------------------------------------------------------------------------

    def tokenize(self, text, **kwargs):
        tokens = []
        for chunk in self._special_split.split(text):
            if chunk in self.all_special_tokens:
                tokens.append(chunk)
            elif chunk:
                tokens.extend(self._tokenize(chunk))
        return tokens

    def _tokenize(self, text, **kwargs):
        if self.remove_space:
            text = " ".join(text.strip().split())
        if self.do_lower_case:
            text = text.lower()
        return self.sp.encode(encode_whitespace(text), out_type=str)

    def build_inputs_with_special_tokens(self, token_ids_0, token_ids_1=None):
        """GLM puts its special tokens at the end: `a [gMASK] <sop>` and `a [gMASK] <sop> b <eop>`."""
        ids = token_ids_0 + [self.gmask_token_id, self.bos_token_id]
        if token_ids_1 is not None:
            ids = ids + token_ids_1 + [self.eos_token_id]
        return ids

    # --- decoding ---------------------------------------------------------------------------

    def _decode(self, token_ids, skip_special_tokens=False, clean_up_tokenization_spaces=None, **kwargs):
        if isinstance(token_ids, int):
            token_ids = [token_ids]
        dropped = {self.pad_token_id}
        if skip_special_tokens:
            dropped.update(self.all_special_ids)
        ids = [i for i in token_ids if i not in dropped]
        vocab_size = self.vocab_size  # a property calling into SentencePiece: once, not once per id
        if ids and not 0 <= min(ids) <= max(ids) < vocab_size:
            bad = next(i for i in ids if not 0 <= i < vocab_size)
            raise IndexError(f"token id {bad} is out of range for this tokenizer (vocabulary size {vocab_size})")
        text = self.sp.decode([i - self.num_image_tokens for i in ids if i >= self.num_image_tokens])
        text = decode_whitespace(text)
        if clean_up_tokenization_spaces is None:
            clean_up_tokenization_spaces = self.clean_up_tokenization_spaces
        return self.clean_up_tokenization(text) if clean_up_tokenization_spaces else text

    def convert_tokens_to_string(self, tokens):
        return decode_whitespace(self.sp.decode_pieces(tokens))

    # --- padding ----------------------------------------------------------------------------

    def _glm_position_ids(self, ids):
        """[2, len] positions of one unpadded sequence. Unlike the model, this tokenizer prefers `[MASK]` over
        `[gMASK]` (as the original); without `<sop>` everything is context, without a mask token the
        absolute positions keep counting."""
        mask_id = self.mask_token_id if self.mask_token_id in ids else self.gmask_token_id
        positions = glm_position_ids(
            len(ids),
            context_lengths=torch.tensor([ids.index(self.bos_token_id) if self.bos_token_id in ids else len(ids)]),
            mask_positions=torch.tensor([ids.index(mask_id) if mask_id in ids else 0]),
            counting=torch.tensor([mask_id not in ids]),
        )
        return positions[0].tolist()

    def _pad(
        self,
        encoded_inputs,
        max_length=None,
        padding_strategy=PaddingStrategy.DO_NOT_PAD,
        pad_to_multiple_of=None,
        padding_side=None,
        return_attention_mask=None,
    ):
        if (padding_side or self.padding_side) != "left":
            raise ValueError("ChatGLM pads on the left only (the prompt must end with [gMASK] <sop>)")
        if padding_strategy == PaddingStrategy.DO_NOT_PAD:
            return encoded_inputs
        ids = encoded_inputs[self.model_input_names[0]]
        if padding_strategy == PaddingStrategy.LONGEST:
            max_length = len(ids)
        if max_length is not None and pad_to_multiple_of is not None and max_length % pad_to_multiple_of:
            max_length = (max_length // pad_to_multiple_of + 1) * pad_to_multiple_of
        difference = max(max_length - len(ids), 0)

        if "position_ids" not in encoded_inputs:
            encoded_inputs["position_ids"] = self._glm_position_ids(list(ids))
        encoded_inputs["position_ids"] = [[0] * difference + row for row in encoded_inputs["position_ids"]]
        if return_attention_mask is not False:
            mask = encoded_inputs.get("attention_mask", [1] * len(ids))
            encoded_inputs["attention_mask"] = [0] * difference + list(mask)
        if "token_type_ids" in encoded_inputs:
            encoded_inputs["token_type_ids"] = [self.pad_token_type_id] * difference + encoded_inputs["token_type_ids"]
        if "special_tokens_mask" in encoded_inputs:
            encoded_inputs["special_tokens_mask"] = [1] * difference + encoded_inputs["special_tokens_mask"]
        encoded_inputs[self.model_input_names[0]] = [self.pad_token_id] * difference + list(ids)
        return encoded_inputs

    # --- saving -----------------------------------------------------------------------------

    def save_vocabulary(self, save_directory, filename_prefix=None):
        name = (filename_prefix + "-" if filename_prefix else "") + VOCAB_FILE
        path = os.path.join(save_directory, name) if os.path.isdir(save_directory) else save_directory
        if os.path.abspath(path) != os.path.abspath(self.vocab_file):
            shutil.copyfile(self.vocab_file, path)
        return (path,)
