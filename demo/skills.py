"""What the demo checkpoint claims to do, as code: the answer formats, the question templates (split into the
ones training uses and the ones only the held-out evaluation uses), the rules that keep some numbers out of
training, and the one honest line it answers with for everything else.

demo/build_corpus.py draws training rows from here and demo/evaluate.py draws held-out prompts from here, so
both compute the expected answers with the same functions.

The domain is kept to what a model of a few million parameters gets right reliably:
  * sums of two whole numbers from 0 to 99 (two-digit sums are answered in a worked format, ones then tens,
    so that every step is a one-digit fact the model has seen many times);
  * products of two one-digit numbers (the times table);
  * metric conversions by 10, 100 or 1000 (km, m, cm, mm, kg, g, L, mL) of whole numbers, and 1 to 10 hours
    or minutes into minutes or seconds;
  * translations of the words and phrases in PAIRS.
Everything else (subtraction, division, bigger numbers, other units, unknown words, any other topic) gets
DEFLECT: one line saying that this is the small demo and how to load the real weights.
"""


REAL = "THUDM/chatglm-6b"

DEFLECT = {
    "zh": "抱歉，我只是项目自带的小型演示模型，答不了这个问题。真正的权重请用 "
          "python cli_demo.py --model THUDM/chatglm-6b 加载（也可以是本地目录）。",
    "en": "Sorry, I am only the small demo model bundled with this project and cannot answer that. "
          "Load the real weights with python cli_demo.py --model THUDM/chatglm-6b (or a local folder).",
}


# ---------------------------------------------------------------------------------------------------------
# Held-out numbers. A rule, not a random draw, so that a test can check that training never contains them.
# ---------------------------------------------------------------------------------------------------------

def heldout_pair(a, b):
    """About 1 in 13 unordered pairs of operands is kept for the evaluation only."""
    lo, hi = min(a, b), max(a, b)
    return (lo * 31 + hi * 17) % 13 == 0


def heldout_value(v):
    """About 1 in 13 conversion values is kept for the evaluation only."""
    return (v * 37 + 11) % 13 == 0


# ---------------------------------------------------------------------------------------------------------
# Arithmetic
# ---------------------------------------------------------------------------------------------------------

SUM_Q = {
    "zh": {"train": ["{a} 加 {b} 等于多少？", "{a}+{b}=？", "计算 {a}+{b}", "{a} 加上 {b} 是多少？", "算一下 {a} + {b}",
                     "{a}+{b} 等于几？", "{a} 和 {b} 的和是多少？", "{a} + {b} = ?"],
           "eval": ["请帮我算 {a} 加 {b}", "{a} 加 {b} 得多少？", "{a} + {b} 的结果是？"]},
    "en": {"train": ["What is {a} plus {b}?", "{a}+{b}=?", "Calculate {a} + {b}.", "What is {a} + {b}?",
                     "Add {a} and {b}.", "What is the sum of {a} and {b}?", "{a} plus {b} equals what?",
                     "{a} + {b} = ?"],
           "eval": ["Please work out {a} + {b}.", "How much is {a} plus {b}?", "Can you add {a} to {b}?"]},
}
PRODUCT_Q = {
    "zh": {"train": ["{a} 乘 {b} 等于多少？", "{a}×{b}=？", "计算 {a}*{b}", "{a} 乘以 {b} 是多少？", "算一下 {a} × {b}",
                     "{a} 乘 {b} 得几？", "{a}*{b}=？"],
           "eval": ["请帮我算 {a} 乘 {b}", "{a} 乘以 {b} 的结果是？", "{a} 乘 {b} 得多少？"]},
    "en": {"train": ["What is {a} times {b}?", "{a}*{b}=?", "Calculate {a} * {b}.", "What is {a} multiplied by {b}?",
                     "Multiply {a} by {b}.", "What is {a} x {b}?", "What is the product of {a} and {b}?",
                     "{a}×{b}=?"],
           "eval": ["Please work out {a} × {b}.", "How much is {a} times {b}?", "Can you multiply {a} and {b}?"]},
}
# Arithmetic the demo does not do: the answer is DEFLECT. {a} {b} {c} are filled with numbers.
BEYOND_ARITH_Q = {
    "zh": {"train": ["{a} 减 {b} 等于多少？", "{a}-{b}=？", "计算 {a}-{b}", "算一下 {a} - {b}",
                     "{a} 减去 {b} 是多少？", "{a} 除以 {b} 等于多少？", "{a}÷{b}=？", "计算 {a}/{b}",
                     "{a} 的平方是多少？", "{a} 的平方根是多少？", "{a} 的 {b}% 是多少？", "{a}+{b}+{c} 等于多少？",
                     "{a} 的 {b} 次方是多少？", "{a} 能被 {b} 整除吗？"],
           "eval": ["{a} 减去 {b} 得多少？", "请帮我算 {a} 除以 {b}", "{a} 的立方是多少？",
                    "{a} 加 {b} 再加 {c} 得多少？"]},
    "en": {"train": ["What is {a} minus {b}?", "{a}-{b}=?", "Calculate {a} - {b}.", "Subtract {b} from {a}.",
                     "What is {a} divided by {b}?", "{a}/{b}=?", "Divide {a} by {b}.", "What is {a} squared?",
                     "What is the square root of {a}?", "What is {b}% of {a}?", "What is {a} + {b} + {c}?",
                     "What is {a} to the power of {b}?", "Is {a} divisible by {b}?"],
           "eval": ["How much is {a} minus {b}?", "Please work out {a} / {b}.", "What is {a} cubed?",
                    "Can you add {a}, {b} and {c}?"]},
}


