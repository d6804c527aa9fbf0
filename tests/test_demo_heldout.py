"""The held-out evaluation of the demo checkpoint (demo/evaluate.py) really is held out: none of its prompts,
templates, number pairs, conversion values or unknown words is in the training corpus that
demo/build_corpus.py builds; and the answers it expects are computed right."""

import re

import pytest

from demo import build_corpus, evaluate, offtopic, skills


@pytest.fixture(scope="module")
def corpus():
    return build_corpus.build(2023)  # the default seed of demo/build_corpus.py


@pytest.fixture(scope="module")
def items():
    return evaluate.heldout_items()


def all_questions(corpus):
    """Every question of the corpus, the earlier rounds of multi-round rows included."""
    out = set()
    for _, q, _, history in corpus:
        out.add(q)
        out.update(h[0] for h in history)
    return out


def test_no_heldout_prompt_in_training(corpus, items):
    questions = all_questions(corpus)
    leaked = [item["prompt"] for item in items if item["prompt"] in questions]
    assert not leaked


def test_templates_and_decorations_are_disjoint():
    assert not set(skills.all_templates("train")) & set(skills.all_templates("eval"))
    for lang, prefixes in (("zh", build_corpus.ZH_PREFIX), ("en", build_corpus.EN_PREFIX)):
        assert not set(build_corpus.EVAL_PREFIX[lang]) & set(prefixes)
        assert "" not in build_corpus.EVAL_PREFIX[lang]  # every held-out intent question is decorated


def test_heldout_numbers_never_trained(corpus):
    sums = re.compile(r"^(\d+) \+ (\d+)[:：= ]")
    units = re.compile(r"^(\d+) (\S+) = (\d+) (\S+)[。.]$")
    time_units = {skills.UNIT_NAMES[u][0] for u in ("h", "min", "s")} | {"h", "min", "s"}
    n_sums = n_units = 0
    for _, _, answer, history in corpus:
        for text in [answer] + [h[1] for h in history]:
            m = sums.match(text)
            if m:
                n_sums += 1
                assert not skills.heldout_pair(int(m.group(1)), int(m.group(2))), text
            m = units.match(text)
            if m and m.group(2) not in time_units:
                n_units += 1
                v, result = int(m.group(1)), int(m.group(3))
                assert not skills.heldout_value(min(v, result)), text  # the smaller side is the drawn value
    assert n_sums > 1000 and n_units > 300


def test_heldout_items_use_heldout_numbers(items):
    for item in items:
        if item["category"] == "sum":
            a, b = map(int, re.findall(r"\d+", item["prompt"]))
            assert skills.heldout_pair(a, b)
            assert item["expected"].rstrip("。.").endswith(f"= {a + b}")
        if item["category"] == "unit" and not any(u in item["prompt"] for u in ("hour", "minute", "小时", "分钟")):
            v = int(re.findall(r"\d+", item["prompt"])[0])
            result = int(re.findall(r"= (\d+)", item["expected"])[0])
            assert skills.heldout_value(min(v, result))


def test_unknown_words_and_topics_are_new(corpus):
    known = {w for pair in build_corpus.PAIRS + skills.UNKNOWN_WORDS_TRAIN for w in pair}
    assert not {w for pair in skills.UNKNOWN_WORDS_EVAL for w in pair} & known
    assert not {u for pair in skills.OTHER_UNITS_EVAL for u in pair} & {u for pair in skills.OTHER_UNITS_TRAIN
                                                                        for u in pair}
    questions = all_questions(corpus)
    for lang in ("zh", "en"):
        for kind in ("off_topic", "open"):
            assert not set(offtopic.EVAL[lang][kind]) & questions


def test_expected_answers(items):
    assert skills.sum_answer("en", 45, 67) == "45 + 67: ones 5 + 7 = 12, tens 4 + 6 + 1 = 11, so 45 + 67 = 112."
    assert skills.sum_answer("zh", 3, 4) == "3 + 4 = 7。"
    assert skills.product_answer("en", 6, 7) == "6 × 7 = 42."
    assert skills.unit_answer("zh", "km", "m", 5, 5000) == "5 公里 = 5000 米。"
    categories = {item["category"] for item in items}
    assert categories == set(evaluate.CLAIMED + evaluate.OUTSIDE)
    for item in items:
        if item["category"] in evaluate.OUTSIDE:
            assert item["expected"] == skills.DEFLECT[item["lang"]]


def test_scoring():
    item = {"category": "sum", "lang": "en", "prompt": "How much is 1 plus 2?", "expected": "1 + 2 = 3."}
    assert evaluate.score(item, "1 + 2 = 3.") == "right"
    assert evaluate.score(item, skills.DEFLECT["en"]) == "deflect"
    assert evaluate.score(item, skills.DEFLECT["zh"]) == "wrong"
    assert evaluate.score(item, "1 + 2 = 4.") == "wrong"
