#!/usr/bin/env python3
"""Generate the small sample data sets bundled with ptuning/ (seeded, reproducible).

    python3 ptuning/data/make_sample.py            # rewrites the files next to this script

Writes
  AdvertiseGen_sample/train.json, dev.json   AdvertiseGen format, one JSON object per line:
      {"content": "类型#上衣*版型#宽松*颜色#白色*风格#简约", "summary": "<ad copy>"}
  chat_sample/train.json, dev.json           chat format, one JSON object per line:
      {"prompt": "...", "response": "...", "history": [["q", "a"], ...]}

Everything here is synthetic: attribute vocabularies and phrase templates were written by hand for this
project. Each attribute value has its own short phrases, so the ad copy clearly reflects the attributes and a
tuned prefix can learn the mapping (BLEU/ROUGE rise after a few hundred steps on a small model). The real
AdvertiseGen data set is much larger and freer; see ptuning/README.md for where to put it.
"""

import argparse
import json
import os
import random

# ---------------------------------------------------------------------------------------------------------
# Attribute vocabularies. For every value: a few phrases that describe it in ad copy.
# ---------------------------------------------------------------------------------------------------------

PHRASES = {
    "版型": {
        "宽松": ["宽松的版型不挑身材", "宽松版型穿着自在舒适"],
        "修身": ["修身的版型勾勒出优美曲线", "修身剪裁贴合身形"],
        "显瘦": ["显瘦的版型轻松修饰身材", "利落的显瘦版型让身形更纤细"],
        "直筒": ["直筒版型简洁利落", "直筒的廓形修饰腿型"],
        "A字": ["A字版型遮肉又显高", "经典A字版型俏皮减龄"],
        "落肩": ["落肩设计慵懒随性", "落肩版型弱化肩部线条"],
    },
    "材质": {
        "棉": ["采用柔软的棉质面料，亲肤透气", "棉质面料吸汗透气，穿着舒适"],
        "牛仔布": ["牛仔布面料耐磨挺括", "选用经典牛仔布，越穿越有味道"],
        "雪纺": ["雪纺面料轻盈飘逸", "轻薄的雪纺材质清凉不闷热"],
        "针织": ["针织面料柔软有弹性", "细腻的针织材质温柔舒适"],
        "蕾丝": ["精致的蕾丝材质尽显女人味", "蕾丝面料浪漫又优雅"],
        "羊毛": ["羊毛材质保暖又细腻", "温暖的羊毛面料抵御寒冷"],
        "真丝": ["真丝面料光泽柔和", "顺滑的真丝材质高级感十足"],
        "亚麻": ["亚麻材质清爽透气", "天然亚麻面料自然质朴"],
    },
    "颜色": {
        "白色": ["白色清新干净", "纯净的白色百搭又耐看"],
        "黑色": ["黑色低调显瘦", "经典黑色沉稳大气"],
        "红色": ["红色热情亮眼", "明艳的红色衬肤显白"],
        "蓝色": ["蓝色清爽宜人", "温柔的蓝色带来夏日气息"],
        "粉色": ["粉色甜美可爱", "少女感的粉色温柔减龄"],
        "灰色": ["灰色low调高级", "雅致的灰色好搭配"],
        "绿色": ["绿色清新自然", "清新的绿色充满活力"],
        "卡其色": ["卡其色复古温柔", "卡其色大地色系显气质"],
    },
    "风格": {
        "简约": ["简约大方", "风格简约不失格调"],
        "复古": ["复古韵味十足", "带着浓浓的复古气息"],
        "休闲": ["休闲随性", "轻松休闲的风格适合日常"],
        "甜美": ["甜美动人", "甜美可人的少女风"],
        "通勤": ["通勤干练", "适合通勤的知性风格"],
        "街头": ["街头感十足", "潮酷的街头风格"],
        "文艺": ["文艺气质满满", "清新文艺的格调"],
        "性感": ["性感迷人", "散发成熟性感的魅力"],
    },
    "图案": {
        "条纹": ["条纹图案经典时髦", "利落的条纹元素增添层次"],
        "格子": ["格子图案复古有型", "英伦格子彰显学院气息"],
        "碎花": ["碎花图案浪漫清新", "满印的碎花充满田园气息"],
        "刺绣": ["精美的刺绣点缀细节", "刺绣图案精致有质感"],
        "印花": ["个性印花吸睛亮眼", "趣味印花活泼俏皮"],
        "纯色": ["纯色设计干净利落", "纯色款式简单耐看"],
        "波点": ["波点图案俏皮可爱", "复古波点灵动活泼"],
    },
    "衣样式": {
        "衬衫": ["这款衬衫", "这件衬衫"],
        "T恤": ["这款T恤", "这件T恤"],
        "卫衣": ["这款卫衣", "这件卫衣"],
        "毛衣": ["这款毛衣", "这件毛衣"],
        "外套": ["这款外套", "这件外套"],
        "针织衫": ["这款针织衫", "这件针织衫"],
        "雪纺衫": ["这款雪纺衫", "这件雪纺衫"],
    },
    "衣领型": {
        "圆领": ["圆领设计修饰脸型", "简洁的圆领舒适不勒"],
        "v领": ["v领设计拉长颈部线条", "v领显脸小又露出锁骨"],
        "翻领": ["翻领设计精神干练", "经典翻领利落大方"],
        "立领": ["立领设计挺拔有型", "立领款式优雅端庄"],
        "娃娃领": ["娃娃领甜美减龄", "可爱的娃娃领俏皮灵动"],
        "一字领": ["一字领展现迷人肩线", "一字领性感又优雅"],
    },
    "衣袖型": {
        "泡泡袖": ["泡泡袖公主感满满", "蓬松的泡泡袖修饰手臂"],
        "灯笼袖": ["灯笼袖复古又俏皮", "灯笼袖遮肉显瘦"],
        "喇叭袖": ["喇叭袖飘逸灵动", "喇叭袖优雅有女人味"],
        "蝙蝠袖": ["蝙蝠袖宽松随性", "蝙蝠袖设计慵懒时髦"],
        "常规袖": ["常规袖型简洁大方", "常规袖利落不拖沓"],
    },
    "衣袖长": {
        "短袖": ["短袖清凉适合夏季", "短袖设计轻松透气"],
        "长袖": ["长袖款式适合春秋", "长袖设计保暖遮阳"],
        "七分袖": ["七分袖露出纤细手腕", "七分袖干练利落"],
        "无袖": ["无袖设计清爽凉快", "无袖款式露出手臂线条"],
    },
    "衣长": {
        "短款": ["短款设计拉长腿部比例", "短款上衣显高又精神"],
        "中长款": ["中长款遮住臀部", "中长款设计包容性强"],
        "常规款": ["常规衣长好搭配", "常规长度适合各种场合"],
    },
    "衣款式": {
        "口袋": ["口袋设计实用又有型", "贴心的口袋方便收纳"],
        "纽扣": ["纽扣细节精致讲究", "一排纽扣增添设计感"],
        "抽绳": ["抽绳设计可以调节松紧", "抽绳元素随性有趣"],
        "拼接": ["拼接设计层次丰富", "撞色拼接个性十足"],
        "荷叶边": ["荷叶边甜美浪漫", "灵动的荷叶边增添女人味"],
        "系带": ["系带设计精致俏皮", "系带细节收腰显瘦"],
    },
    "裙型": {
        "a字裙": ["这款a字裙", "这条a字裙"],
        "百褶裙": ["这款百褶裙", "这条百褶裙"],
        "包臀裙": ["这款包臀裙", "这条包臀裙"],
        "连衣裙": ["这款连衣裙", "这条连衣裙"],
        "半身裙": ["这款半身裙", "这条半身裙"],
        "鱼尾裙": ["这款鱼尾裙", "这条鱼尾裙"],
    },
    "裙长": {
        "短裙": ["短裙长度露出双腿", "短款裙长活泼显高"],
        "中长裙": ["中长裙长度优雅得体", "及膝的中长裙端庄大方"],
        "长裙": ["长裙飘逸仙气", "长裙摇曳生姿"],
    },
    "裙领型": {
        "圆领": ["圆领设计温柔简洁", "圆领修饰脸型"],
        "v领": ["v领设计显脸小", "v领勾勒优美颈线"],
        "方领": ["方领复古优雅", "方领露出精致锁骨"],
        "一字领": ["一字领展现肩部线条", "一字领浪漫性感"],
    },
    "裙袖型": {
        "泡泡袖": ["泡泡袖甜美减龄", "泡泡袖修饰手臂线条"],
        "喇叭袖": ["喇叭袖灵动飘逸", "喇叭袖优雅浪漫"],
        "无袖": ["无袖设计清凉透气", "无袖款式干净利落"],
    },
    "裙款式": {
        "收腰": ["收腰设计凸显纤细腰身", "收腰剪裁提高腰线"],
        "开叉": ["开叉设计行走灵动", "侧边开叉性感迷人"],
        "褶皱": ["褶皱细节丰富层次", "褶皱设计蓬松灵动"],
        "腰带": ["搭配腰带勾勒腰线", "腰带点缀显比例"],
        "拉链": ["拉链设计方便穿脱", "隐形拉链简洁利落"],
    },
    "裤长": {
        "九分裤": ["九分裤长露出脚踝", "九分长度显高利落"],
        "短裤": ["短裤清凉适合夏天", "短裤露出双腿活力满满"],
        "长裤": ["长裤版型拉长腿部线条", "长裤百搭适合四季"],
        "七分裤": ["七分裤随性清爽", "七分长度轻松自在"],
    },
    "裤型": {
        "阔腿裤": ["这款阔腿裤", "这条阔腿裤"],
        "直筒裤": ["这款直筒裤", "这条直筒裤"],
        "铅笔裤": ["这款铅笔裤", "这条铅笔裤"],
        "哈伦裤": ["这款哈伦裤", "这条哈伦裤"],
        "背带裤": ["这款背带裤", "这条背带裤"],
        "喇叭裤": ["这款喇叭裤", "这条喇叭裤"],
    },
    "裤款式": {
        "破洞": ["破洞设计个性不羁", "做旧破洞潮流感十足"],
        "口袋": ["口袋设计实用方便", "立体口袋增添细节"],
        "卷边": ["卷边裤脚随性时髦", "卷边设计休闲有型"],
        "拉链": ["拉链装饰酷感十足", "拉链细节利落干练"],
    },
    "裤腰型": {
        "高腰": ["高腰设计拉长腿部比例", "高腰款式提臀显高"],
        "松紧腰": ["松紧腰舒适不勒", "松紧腰头穿着轻松"],
        "中腰": ["中腰设计舒适自然", "中腰款式百搭"],
    },
}

