"""ptuning/: data checks, preprocessing layout and metrics (no model needed)."""

import json
import sys
from types import SimpleNamespace

import pytest
from conftest import GOLDENS_DIR, REPO_ROOT

from ptuning import data_utils, metrics

PTUNING = REPO_ROOT / "ptuning"

# ids of the goldens' tokenizer (tests/goldens/README.md)
GMASK, SOP, EOP, PAD = 9967, 9970, 9971, 3


@pytest.fixture(scope="module")
def tok():
    import chatglm

    return chatglm.ChatGLMTokenizer.from_pretrained(str(GOLDENS_DIR / "tokenizer"))


@pytest.fixture(scope="module")
def golden():
    return json.loads((GOLDENS_DIR / "tokenizer_golden.json").read_text(encoding="utf-8"))


def data_args(**kw):
    base = dict(prompt_column="content", response_column="summary", history_column=None, source_prefix="",
                max_source_length=16, max_target_length=12, val_max_target_length=12, ignore_pad_token_for_loss=True)
    base.update(kw)
    return SimpleNamespace(**base)


# ---------------------------------------------------------------------------------------------------------
# layout
# ---------------------------------------------------------------------------------------------------------


def test_train_layout_token_for_token(tok):
    prompt, answer = "类型#上衣*颜色#白色", "白色清新干净"
    a = tok.encode(prompt, add_special_tokens=False)
    b = tok.encode(answer, add_special_tokens=False)
    assert len(a) <= 47 and len(b) <= 30
    ids, labels = data_utils.build_train_features(tok, prompt, answer, 48, 32)
    expected_ids = a + [GMASK, SOP] + b + [EOP]
    expected_ids += [PAD] * (80 - len(expected_ids))
    expected_labels = [-100] * (len(a) + 1) + [SOP] + b + [EOP]
    expected_labels += [-100] * (80 - len(expected_labels))
    assert ids == expected_ids
    assert labels == expected_labels
    assert len(ids) == len(labels) == 48 + 32
    # same as the tokenizer's own pair layout
    assert tok.build_inputs_with_special_tokens(a, b) == a + [GMASK, SOP] + b + [EOP]


def test_train_truncation(tok):
    prompt = "晚上睡不着应该怎么办？我试过数羊，但是没有用。" * 3
    answer = "以下是一些可能有帮助的方法：保持规律的作息。" * 3
    ids, labels = data_utils.build_train_features(tok, prompt, answer, 8, 6)
    a = tok.encode(prompt, add_special_tokens=False)[:7]
    b = tok.encode(answer, add_special_tokens=False)[:4]
    assert ids == a + [GMASK, SOP] + b + [EOP]  # 7 + 2 + 4 + 1 = 14 = 8 + 6: no padding left
    assert labels == [-100] * 8 + [SOP] + b + [EOP]


def test_ignore_pad_token_for_loss_off(tok):
    ids, labels = data_utils.build_train_features(tok, "你好", "你好", 8, 8, ignore_pad_token_for_loss=False)
    assert labels[-1] == PAD and ids[-1] == PAD


def test_eval_layout_matches_tokenizer_truncation(tok, golden):
    g = golden["truncation"]
    src, tgt = data_utils.build_eval_features(tok, g["text"], "答案是二。", g["max_length"], 6)
    assert src == g["input_ids"]  # the original tokenizer(text, max_length, truncation=True)
    assert tgt == tok.encode("答案是二。", add_special_tokens=False)[:4] + [GMASK, SOP]


def test_chat_prompts_match_original(tok, golden):
    for case in golden["chat_prompts"]:
        history = case["history"] or []
        if not history:
            continue
        prompt = data_utils.chat_prompt(case["query"], history)
        assert prompt == case["prompt"]
        src, _ = data_utils.build_eval_features(tok, prompt, "x", 1024, 8)
        assert src == case["prompt_input_ids"]