def sum_answer(lang, a, b):
    if a < 10 and b < 10:
        answer = f"{a} + {b} = {a + b}"
        return answer + ("。" if lang == "zh" else ".")
    ones = a % 10 + b % 10
    carry = ones // 10
    tens = a // 10 + b // 10 + carry
    if lang == "zh":
        return (f"{a} + {b}：个位 {a % 10} + {b % 10} = {ones}，十位 {a // 10} + {b // 10} + {carry} = {tens}，"
                f"所以 {a} + {b} = {a + b}。")
    return (f"{a} + {b}: ones {a % 10} + {b % 10} = {ones}, tens {a // 10} + {b // 10} + {carry} = {tens}, "
            f"so {a} + {b} = {a + b}.")


def product_answer(lang, a, b):
    return f"{a} × {b} = {a * b}" + ("。" if lang == "zh" else ".")


def draw_sum_operands(rng):
    # Mostly two-digit sums (the worked format needs the practice), some one-digit ones and some zeros.
    r = rng.random()
    if r < 0.15:
        return rng.randint(0, 9), rng.randint(0, 9)
    if r < 0.35:
        a, b = rng.randint(0, 9), rng.randint(10, 99)
        return (a, b) if rng.random() < 0.5 else (b, a)
    return rng.randint(10, 99), rng.randint(10, 99)


def draw_beyond_operands(rng):
    """Numbers for arithmetic outside the domain: the operation itself is outside, or a number is too big."""
    a = rng.choice([rng.randint(2, 99), rng.randint(100, 999), rng.randint(10, 99)])
    return a, rng.randint(2, 99), rng.randint(2, 50)


def big_sum_operands(rng):
    """A sum with a number of three or more digits: outside the domain."""
    a = rng.randint(100, 9999) if rng.random() < 0.8 else rng.randint(100, 999)
    b = rng.randint(1, 999)
    return (a, b) if rng.random() < 0.5 else (b, a)


def big_product_operands(rng):
    """A product with a factor of two or more digits: outside the domain."""
    a = rng.randint(10, 99) if rng.random() < 0.8 else rng.randint(100, 999)
    b = rng.randint(2, 99)
    return (a, b) if rng.random() < 0.5 else (b, a)


# ---------------------------------------------------------------------------------------------------------
# Unit conversions
# ---------------------------------------------------------------------------------------------------------

# (zh name, en singular, en plural, symbol)
UNIT_NAMES = {
    "km": ("公里", "kilometer", "kilometers"), "m": ("米", "meter", "meters"), "cm": ("厘米", "centimeter",
                                                                                      "centimeters"),
    "mm": ("毫米", "millimeter", "millimeters"), "kg": ("千克", "kilogram", "kilograms"), "g": ("克", "gram", "grams"),
    "L": ("升", "liter", "liters"), "mL": ("毫升", "milliliter", "milliliters"), "h": ("小时", "hour", "hours"),
    "min": ("分钟", "minute", "minutes"), "s": ("秒", "second", "seconds"),
}
# (from, to, factor): a bigger unit into a smaller one multiplies, the reverse divides.
METRIC = [("km", "m", 1000), ("m", "cm", 100), ("cm", "mm", 10), ("m", "mm", 1000), ("kg", "g", 1000),
          ("L", "mL", 1000)]
TIME = [("h", "min", 60), ("min", "s", 60)]