# Attributes each garment type can have, in the order they appear in the content string.
TYPE_ATTRS = {
    "上衣": ["版型", "材质", "颜色", "风格", "图案", "衣样式", "衣领型", "衣袖型", "衣袖长", "衣长", "衣款式"],
    "裙": ["版型", "材质", "颜色", "风格", "图案", "裙型", "裙长", "裙领型", "裙袖型", "裙款式"],
    "裤": ["版型", "材质", "颜色", "风格", "图案", "裤长", "裤型", "裤款式", "裤腰型"],
}
# The attribute that names the garment ("这款衬衫") when present.
NAME_ATTR = {"上衣": "衣样式", "裙": "裙型", "裤": "裤型"}
GENERIC_NAME = {"上衣": ["这款上衣", "这件上衣"], "裙": ["这款裙子", "这条裙子"], "裤": ["这款裤子", "这条裤子"]}

STYLE_CLOSINGS = {
    "简约": ["简单的设计更显高级感", "简约而不简单"],
    "复古": ["让你穿出复古的时髦感", "复古又不过时"],
    "休闲": ["日常出街轻松驾驭", "周末休闲穿搭的好选择"],
    "甜美": ["穿上它甜美又可爱", "满满的少女心"],
    "通勤": ["上班通勤穿也很得体", "职场通勤干练大方"],
    "街头": ["轻松穿出潮流范儿", "街拍回头率满满"],
    "文艺": ["散发着淡淡的文艺气息", "文艺少女的必备单品"],
    "性感": ["尽显女性的魅力", "让你自信迷人"],
}
GENERIC_CLOSINGS = ["是衣橱里不可或缺的百搭单品", "轻松打造时尚造型", "穿出属于你的好气质", "无论约会还是出游都很合适"]

