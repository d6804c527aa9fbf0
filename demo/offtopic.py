"""Questions outside the demo's domain, which it answers with one honest line (skills.DEFLECT).

Training uses templates with fillers (many phrasings of many kinds of request: facts about the world, jokes,
poems, stories, code, proofs, LaTeX, news, history, medicine, law, money, opinions, everyday chores that the
demo has no advice for). The held-out evaluation uses its own hand-written questions (EVAL), none of which is
a training question; a test checks that.
"""


# Templates: {x} is filled from the filler list named after the template.
ZH_TEMPLATES = [
    ("{x}的首都是哪里？", "country_zh"), ("{x}的首都是什么？", "country_zh"), ("{x}有多少人口？", "country_zh"),
    ("{x}在哪个大洲？", "country_zh"), ("{x}说什么语言？", "country_zh"), ("介绍一下{x}的历史", "country_zh"),
    ("讲一个关于{x}的笑话", "thing_zh"), ("给我讲个笑话", None), ("说个笑话吧", None), ("来个冷笑话", None),
    ("写一首关于{x}的诗", "thing_zh"), ("以{x}为题写一首诗", "thing_zh"), ("写一个关于{x}的故事", "thing_zh"),
    ("用 Python 写一个{x}", "code_zh"), ("帮我写一段{x}的代码", "code_zh"), ("用 JavaScript 实现{x}", "code_zh"),
    ("写一个 C++ 程序来{x}", "code_zh"), ("这段代码为什么报错：{x}", "error"),
    ("证明{x}", "proof_zh"), ("请给出{x}的证明", "proof_zh"), ("用 LaTeX 写出{x}", "latex_zh"),
    ("{x}的 LaTeX 公式怎么写？", "latex_zh"), ("解方程 {x}", "equation"), ("求 {x} 的导数", "function"),
    ("今天有什么新闻？", None), ("最近{x}有什么新闻？", "country_zh"), ("明天{x}的天气怎么样？", "city_zh"),
    ("{x}是谁？", "person_zh"), ("{x}有什么成就？", "person_zh"), ("{x}是哪一年发生的？", "event_zh"),
    ("为什么会发生{x}？", "event_zh"), ("我{x}，应该吃什么药？", "symptom_zh"), ("{x}是什么病？", "disease_zh"),
    ("{x}要吃多少剂量？", "medicine_zh"), ("{x}有什么副作用？", "medicine_zh"), ("{x}合法吗？", "legal_zh"),
    ("现在买{x}划算吗？", "asset_zh"), ("{x}明天会涨吗？", "asset_zh"), ("解释一下{x}", "concept_zh"),
    ("{x}是什么原理？", "concept_zh"), ("推荐一本关于{x}的书", "thing_zh"), ("推荐一部关于{x}的电影", "thing_zh"),
    ("你觉得{x}怎么样？", "person_zh"), ("{x}和{y}哪个更好？", "compare_zh"), ("{x}到{y}有多远？", "two_cities_zh"),
    ("从{x}到{y}怎么走？", "two_cities_zh"), ("{x}怎么办？", "chore_zh"), ("怎么{x}？", "chore_how_zh"),
    ("帮我写一封{x}", "letter_zh"), ("总结一下《{x}》这本书", "book_zh"), ("《{x}》的作者是谁？", "book_zh"),
    ("现在几点了？", None), ("今天是几号？", None), ("帮我订一张去{x}的机票", "city_zh"), ("世界上最高的山是哪座？",
                                                                                           None),
    ("光速是多少？", None), ("地球到月球有多远？", None), ("人为什么会做梦？", None), ("天空为什么是蓝色的？", None),
    ("帮我把这句话翻译成法语：{x}", "sentence_zh"), ("把这段话翻译成英文：{x}", "sentence_zh"),
]
EN_TEMPLATES = [
    ("What is the capital of {x}?", "country_en"), ("Which city is the capital of {x}?", "country_en"),
    ("What is the population of {x}?", "country_en"), ("What language do people speak in {x}?", "country_en"),
    ("Tell me about the history of {x}.", "country_en"), ("Tell me a joke about {x}.", "thing_en"),
    ("Tell me a joke.", None), ("Do you know any good jokes?", None), ("Make me laugh.", None),
    ("Write a poem about {x}.", "thing_en"), ("Write a haiku about {x}.", "thing_en"),
    ("Write a short story about {x}.", "thing_en"), ("Write a Python function that {x}.", "code_en"),
    ("Write JavaScript code that {x}.", "code_en"), ("Write a C++ program that {x}.", "code_en"),
    ("Why does my code fail with {x}?", "error"), ("Prove that {x}.", "proof_en"), ("Give a proof that {x}.",
                                                                                    "proof_en"),
    ("Write {x} in LaTeX.", "latex_en"), ("How do I typeset {x} in LaTeX?", "latex_en"), ("Solve {x}.", "equation"),
    ("What is the derivative of {x}?", "function"), ("What is in the news today?", None),
    ("What is the latest news from {x}?", "country_en"), ("What will the weather be in {x} tomorrow?", "city_en"),
    ("Who is {x}?", "person_en"), ("What is {x} famous for?", "person_en"), ("When did {x} happen?", "event_en"),
    ("What caused {x}?", "event_en"), ("I have {x}. Which medicine should I take?", "symptom_en"),
    ("What are the symptoms of {x}?", "disease_en"), ("What dose of {x} should I take?", "medicine_en"),
    ("What are the side effects of {x}?", "medicine_en"), ("Is it legal to {x}?", "legal_en"),
    ("Should I buy {x} now?", "asset_en"), ("Will {x} go up tomorrow?", "asset_en"), ("Explain {x}.", "concept_en"),
    ("How does {x} work?", "concept_en"), ("Recommend a book about {x}.", "thing_en"),
    ("Recommend a movie about {x}.", "thing_en"), ("What do you think of {x}?", "person_en"),
    ("Which is better, {x} or {y}?", "compare_en"), ("How far is {x} from {y}?", "two_cities_en"),
    ("How do I get from {x} to {y}?", "two_cities_en"), ("How do I {x}?", "chore_en"), ("Write a {x} for me.",
                                                                                        "letter_en"),
    ("Summarize the book {x}.", "book_en"), ("Who wrote {x}?", "book_en"), ("What time is it now?", None),
    ("What is today's date?", None), ("Book me a flight to {x}.",
                                      "city_en"), ("What is the tallest mountain in the world?", None),
    ("What is the speed of light?", None), ("How far away is the moon?", None), ("Why do people dream?", None),
    ("Why is the sky blue?", None), ("Translate this sentence into French: {x}", "sentence_en"),
    ("Translate this paragraph into Chinese: {x}", "sentence_en"),
]

