"""The bundled demo tokenizer `chatglm-demo/ice_text.model` has the layout of the real ice_text.model
(special pieces, whitespace pieces, byte fallback), checked with sentencepiece directly and through
ChatGLMTokenizer."""


import pytest
import sentencepiece as spm
from conftest import REPO_ROOT

import chatglm

MODEL_FILE = REPO_ROOT / "chatglm-demo" / "ice_text.model"

CONTROL = ["[MASK]", "[gMASK]", "[sMASK]", "<unused_0>", "<sop>", "<eop>", "<ENC>", "<dBLOCK>"]
USER = ["<|tab|>"] + [f"<|blank_{i}|>" for i in range(2, 81)]



@pytest.fixture(scope="module")
def proto():
    from sentencepiece import sentencepiece_model_pb2

    m = sentencepiece_model_pb2.ModelProto()
    m.ParseFromString(MODEL_FILE.read_bytes())
    return m


@pytest.fixture(scope="module")
def sp():
    return spm.SentencePieceProcessor(model_file=str(MODEL_FILE))


def type_name(piece):
    from sentencepiece import sentencepiece_model_pb2

    return sentencepiece_model_pb2.ModelProto.SentencePiece.Type.Name(piece.type)


def test_model_settings(proto):
    assert proto.trainer_spec.model_type == proto.trainer_spec.UNIGRAM
    assert proto.trainer_spec.byte_fallback
    assert proto.normalizer_spec.add_dummy_prefix
    assert proto.normalizer_spec.name == "nmt_nfkc"
    assert len(proto.normalizer_spec.precompiled_charsmap) > 0


def test_special_ids(proto):
    pieces = proto.pieces
    assert [(p.piece, type_name(p)) for p in pieces[:6]] == [
        ("<unk>", "UNKNOWN"), ("<s>", "CONTROL"), ("</s>", "CONTROL"), ("<pad>", "CONTROL"),
        ("<n>", "USER_DEFINED"), ("▁", "NORMAL"),
    ]


def test_layout_blocks(proto):
    pieces = [(p.piece, type_name(p)) for p in proto.pieces]
    n = len(pieces)
    assert 2000 <= n <= 12000
    # 256 byte pieces at the very end, in order
    assert pieces[n - 256:] == [(f"<0x{b:02X}>", "BYTE") for b in range(256)]
    # before them <|tab|>, <|blank_2|> ... <|blank_80|>, before those the eight CONTROL pieces
    user_start = n - 256 - len(USER)
    assert pieces[user_start: n - 256] == [(u, "USER_DEFINED") for u in USER]
    control_start = user_start - len(CONTROL)
    assert pieces[control_start:user_start] == [(c, "CONTROL") for c in CONTROL]
    # everything between 6 and the CONTROL block is an ordinary piece
    assert all(t == "NORMAL" for _, t in pieces[6:control_start])
    assert control_start > 1000


def test_sentencepiece_behaviour(sp):
    # NFKC: full-width punctuation becomes half-width on input
    assert sp.encode("你好，世界！", out_type=str) == sp.encode("你好,世界!", out_type=str)
    # characters of the corpus are pieces; an emoji falls back to its UTF-8 bytes
    assert sp.unk_id() == 0 and sp.piece_to_id("<n>") == 4 and sp.piece_to_id("▁") == 5
    pieces = sp.encode("😀", out_type=str)
    assert [p for p in pieces if p != "▁"] == ["<0xF0>", "<0x9F>", "<0x98>", "<0x80>"]
    assert sp.decode(sp.encode("😀 ok")) == "😀 ok"
    assert sp.unk_id() not in sp.encode("你好！我是一个小模型。How can I help you?")


def test_through_chatglm_tokenizer(sp):
    tok = chatglm.ChatGLMTokenizer(vocab_file=str(MODEL_FILE))
    assert tok.vocab_size == sp.get_piece_size()
    ids = lambda text: tok.encode(text, add_special_tokens=False)  # noqa: E731
    assert 4 in ids("a\nb")
    assert tok.convert_tokens_to_ids("<|tab|>") in ids("a\tb")
    assert tok.convert_tokens_to_ids("<|blank_4|>") in ids("a    b")
    with_specials = tok.encode("你好")
    assert with_specials[-2:] == [tok.convert_tokens_to_ids("[gMASK]"), tok.convert_tokens_to_ids("<sop>")]
    for text in ["你好，我是 ChatGLM-6B 的演示模型。", "def add(a, b):\n    return a + b\n\n\tx = 1",
                 "Hello world! 😀"]:
        decoded = tok.decode(ids(text))
        # NFKC turns the full-width comma into a half-width one; everything else round-trips
        assert decoded == text.replace("，", ",")