CHAT_FACTS = [
    ("白色上衣怎么搭配？", "白色上衣很百搭，可以搭配牛仔裤显得休闲，也可以搭配黑色半身裙显得干练。"),
    ("夏天适合穿什么面料？", "夏天适合穿棉、亚麻和雪纺面料，它们透气清爽，不容易闷热。"),
    ("个子矮适合穿什么裤子？", "个子矮的话可以选择高腰九分裤或者直筒裤，能拉长腿部比例。"),
    ("冬天穿什么保暖？", "冬天可以选择羊毛毛衣搭配厚外套，既保暖又有型。"),
    ("什么颜色显白？", "红色、白色和蓝色通常比较显白，可以根据自己的肤色挑选。"),
    ("梨形身材怎么选裙子？", "梨形身材适合a字裙和高腰设计，能遮住臀部和大腿。"),
    ("通勤穿什么好？", "通勤可以选择简约的衬衫搭配直筒裤或者中长裙，干练又得体。"),
    ("约会穿什么？", "约会可以选择甜美的碎花连衣裙，搭配一双小白鞋，温柔又可爱。"),
    ("牛仔裤怎么洗不褪色？", "牛仔裤建议翻面冷水手洗，少放洗衣液，避免暴晒，这样不容易褪色。"),
    ("真丝衣服怎么保养？", "真丝衣服要用中性洗涤剂轻柔手洗，阴干后低温熨烫。"),
]
GREETINGS = [
    ("你好", "你好！我是穿搭小助手，有什么可以帮你的吗？"),
    ("在吗", "在的，请问有什么穿搭问题需要帮忙？"),
    ("你是谁", "我是一个穿搭小助手，可以帮你写商品文案、给出搭配建议。"),
]