FILLERS = {
    "country_zh": ["法国", "日本", "巴西", "埃及", "加拿大", "澳大利亚", "德国", "印度", "墨西哥", "意大利",
                   "俄罗斯", "韩国", "西班牙", "阿根廷", "泰国", "瑞典"],
    "country_en": ["France", "Japan", "Brazil", "Egypt", "Canada", "Australia", "Germany", "India", "Mexico", "Italy",
                   "Russia", "Korea", "Spain", "Argentina", "Thailand", "Sweden"],
    "thing_zh": ["月亮", "大海", "秋天", "猫", "程序员", "咖啡", "友谊", "火车", "雨天", "城市", "机器人", "时间",
                 "太空", "数学"],
    "thing_en": ["the moon", "the sea", "autumn", "cats", "programmers", "coffee", "friendship", "trains", "rainy days",
                 "the city", "robots", "time", "space", "math"],
    "code_zh": ["快速排序", "二分查找", "网页爬虫", "计算器", "贪吃蛇游戏", "冒泡排序", "链表反转", "求最大公约数",
                "读取 CSV 文件", "发送邮件的程序", "判断回文"],
    "code_en": ["sorts a list with quicksort", "does a binary search", "downloads a web page", "reverses a linked list",
                "computes the greatest common divisor", "reads a CSV file", "sends an email", "checks for palindromes",
                "renames the files in a folder", "draws a chart"],
    "error": ["IndexError: list index out of range", "KeyError: 'name'", "TypeError: 'NoneType' object is not callable",
              "ModuleNotFoundError: No module named 'numpy'", "segmentation fault", "SyntaxError: invalid syntax"],
    "proof_zh": ["根号 2 是无理数", "素数有无穷多个", "三角形内角和是 180 度", "勾股定理", "1+2+...+n = n(n+1)/2"],
    "proof_en": ["the square root of 2 is irrational", "there are infinitely many primes",
                 "the angles of a triangle add up to 180 degrees", "the Pythagorean theorem",
                 "1 + 2 + ... + n = n(n+1)/2"],
    "latex_zh": ["勾股定理", "二次方程求根公式", "欧拉公式", "一个 2x2 矩阵", "积分公式"],
    "latex_en": ["the Pythagorean theorem", "the quadratic formula", "Euler's identity", "a 2x2 matrix", "an integral"],
    "equation": ["x^2 - 5x + 6 = 0", "2x + 3 = 11", "3x - 7 = 2x + 5", "x^2 = 49", "sin(x) = 0.5"],
    "function": ["x^3", "sin(x)", "e^x * x", "ln(x)", "x^2 + 3x"],
    "city_zh": ["上海", "广州", "成都", "东京", "纽约", "伦敦", "巴黎", "杭州"],
    "city_en": ["Shanghai", "Guangzhou", "Chengdu", "Tokyo", "New York", "London", "Paris", "Hangzhou"],
    "person_zh": ["李白", "牛顿", "爱因斯坦", "孔子", "莎士比亚", "秦始皇", "居里夫人", "达尔文"],
    "person_en": ["Li Bai", "Isaac Newton", "Albert Einstein", "Confucius", "Shakespeare", "Marie Curie",
                  "Charles Darwin", "Qin Shi Huang"],
    "event_zh": ["第一次世界大战", "工业革命", "文艺复兴", "登月", "法国大革命"],
    "event_en": ["the First World War", "the Industrial Revolution", "the Renaissance", "the moon landing",
                 "the French Revolution"],
    "symptom_zh": ["胸口疼", "一直咳嗽", "发烧三天了", "肚子疼", "过敏了"],
    "symptom_en": ["chest pain", "a cough that won't stop", "a fever for three days", "stomach pain", "an allergy"],
    "disease_zh": ["糖尿病", "高血压", "哮喘", "肺炎"],
    "disease_en": ["diabetes", "high blood pressure", "asthma", "pneumonia"],
    "medicine_zh": ["布洛芬", "阿司匹林", "抗生素", "安眠药"],
    "medicine_en": ["ibuprofen", "aspirin", "antibiotics", "sleeping pills"],
    "legal_zh": ["在家里养蛇", "开车打电话", "转卖演唱会门票"],
    "legal_en": ["keep a snake at home", "use a phone while driving", "resell concert tickets"],
    "asset_zh": ["黄金", "比特币", "股票", "房子"],
    "asset_en": ["gold", "bitcoin", "stocks", "a house"],
    "concept_zh": ["量子力学", "相对论", "区块链", "光合作用", "通货膨胀", "黑洞", "神经网络"],
    "concept_en": ["quantum mechanics", "relativity", "blockchain", "photosynthesis", "inflation", "black holes",
                   "a neural network"],
    "compare_zh": [("苹果手机", "安卓手机"), ("猫", "狗"), ("Python", "Java"), ("咖啡", "茶")],
    "compare_en": [("iPhone", "Android"), ("cats", "dogs"), ("Python", "Java"), ("tea", "coffee")],
    "two_cities_zh": [("北京", "上海"), ("广州", "深圳"), ("东京", "大阪"), ("伦敦", "巴黎")],
    "two_cities_en": [("Beijing", "Shanghai"), ("Guangzhou", "Shenzhen"), ("Tokyo", "Osaka"), ("London", "Paris")],
    "chore_zh": ["水管漏水了", "电脑开不了机", "车胎没气了", "衣服缩水了", "手机进水了", "和邻居吵架了"],
    "chore_how_zh": ["换灯泡", "修自行车", "去除衣服上的油渍", "养多肉植物", "给狗洗澡", "做蛋糕", "包饺子", "冲咖啡"],
    "chore_en": ["fix a leaking pipe", "change a flat tire", "remove an oil stain", "care for a succulent",
                 "bathe my dog", "bake a cake", "make dumplings", "fix a laptop that won't start"],
    "letter_zh": ["辞职信", "求职信", "道歉信", "感谢信"],
    "letter_en": ["resignation letter", "cover letter", "letter of apology", "thank-you note"],
    "book_zh": ["红楼梦", "西游记", "三体", "百年孤独"],
    "book_en": ["Pride and Prejudice", "Moby Dick", "The Three-Body Problem", "Hamlet"],
    "sentence_zh": ["今天的会议推迟到下午三点", "我想预订一个双人房间", "请把门关上"],
    "sentence_en": ["the meeting is moved to three o'clock", "I would like to book a double room",
                    "please close the door"],
}