UNIT_Q = {
    "zh": {"train": ["{v} {f}等于多少{t}？", "{v} {f}是多少{t}？", "把 {v} {f}换算成{t}", "{v}{f}合多少{t}？",
                     "{v} {f}有多少{t}？", "{v} {f}换成{t}是多少？"],
           "eval": ["请把 {v} {f}转换成{t}", "{v} {f}折合多少{t}？"]},
    "en": {"train": ["How many {t} are in {v} {f}?", "Convert {v} {f} to {t}.", "What is {v} {f} in {t}?",
                     "{v} {f} is how many {t}?", "How many {t} is {v} {f}?", "Change {v} {f} into {t}."],
           "eval": ["Please turn {v} {f} into {t}.", "{v} {f} equals how many {t}?"]},
}
# Units the demo does not convert (the answer is DEFLECT), as (zh, en plural) names.
OTHER_UNITS_TRAIN = [("英寸", "inches"), ("英尺", "feet"), ("英里", "miles"), ("磅", "pounds"), ("盎司", "ounces"),
                     ("华氏度", "degrees Fahrenheit"), ("摄氏度", "degrees Celsius"), ("加仑", "gallons"),
                     ("斤", "jin"), ("亩", "acres"), ("天", "days"), ("周", "weeks")]
OTHER_UNITS_EVAL = [("码", "yards"), ("品脱", "pints"), ("公顷", "hectares"), ("年", "years"), ("海里",
                                                                                                "nautical miles")]


def unit_name(lang, unit, v):
    zh, one, many = UNIT_NAMES[unit]
    if lang == "zh":
        return zh
    return one if v == 1 else many


def unit_answer(lang, f, t, v, result):
    if lang == "zh":
        return f"{v} {UNIT_NAMES[f][0]} = {result} {UNIT_NAMES[t][0]}。"
    return f"{v} {f} = {result} {t}."


def unit_question(lang, template, f, t, v):
    t_name = UNIT_NAMES[t][0] if lang == "zh" else UNIT_NAMES[t][2]
    return template.format(v=v, f=unit_name(lang, f, v), t=t_name)


def draw_unit(rng, split):
    """(from, to, value, result) of a conversion inside the domain; `split` "train" avoids held-out values,
    "eval" uses only them (the times-60 table of 1..10 is too small to hold values out: it is held out by
    phrasing only)."""
    r = rng.random()
    if r < 0.12:
        f, t, factor = rng.choice(TIME)
        v = rng.randint(1, 10)
        return f, t, v, v * factor
    f, t, factor = rng.choice(METRIC)
    while True:
        k = rng.randint(1, 99) if rng.random() < 0.7 else rng.randint(100, 999)
        if heldout_value(k) == (split == "eval"):
            break
    if r < 0.56:
        return f, t, k, k * factor
    return t, f, k * factor, k  # the reverse direction, always a whole result


def draw_beyond_unit(rng, lang, split):
    """A conversion outside the domain: another unit, a fraction, a remainder or a time beyond 10."""
    templates = UNIT_Q[lang][split]
    kind = rng.random()
    if kind < 0.45:
        others = OTHER_UNITS_TRAIN if split == "train" else OTHER_UNITS_EVAL
        (zf, ef), (zt, et) = rng.sample(others + [(UNIT_NAMES[u][0], UNIT_NAMES[u][2]) for u in ("km", "m", "kg",
                                                                                                 "h")], 2)
        v = rng.randint(1, 200)
        fname, tname = (zf, zt) if lang == "zh" else (ef, et)
        return rng.choice(templates).format(v=v, f=fname, t=tname)
    if kind < 0.7:  # a reverse conversion that does not come out whole
        f, t, factor = rng.choice(METRIC)
        v = rng.randint(1, 99) * factor + rng.randint(1, factor - 1)
        return unit_question(lang, rng.choice(templates), t, f, v)
    if kind < 0.85:  # a decimal value
        f, t, factor = rng.choice(METRIC + TIME)
        v = f"{rng.randint(0, 20)}.{rng.randint(1, 9)}"
        return rng.choice(templates).format(v=v, f=UNIT_NAMES[f][0] if lang == "zh" else UNIT_NAMES[f][2],
                                            t=UNIT_NAMES[t][0] if lang == "zh" else UNIT_NAMES[t][2])
    f, t, factor = rng.choice(TIME)  # a time beyond the times-60 table, or a time the other way round
    if rng.random() < 0.5:
        return unit_question(lang, rng.choice(templates), f, t, rng.randint(11, 500))
    return unit_question(lang, rng.choice(templates), t, f, rng.randint(2, 40) * 60)


# ---------------------------------------------------------------------------------------------------------
# Translations
# ---------------------------------------------------------------------------------------------------------