def test_preprocessors_columns_prefix_history(tok):
    args = data_args(prompt_column="prompt", response_column="response", history_column="history",
                     source_prefix="P:", max_source_length=64, max_target_length=16, val_max_target_length=16)
    train_fn, eval_fn = data_utils.make_preprocessors(tok, args)
    batch = {"prompt": ["问题", "", "第二"], "response": ["回答", "空", "答二"], "history": [[], [], [["q", "a"]]]}
    train = train_fn(batch)
    assert len(train["input_ids"]) == 2  # the empty prompt is skipped
    # training uses the round layout whenever a history column is given (as the original)
    expected0 = tok.encode("P:[Round 0]\n问：问题\n答：", add_special_tokens=False)
    assert train["input_ids"][0][: len(expected0)] == expected0
    expected1 = tok.encode("P:[Round 0]\n问：q\n答：a\n[Round 1]\n问：第二\n答：", add_special_tokens=False)
    assert train["input_ids"][1][: len(expected1) + 2] == expected1 + [GMASK, SOP]
    ev = eval_fn(batch)
    # evaluation: plain query when the history is empty
    assert ev["input_ids"][0] == tok.encode("P:问题", add_special_tokens=False) + [GMASK, SOP]
    assert ev["input_ids"][1] == expected1 + [GMASK, SOP]


def test_collator_train_and_eval(tok):
    coll = data_utils.ChatGLMCollator(tok)
    ids, labels = data_utils.build_train_features(tok, "你好", "你好", 8, 8)
    batch = coll([{"input_ids": ids, "labels": labels}] * 2)
    assert batch["input_ids"].shape == (2, 16) and set(batch) == {"input_ids", "labels"}
    f1 = data_utils.build_eval_features(tok, "你好", "好", 16, 8)
    f2 = data_utils.build_eval_features(tok, "晚上睡不着应该怎么办", "多休息", 16, 8)
    batch = coll([{"input_ids": f1[0], "labels": f1[1]}, {"input_ids": f2[0], "labels": f2[1]}])
    width = len(f2[0])
    assert batch["input_ids"].shape == (2, width)
    assert batch["input_ids"][0].tolist() == [PAD] * (width - len(f1[0])) + f1[0]  # left padding
    assert batch["attention_mask"].shape == (2, width)
    assert batch["attention_mask"][0].tolist() == [0] * (width - len(f1[0])) + [1] * len(f1[0])
    assert batch["position_ids"].shape == (2, 2, width)
    # row 0: positions, <sop> at the mask position; row 1: block positions
    n = len(f1[0])
    assert batch["position_ids"][0, 0].tolist()[-n:] == list(range(n - 1)) + [n - 2]
    assert batch["position_ids"][0, 1].tolist()[-n:] == [0] * (n - 1) + [1]
    assert batch["labels"].shape[0] == 2


# ---------------------------------------------------------------------------------------------------------
# bad data
# ---------------------------------------------------------------------------------------------------------