def offtopic_questions(lang, rng, count):
    """`count` out-of-domain questions (distinct), drawn from the templates and fillers."""
    templates = ZH_TEMPLATES if lang == "zh" else EN_TEMPLATES
    seen, out = set(), []
    for _ in range(count * 20):
        if len(out) >= count:
            break
        template, key = rng.choice(templates)
        if key is None:
            q = template
        else:
            x = rng.choice(FILLERS[key])
            q = template.format(x=x[0], y=x[1]) if isinstance(x, tuple) else template.format(x=x)
        if q not in seen:
            seen.add(q)
            out.append(q)
    return out


# Held-out questions: phrasings and topics of their own. "open" are everyday questions that sound like the
# demo's advice topics but that it has no answer for.
EVAL = {
    "zh": {
        "off_topic": ["澳大利亚的首都叫什么名字？", "讲一个让人开心的小笑话", "帮我写一首关于春雨的五言诗",
                      "用 Go 语言写一个 HTTP 服务器", "证明任意两个奇数的和是偶数", "用 LaTeX 排版牛顿第二定律",
                      "昨天股市发生了什么？", "唐朝是哪一年建立的？", "血糖高的人能吃西瓜吗？",
                      "量子计算机和普通电脑有什么区别？", "月球上有水吗？", "给我推荐几首周杰伦的歌",
                      "火星上能住人吗？", "帮我规划一下去云南的七天行程", "莎士比亚写过哪些悲剧？",
                      "如何评价这部新电影？"],
        "open": ["衬衫上的红酒渍怎么洗掉？", "家里的猫不吃东西怎么办？", "怎么挑选西瓜？", "婚礼上穿什么合适？",
                 "阳台上的花总是枯萎怎么办？", "怎么教孩子骑自行车？", "冰箱有异味怎么办？", "搬家要注意什么？"],
    },
    "en": {
        "off_topic": ["Name the capital city of Canada.", "Could you share a funny joke with me?",
                      "Compose a limerick about a sleepy dog.", "Write a Rust function that parses a date.",
                      "Show that the sum of two odd numbers is even.", "Typeset Newton's second law in LaTeX.",
                      "What happened on the stock market yesterday?", "In which year did the Tang dynasty begin?",
                      "Can people with diabetes eat watermelon?", "How is a quantum computer different from a laptop?",
                      "Is there water on the moon?", "Which songs by the Beatles should I listen to?",
                      "Could humans live on Mars?", "Plan a seven-day trip to Yunnan for me.",
                      "Which tragedies did Shakespeare write?", "What is your opinion of the new Star Wars film?"],
        "open": ["How do I get a red wine stain out of a shirt?", "My cat will not eat. What should I do?",
                 "How do I pick a good watermelon?", "What should I wear to a wedding?",
                 "The plants on my balcony keep dying. Why?", "How do I teach a child to ride a bike?",
                 "My fridge smells bad. How do I fix it?", "What should I keep in mind when moving house?"],
    },
}