TRANSLATE_Q = {
    # (asked in, direction): templates
    ("zh", "zh2en"): {"train": ["“{zh}”用英语怎么说？", "“{zh}”的英文是什么？", "把“{zh}”翻译成英文",
                                "请把“{zh}”翻译成英语",
                                "{zh} 英语怎么说？"],
                      "eval": ["“{zh}”翻译成英文是什么？", "{zh} 的英文单词是？"]},
    ("zh", "en2zh"): {"train": ["{en} 是什么意思？", "把“{en}”翻译成中文", "“{en}”的中文是什么？",
                                "{en} 用中文怎么说？"],
                      "eval": ["“{en}”翻译成中文是什么？", "英文 {en} 的意思是？"]},
    ("en", "en2zh"): {"train": ["How do you say \"{en}\" in Chinese?", "Translate \"{en}\" into Chinese.",
                                "What is \"{en}\" in Chinese?", "What is the Chinese for \"{en}\"?"],
                      "eval": ["How would you say \"{en}\" in Chinese?", "Chinese for \"{en}\", please."]},
    ("en", "zh2en"): {"train": ["What does {zh} mean in English?", "Translate \"{zh}\" into English.",
                                "How do you say {zh} in English?", "What is {zh} in English?"],
                      "eval": ["What's the English word for {zh}?", "Give me the English for \"{zh}\"."]},
}


def translation_answer(lang, direction, zh, en):
    if lang == "zh":
        return f"“{zh}”的英文是 {en}。" if direction == "zh2en" else f"{en} 的中文意思是“{zh}”。"
    return f"\"{en}\" in Chinese is {zh}." if direction == "en2zh" else f"{zh} means \"{en}\" in English."


# Words and phrases that are not in the word list: asked about, they get DEFLECT. Training and evaluation use
# different ones.
UNKNOWN_WORDS_TRAIN = [
    ("蝴蝶", "butterfly"), ("钢琴", "piano"), ("雨伞", "umbrella"), ("袜子", "socks"), ("钥匙", "key"),
    ("窗户", "window"), ("枕头", "pillow"), ("蜡烛", "candle"), ("剪刀", "scissors"), ("邮票", "stamp"),
    ("沙漠", "desert"), ("火山", "volcano"), ("岛屿", "island"), ("森林", "forest"), ("彩虹", "rainbow"),
    ("闪电", "lightning"), ("蜜蜂", "bee"), ("大象", "elephant"), ("长颈鹿", "giraffe"), ("企鹅", "penguin"),
    ("律师", "lawyer"), ("厨师", "chef"), ("警察", "police officer"), ("邮局", "post office"), ("博物馆", "museum"),
    ("民主", "democracy"), ("哲学", "philosophy"), ("经济", "economy"), ("法律", "law"), ("宇宙", "universe"),
    ("胡萝卜", "carrot"), ("土豆", "potato"), ("洋葱", "onion"), ("大蒜", "garlic"), ("饺子", "dumplings"),
    ("毛衣", "sweater"), ("裙子", "skirt"), ("帽子", "hat"), ("手套", "gloves"), ("眼镜", "glasses"),
    ("勇敢", "brave"), ("聪明", "clever"), ("安静", "quiet"), ("危险", "dangerous"), ("便宜", "cheap"),
    ("我迷路了", "I am lost"), ("会议改到周五了", "the meeting moved to Friday"), ("请帮我拍张照",
                                                                                   "please take a photo of me"),
    ("这道菜太辣了", "this dish is too spicy"), ("火车晚点了", "the train is late"),
]
UNKNOWN_WORDS_EVAL = [
    ("乌龟", "turtle"), ("冰箱", "refrigerator"), ("梯子", "ladder"), ("灯塔", "lighthouse"), ("隧道", "tunnel"),
    ("牙刷", "toothbrush"), ("蘑菇", "mushroom"), ("袋鼠", "kangaroo"), ("护士", "nurse"), ("快递", "parcel delivery"),
    ("自由", "freedom"), ("好奇", "curious"), ("我把钱包丢了", "I lost my wallet"), ("明天会下雪吗",
                                                                                     "will it snow tomorrow"),
]


def translation_question(rng, lang, direction, zh, en, split):
    return rng.choice(TRANSLATE_Q[(lang, direction)][split]).format(zh=zh, en=en)


def all_templates(split):
    """Every question template of `split` ("train" or "eval"), for the disjointness checks."""
    tables = [table[lang] for table in (SUM_Q, PRODUCT_Q, BEYOND_ARITH_Q, UNIT_Q) for lang in table]
    return [template for table in tables + list(TRANSLATE_Q.values()) for template in table[split]]