def make_ad(rng):
    """One AdvertiseGen-style row: (content, summary)."""
    garment = rng.choice(sorted(TYPE_ATTRS))
    attrs = TYPE_ATTRS[garment]
    name_attr = NAME_ATTR[garment]
    # Always include a style and a name attribute most of the time, plus 2-4 others.
    others = [a for a in attrs if a not in ("风格", name_attr)]
    chosen = set(rng.sample(others, rng.randint(2, 4)))
    if rng.random() < 0.8:
        chosen.add(name_attr)
    if rng.random() < 0.85:
        chosen.add("风格")
    picked = [(a, rng.choice(sorted(PHRASES[a]))) for a in attrs if a in chosen]

    content = "*".join([f"类型#{garment}"] + [f"{a}#{v}" for a, v in picked])
    values = dict(picked)
    names = PHRASES[name_attr][values[name_attr]] if name_attr in values else GENERIC_NAME[garment]
    name = rng.choice(names)
    body = [rng.choice(PHRASES[a][v]) for a, v in picked if a not in (name_attr, "风格")]
    style = values.get("风格")
    first = name + ("，" + rng.choice(PHRASES["风格"][style]) if style else "")
    if len(body) > 2 and rng.random() < 0.5:
        # two sentences: body split in two
        cut = len(body) // 2
        text = f"{first}，{'，'.join(body[:cut])}。{'，'.join(body[cut:])}"
    else:
        text = f"{first}，{'，'.join(body)}"
    closing = rng.choice(STYLE_CLOSINGS[style]) if style and rng.random() < 0.7 else rng.choice(GENERIC_CLOSINGS)
    summary = f"{text}，{closing}。"
    return content, summary


def make_chat(rng):
    """One chat row: prompt, response, history (0-2 earlier rounds)."""
    history = []
    n_hist = rng.choice([0, 1, 1, 2])
    pool = GREETINGS + CHAT_FACTS
    for q, a in rng.sample(pool, n_hist):
        history.append([q, a])
    if rng.random() < 0.5:
        prompt, response = rng.choice(CHAT_FACTS)
    else:
        content, summary = make_ad(rng)
        prompt = f"帮我根据这些属性写一段商品文案：{content}"
        response = summary
    return {"prompt": prompt, "response": response, "history": history}


def write_jsonl(path, rows):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=here, help="output folder (default: next to this script)")
    p.add_argument("--seed", type=int, default=2023)
    p.add_argument("--train", type=int, default=1000)
    p.add_argument("--dev", type=int, default=100)
    p.add_argument("--chat_train", type=int, default=300)
    p.add_argument("--chat_dev", type=int, default=30)
    args = p.parse_args()

    rng = random.Random(args.seed)
    seen = set()
    splits = {"train": [], "dev": []}
    for split, n in (("train", args.train), ("dev", args.dev)):
        while len(splits[split]) < n:
            content, summary = make_ad(rng)
            if content in seen:  # keep dev prompts unseen in train
                continue
            seen.add(content)
            splits[split].append({"content": content, "summary": summary})
        write_jsonl(os.path.join(args.out, "AdvertiseGen_sample", f"{split}.json"), splits[split])

    rng = random.Random(args.seed + 1)
    write_jsonl(os.path.join(args.out, "chat_sample", "train.json"), [make_chat(rng) for _ in range(args.chat_train)])
    write_jsonl(os.path.join(args.out, "chat_sample", "dev.json"), [make_chat(rng) for _ in range(args.chat_dev)])
    print(f"wrote {args.train}+{args.dev} AdvertiseGen rows and {args.chat_train}+{args.chat_dev} chat rows "
          f"under {args.out}")


if __name__ == "__main__":
    main()
