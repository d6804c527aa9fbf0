"""Train the SentencePiece tokenizer of the demo checkpoint on the demo corpus.

The result has exactly the piece layout of the real ChatGLM-6B `ice_text.model`:

    0-3   <unk> <s> </s> <pad>          (UNKNOWN, CONTROL, CONTROL, CONTROL)
    4     <n>                           (USER_DEFINED)
    5     ▁                             (NORMAL)
    6..   ordinary pieces               (NORMAL, best score first)
    then  [MASK] [gMASK] [sMASK] <unused_0> <sop> <eop> <ENC> <dBLOCK>   (CONTROL)
    then  <|tab|> <|blank_2|> ... <|blank_80|>                          (USER_DEFINED)
    last  <0x00> ... <0xFF>                                              (BYTE)

Unigram model, NFKC normalisation (the nmt_nfkc rule set), dummy prefix on, byte fallback on, every character
of the corpus covered. The training text is preprocessed like ChatGLMTokenizer does before SentencePiece
("\\n" -> <n>, "\\t" -> <|tab|>, runs of 2-80 spaces -> <|blank_i|>), and includes the chat prompts exactly as
`chat()` builds them. Deterministic: one thread, fixed seed, input in file order.

Usage:
    python demo/build_tokenizer.py            # reads demo/data/train.jsonl + dev.jsonl, writes demo/work/ice_text.model
"""

import argparse
import json
import os
import tempfile

import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as model_pb2

from chatglm.generation import build_prompt
from chatglm.tokenization_chatglm import encode_whitespace

HERE = os.path.dirname(os.path.abspath(__file__))

CONTROL = ["[MASK]", "[gMASK]", "[sMASK]", "<unused_0>", "<sop>", "<eop>", "<ENC>", "<dBLOCK>"]
TAB = "<|tab|>"
BLANKS = [f"<|blank_{i}|>" for i in range(2, 81)]
NEWLINE = "<n>"
# Meta pieces (unk/bos/eos/pad), <n>, the control and user-defined pieces and the 256 bytes.
NUM_SPECIAL = 4 + 1 + len(CONTROL) + 1 + len(BLANKS) + 256


def corpus_lines(paths):
    for path in paths:
        with open(path, encoding="utf-8") as f:
            for line in f:
                row = json.loads(line)
                yield encode_whitespace(build_prompt(row["prompt"], row["history"]))
                yield encode_whitespace(row["response"])


def relayout(proto):
    """Reorder the trained pieces into the ChatGLM layout (see the module docstring)."""
    P = model_pb2.ModelProto.SentencePiece
    by_type = {}
    for p in proto.pieces:
        by_type.setdefault(p.type, []).append(p)
    pieces = {p.piece: p for p in proto.pieces}

    def new(piece, type_, score=0.0):
        p = P()
        p.piece, p.type, p.score = piece, type_, score
        return p

    normals = [p for p in by_type[P.NORMAL]]
    space = pieces.get("▁")
    if space is None:  # never expected with dummy prefix on, but keep the layout valid regardless
        space = new("▁", P.NORMAL, min(p.score for p in normals) - 1.0)
    normals = [p for p in normals if p.piece != "▁"]
    normals.sort(key=lambda p: -p.score)  # stable: keeps the trainer's order among equal scores

    layout = [new("<unk>", P.UNKNOWN), new("<s>", P.CONTROL), new("</s>", P.CONTROL), new("<pad>", P.CONTROL),
              new(NEWLINE, P.USER_DEFINED), space]
    layout += normals
    layout += [new(c, P.CONTROL) for c in CONTROL]
    layout += [new(u, P.USER_DEFINED) for u in [TAB] + BLANKS]
    layout += [new(f"<0x{b:02X}>", P.BYTE) for b in range(256)]

    out = model_pb2.ModelProto()
    out.CopyFrom(proto)
    del out.pieces[:]
    out.pieces.extend([model_pb2.ModelProto.SentencePiece(piece=p.piece, score=p.score, type=p.type) for p in layout])
    # Record the final ids of the meta pieces (unchanged: 0-3).
    out.trainer_spec.unk_id, out.trainer_spec.bos_id, out.trainer_spec.eos_id, out.trainer_spec.pad_id = 0, 1, 2, 3
    out.trainer_spec.vocab_size = len(layout)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", nargs="+", default=[os.path.join(HERE, "data", "train.jsonl"),
                                                  os.path.join(HERE, "data", "dev.jsonl")])
    ap.add_argument("--vocab-size", type=int, default=8000,
                    help="target total number of pieces, special ones included (the trainer may stop earlier)")
    ap.add_argument("--out", default=os.path.join(HERE, "work", "ice_text.model"))
    args = ap.parse_args()

    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        text_path = os.path.join(tmp, "sp_corpus.txt")
        with open(text_path, "w", encoding="utf-8") as f:
            for line in corpus_lines(args.data):
                f.write(line + "\n")
        prefix = os.path.join(tmp, "sp")
        spm.SentencePieceTrainer.train(
            input=text_path,
            model_prefix=prefix,
            model_type="unigram",
            vocab_size=args.vocab_size,
            hard_vocab_limit=False,
            character_coverage=1.0,
            normalization_rule_name="nmt_nfkc",
            add_dummy_prefix=True,
            remove_extra_whitespaces=True,
            byte_fallback=True,
            split_digits=True,
            control_symbols=CONTROL,
            user_defined_symbols=[NEWLINE, TAB] + BLANKS,
            unk_id=0, bos_id=1, eos_id=2, pad_id=3,
            unk_piece="<unk>", bos_piece="<s>", eos_piece="</s>", pad_piece="<pad>",
            max_sentence_length=8192,
            num_threads=1,
            seed_sentencepiece_size=200000,
            shuffle_input_sentence=False,
            minloglevel=2,
        )
        proto = model_pb2.ModelProto()
        with open(prefix + ".model", "rb") as f:
            proto.ParseFromString(f.read())

    proto = relayout(proto)
    data = proto.SerializeToString()
    tmp_out = args.out + ".tmp"
    with open(tmp_out, "wb") as f:
        f.write(data)
    os.replace(tmp_out, args.out)

    sp = spm.SentencePieceProcessor(model_file=args.out)
    n = sp.get_piece_size()
    print(f"wrote {args.out}: {n} pieces ({n - NUM_SPECIAL} ordinary); "
          f"[MASK]={sp.piece_to_id('[MASK]')} [gMASK]={sp.piece_to_id('[gMASK]')} <sop>={sp.piece_to_id('<sop>')} "
          f"<eop>={sp.piece_to_id('<eop>')}")


if __name__ == "__main__":
    main()