def write(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


@pytest.mark.parametrize(
    "lines, line_no, words",
    [
        (['{"content": "a", "summary": "b"}', '{"content": "a", "summary": '], 2, "invalid JSON"),
        (['{"content": "a", "summary": "b"}', '', '{"content": "a"}'], 3, 'missing column "summary"'),
        (['{"content": 5, "summary": "b"}'], 1, 'column "content" must be a string'),
        (['{"content": "a", "summary": "b"}', '"just text"'], 2, "expected a JSON object"),
    ],
)
def test_bad_json_lines(tmp_path, lines, line_no, words):
    path = write(tmp_path / "bad.json", lines)
    with pytest.raises(data_utils.DataFileError) as e:
        data_utils.read_data_file(path, "content", "summary")
    msg = str(e.value)
    assert msg.startswith(f"{path}:{line_no}:"), msg
    assert words in msg


def test_bad_history(tmp_path):
    path = write(tmp_path / "chat.json", ['{"prompt": "a", "response": "b", "history": [["q", "a"]]}',
                                          '{"prompt": "a", "response": "b", "history": "oops"}'])
    with pytest.raises(data_utils.DataFileError, match=r"chat.json:2: column \"history\" must be a list"):
        data_utils.read_data_file(path, "prompt", "response", "history")
    path = write(tmp_path / "chat2.json", ['{"prompt": "a", "response": "b", "history": [["q"]]}'])
    with pytest.raises(data_utils.DataFileError, match=r"chat2.json:1: column \"history\" item 0"):
        data_utils.read_data_file(path, "prompt", "response", "history")


def test_csv_and_good_file(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("content,summary\nx,y\n", encoding="utf-8")
    assert data_utils.read_data_file(str(path), "content", "summary") == [{"content": "x", "summary": "y"}]
    with pytest.raises(data_utils.DataFileError, match="missing column \"summary_x\" in the CSV header"):
        data_utils.read_data_file(str(path), "content", "summary_x")
    rows = data_utils.read_data_file(str(PTUNING / "data" / "AdvertiseGen_sample" / "dev.json"), "content", "summary")
    assert len(rows) == 100


def test_main_rejects_bad_file_before_loading_model(tmp_path):
    from ptuning import main as ptuning_main

    bad = write(tmp_path / "train.json", ['{"content": "a", "summary": "b"}', '{"content": "a", "summary": 3}'])
    # the model folder does not exist: the data error comes first
    with pytest.raises(data_utils.DataFileError, match=f"{bad}:2: column \"summary\" must be a string"):
        ptuning_main.main(["--do_train", "--train_file", bad, "--prompt_column", "content", "--response_column",
                           "summary", "--model_name_or_path", str(tmp_path / "no-such-model"), "--output_dir",
                           str(tmp_path / "out"), "--use_cpu", "--report_to", "none"])


# ---------------------------------------------------------------------------------------------------------
# metrics
# ---------------------------------------------------------------------------------------------------------


def test_metrics_values_and_empty():
    s = metrics.score_pair("这款衬衫简约大方", "这款衬衫简约大方，白色清新")
    assert set(s) == {"rouge-1", "rouge-2", "rouge-l", "bleu-4"}
    assert 0 < s["bleu-4"] < 100 and 0 < s["rouge-l"] < 100
    same = metrics.score_pair("白色清新干净", "白色清新干净")
    assert same["rouge-1"] == pytest.approx(100.0) and same["bleu-4"] == pytest.approx(100.0)
    for pred, label in (("", "白色"), ("白色", ""), ("", ""), ("  ", "白色")):
        assert metrics.score_pair(pred, label) == {"rouge-1": 0.0, "rouge-2": 0.0, "rouge-l": 0.0, "bleu-4": 0.0}
    avg = metrics.score_texts(["白色清新干净", ""], ["白色清新干净", "x"])
    assert avg["rouge-1"] == pytest.approx(50.0)


def test_metrics_match_direct_computation():
    import jieba
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
    from rouge_chinese import Rouge

    pred, label = "宽松的版型不挑身材，白色清新", "宽松版型穿着自在舒适，纯净的白色百搭又耐看"
    r = Rouge().get_scores(" ".join(jieba.cut(pred)), " ".join(jieba.cut(label)))[0]
    b = sentence_bleu([list(label)], list(pred), smoothing_function=SmoothingFunction().method3)
    s = metrics.score_pair(pred, label)
    assert s["rouge-1"] == round(r["rouge-1"]["f"] * 100, 4)
    assert s["rouge-2"] == round(r["rouge-2"]["f"] * 100, 4)
    assert s["rouge-l"] == round(r["rouge-l"]["f"] * 100, 4)
    assert s["bleu-4"] == round(b * 100, 4)


def test_sample_data_is_reproducible(tmp_path):
    import subprocess

    subprocess.run([sys.executable, str(PTUNING / "data" / "make_sample.py"), "--out", str(tmp_path)], check=True,
                   capture_output=True)
    for rel in ("AdvertiseGen_sample/train.json", "AdvertiseGen_sample/dev.json", "chat_sample/train.json",
                "chat_sample/dev.json"):
        assert (tmp_path / rel).read_bytes() == (PTUNING / "data" / rel).read_bytes(), rel
    lines = (tmp_path / "AdvertiseGen_sample/train.json").read_text(encoding="utf-8").splitlines()
    rows = [json.loads(line) for line in lines]
    assert len(rows) == 1000 and all(r["content"].startswith("类型#") and r["summary"] for r in rows)


def test_arguments_cli_and_json_config(tmp_path):
    from ptuning import main as ptuning_main

    common = {"model_name_or_path": "m", "train_file": "t.json", "prompt_column": "content",
              "response_column": "summary", "output_dir": str(tmp_path / "o"), "pre_seq_len": 8,
              "max_source_length": 64, "report_to": "none"}
    cfg = tmp_path / "args.json"
    cfg.write_text(json.dumps(dict(common, overwrite_output_dir=True, no_cuda=True)), encoding="utf-8")
    m, d, t = ptuning_main.parse_args([str(cfg)])
    assert m.pre_seq_len == 8 and m.prefix_projection is False and m.quantization_bit is None
    assert d.max_source_length == 64 and d.max_target_length == 128 and d.val_max_target_length == 128
    assert d.ignore_pad_token_for_loss is True and d.source_prefix == ""
    assert t.use_cpu is True
    argv = [x for k, v in common.items() for x in (f"--{k}", str(v))] + ["--overwrite_output_dir", "--no_cuda",
                                                                          "--prefix_projection"]
    m2, d2, t2 = ptuning_main.parse_args(argv)
    assert m2.prefix_projection is True and t2.use_cpu is True and d2.train_file == "t.json"
    with pytest.raises(ValueError, match="Need a data set"):
        ptuning_main.parse_args(["--model_name_or_path", "m", "--output_dir", str(tmp_path)])
    with pytest.raises(ValueError, match="expected a .json/.jsonl"):
        ptuning_main.parse_args(["--model_name_or_path", "m", "--train_file", "x.txt", "--output_dir", str(tmp_path)])


def test_dataclass_fields_and_defaults():
    import dataclasses

    from ptuning.arguments import DataTrainingArguments, ModelArguments

    model_fields = {f.name: f.default for f in dataclasses.fields(ModelArguments)}
    assert list(model_fields) == ["model_name_or_path", "ptuning_checkpoint", "config_name", "tokenizer_name",
                                  "cache_dir", "use_fast_tokenizer", "model_revision", "use_auth_token",
                                  "resize_position_embeddings", "quantization_bit", "pre_seq_len", "prefix_projection",
                                  "lora_rank", "lora_alpha", "lora_dropout", "lora_target", "lora_checkpoint"]
    data_fields = {f.name: f.default for f in dataclasses.fields(DataTrainingArguments)}
    assert list(data_fields) == ["lang", "dataset_name", "dataset_config_name", "prompt_column", "response_column",
                                 "history_column", "train_file", "validation_file", "test_file", "overwrite_cache",
                                 "preprocessing_num_workers", "max_source_length", "max_target_length",
                                 "val_max_target_length", "pad_to_max_length", "max_train_samples", "max_eval_samples",
                                 "max_predict_samples", "num_beams", "ignore_pad_token_for_loss", "source_prefix",
                                 "forced_bos_token"]
    assert data_fields["max_source_length"] == 1024 and data_fields["max_target_length"] == 128
    assert data_fields["ignore_pad_token_for_loss"] is True


def test_demo_rows_share_the_layout_and_keep_the_end_of_a_long_prompt(tok):
    from chatglm.generation import build_prompt
    from demo.rows import encode_rows

    row = {"prompt": "第二个问题", "response": "第二个回答很长很长",
           "history": [["很长的第一个问题" * 5, "第一个回答"]]}
    [(ids, labels)] = encode_rows(tok, [row], max_source=8, max_target=6)
    prompt = tok.encode(build_prompt(row["prompt"], row["history"]), add_special_tokens=False)
    answer = tok.encode(row["response"], add_special_tokens=False)[:4]
    assert ids == prompt[-7:] + [GMASK, SOP] + answer + [EOP]  # the current question survives the cut
    assert labels == [-100] * 8 + [SOP] + answer + [EOP]

    # a batch of rows of different lengths: right-padded with <pad>, labels with -100
    short = data_utils.build_training_row(tok, "你好", "好", 8, 6)
    input_ids, label_ids = data_utils.pad_training_rows([(ids, labels), short], PAD)
    assert input_ids[1].tolist() == short[0] + [PAD] * (len(ids) - len(short[0]))
    assert label_ids[1].tolist() == short[1] + [-100] * (len(ids) - len(short[0]))
    assert input_ids[0].tolist() == ids and label_ids[0].tolist() == labels
