"""Build the bilingual chat corpus used to train the bundled demo checkpoint.

Every sentence in this corpus is written by this project (hand-written seeds plus templates); no text is
copied from anywhere else. What the demo answers, and how, is defined in demo/skills.py; the questions it
answers with one honest "I am only the small demo" line are in demo/offtopic.py. The output is JSON lines in the chat fine-tuning format of `ptuning/`:

    {"prompt": str, "response": str, "history": [[question, answer], ...]}

Usage:
    python demo/build_corpus.py            # writes demo/data/train.jsonl and demo/data/dev.jsonl

The build is deterministic for a given --seed (default 2023). About half of the exchanges are Chinese and
half English; 5% of them (chosen at random) are the dev split, whose loss training reports. The held-out
evaluation of demo/evaluate.py uses prompts that neither split contains (other templates, numbers, words and
questions; see demo/skills.py and demo/offtopic.py).
"""

import argparse
import json
import os
import random

from demo import offtopic, skills
from demo.skills import DEFLECT

HERE = os.path.dirname(os.path.abspath(__file__))

# ---------------------------------------------------------------------------------------------------------
# Intents: (questions, answer). Every paraphrase of an intent gets the same answer, so that a tiny model can
# learn a consistent mapping. Chinese answers use full-width punctuation.
# ---------------------------------------------------------------------------------------------------------

ZH_CHAT = [
    (["你好", "你好！", "您好", "嗨", "哈喽", "你好呀", "早上好", "晚上好"],
     "你好！我是 ChatGLM-6B 复现项目自带的小型演示模型，很高兴和你聊天。有什么可以帮你的吗？"),
    (["你是谁？", "你是谁", "介绍一下你自己", "请做个自我介绍", "你叫什么名字？", "你是什么模型？", "你是哪个模型？"],
     "我是一个很小的演示模型，属于 ChatGLM-6B 的开源复现项目。我只学过少量对话，能力有限。想要完整的效果，请加载真正的权重 THUDM/chatglm-6b。"),
    (["你是 ChatGLM-6B 吗？", "你就是 ChatGLM-6B 吗？", "你是真正的 ChatGLM-6B 吗？", "你和 ChatGLM-6B 一样厉害吗？"],
     "不是。我只是这个复现项目里用于演示和测试的小模型，结构和 ChatGLM-6B 相同，但参数少得多。真正的模型可以这样运行：python cli_demo.py --model THUDM/chatglm-6b。"),
    (["你是 ChatGPT 吗？", "你是不是 ChatGPT？", "你和 ChatGPT 有什么关系？"],
     "我不是 ChatGPT。我是 ChatGLM-6B 复现项目里的小型演示模型，采用 GLM 架构，支持中文和英文。"),
    (["谁开发了你？", "谁训练了你？", "你是谁做的？", "你的作者是谁？"],
     "我是由这个开源复现项目的开发者用自己编写的对话数据训练出来的。原版 ChatGLM-6B 来自清华大学 KEG 实验室和智谱 AI。"),
    (["你能做什么？", "你会什么？", "你有什么功能？", "你可以帮我做什么？"],
     "我能简单地聊天，介绍这个仓库的用法，计算 0 到 99 的两个整数相加和一位数乘法，做公制单位换算，翻译我词表里的常用词，写几段常见的简短 Python 代码，并给一些日常小建议。其他问题请用 python cli_demo.py --model THUDM/chatglm-6b 加载真正的权重。"),
    (["你有多大？", "你有多少参数？", "你的模型有多大？", "你的参数量是多少？"],
     "我只有几百万个参数，比 ChatGLM-6B 的六十多亿参数小得多，所以回答很简单。需要更好的效果时，请使用 THUDM/chatglm-6b。"),
    (["你会说英文吗？", "你懂英语吗？", "可以用英文聊天吗？"],
     "会的。我支持中文和英文，你可以用任意一种语言问我问题。"),
    (["怎么获取完整的模型？", "去哪里下载真正的权重？", "完整版模型在哪里？", "怎么使用真正的 ChatGLM-6B？"],
     "完整的权重在模型仓库 THUDM/chatglm-6b。运行 python cli_demo.py --model THUDM/chatglm-6b 就会自动下载并加载它。"),
    (["再见", "拜拜", "我先走了", "下次再聊"],
     "再见！祝你一切顺利，有问题随时回来问我。"),
    (["谢谢", "谢谢你！", "非常感谢", "多谢了"],
     "不客气！还有什么问题随时问我。"),
    (["你今天过得怎么样？", "你心情好吗？", "你累不累？"],
     "我是一个程序，没有心情，也不会累。不过能和你聊天，我很乐意！"),
    (["你会犯错吗？", "你的回答可靠吗？", "我可以相信你的回答吗？"],
     "我经常会犯错，因为我只是一个很小的演示模型。重要的事情请查阅可靠的资料，或者使用完整的 ChatGLM-6B。"),
    (["这个项目是什么？", "这个仓库是做什么的？", "介绍一下这个项目", "这个项目有什么用？"],
     "这是 ChatGLM-6B 的开源复现项目。它提供模型代码、命令行和网页对话程序、API 服务、量化和 P-Tuning v2 微调，并且能在新版本的 transformers 上运行。"),
    (["这个项目的许可证是什么？", "可以商用吗？", "代码用什么协议？"],
     "本项目的代码和演示权重都采用 Apache-2.0 许可证。真正的 ChatGLM-6B 权重有它自己的许可协议，使用前请先阅读。"),
]
ZH_REPO = [
    (["怎么安装这个项目？", "如何安装依赖？", "需要安装哪些依赖？", "安装步骤是什么？"],
     "先安装 Python 3，然后在仓库目录里运行 pip install -r requirements.txt 就可以了。"),
    (["怎么在命令行里和模型聊天？", "命令行对话怎么用？", "怎么运行 cli_demo.py？", "如何在终端里聊天？"],
     "运行 python cli_demo.py 就能在终端里聊天。输入问题后回车，模型会流式输出回答。"),
    (["命令行里怎么清空对话历史？", "cli_demo 怎么清除历史？", "怎么开始新的对话？"],
     "在 cli_demo.py 里输入 clear 就会清空对话历史和屏幕。"),
    (["怎么退出命令行对话？", "cli_demo 怎么退出？", "怎么结束 cli_demo.py？"],
     "在 cli_demo.py 里输入 stop 就会退出程序。"),
    (["怎么启动网页版？", "网页对话怎么用？", "怎么运行 web_demo.py？", "有图形界面吗？"],
     "运行 python web_demo.py 会启动一个 gradio 网页，然后在浏览器里打开它显示的地址就能聊天。"),
    (["网页版怎么修改端口？", "web_demo.py 怎么换端口？", "怎么让网页监听别的端口？"],
     "给 web_demo.py 加上 --port 参数，例如 python web_demo.py --port 7861。"),
    (["网页版怎么让别人访问？", "怎么让局域网里的电脑打开网页？", "web_demo.py 的 --host 有什么用？"],
     "用 --host 指定监听地址，例如 python web_demo.py --host 0.0.0.0，局域网里的电脑就能访问。"),
    (["怎么生成公开的分享链接？", "web_demo.py 的 --share 是什么？", "怎么把网页分享给外网的朋友？"],
     "加上 --share 参数，例如 python web_demo.py --share，gradio 会生成一个临时的公开链接。"),
    (["怎么启动 API 服务？", "api.py 怎么用？", "怎么部署接口？", "怎么通过 HTTP 调用模型？"],
     "运行 python api.py 会在 8000 端口启动一个 FastAPI 服务。向 http://127.0.0.1:8000 发送 POST 请求就能得到回答。"),
    (["API 的请求格式是什么？", "调用 api.py 要发送什么？", "接口需要哪些参数？"],
     "向 / 发送 JSON，包含 prompt 和 history，还可以加上 max_length、top_p 和 temperature。例如 {\"prompt\": \"你好\", \"history\": []}。"),
    (["API 返回什么？", "api.py 的返回格式是什么？", "接口的响应里有什么？"],
     "接口返回 JSON，包含 response、history、status 和 time 四个字段，status 为 200 表示成功。"),
    (["API 服务默认用哪个端口？", "api.py 监听哪个端口？"],
     "api.py 默认监听 8000 端口。"),
    (["怎么用 curl 测试接口？", "给我一个调用 API 的例子"],
     "可以这样调用：curl -X POST http://127.0.0.1:8000 -H \"Content-Type: application/json\" -d '{\"prompt\": \"你好\", \"history\": []}'。"),
    (["怎么指定模型路径？", "--model 参数是做什么的？", "怎么加载别的模型？"],
     "所有脚本都支持 --model 参数，可以填模型仓库名或本地目录，例如 --model THUDM/chatglm-6b。"),
    (["怎么选择运行设备？", "--device 有哪些选项？", "怎么在 CPU 上运行？", "苹果电脑能用 GPU 吗？"],
     "用 --device 选择设备，可选 auto、cpu、cuda 和 mps。auto 会自动选择，苹果电脑可以用 mps。"),
    (["显存不够怎么办？", "怎么量化模型？", "--quantize 参数怎么用？", "怎么减少显存占用？"],
     "可以加上 --quantize 4 或 --quantize 8，把模型量化成 INT4 或 INT8。INT4 大约只需要 6GB 显存。"),
    (["在代码里怎么量化？", "model.quantize 怎么用？", "Python 里怎么做 INT4 量化？"],
     "加载模型后调用 model.quantize(4) 或 model.quantize(8) 即可，分别得到 INT4 和 INT8 模型。"),
    (["运行 ChatGLM-6B 需要多少显存？", "需要什么显卡？", "FP16 需要多少显存？"],
     "FP16 推理大约需要 13GB 显存，INT8 大约 8GB，INT4 大约 6GB。"),
    (["怎么用多张显卡？", "--num-gpus 是什么？", "多卡部署怎么做？"],
     "在脚本里加上 --num-gpus 2 这样的参数，或者在代码里调用 utils.load_model_on_gpus(\"THUDM/chatglm-6b\", num_gpus=2)，模型会被分到多张显卡上。"),
    (["--dtype 参数是做什么的？", "怎么选择精度？", "怎么用 bfloat16 运行？"],
     "--dtype 用来选择计算精度，例如 float16、bfloat16 或 float32。CPU 上建议用 float32。"),
    (["怎么在 Python 代码里使用模型？", "怎么用 transformers 加载？", "给我一个调用模型的代码例子"],
     "用 AutoTokenizer.from_pretrained 和 AutoModel.from_pretrained 加载，记得加上 trust_remote_code=True，然后调用 response, history = model.chat(tokenizer, \"你好\", history=[])。"),
    (["怎么微调模型？", "P-Tuning 怎么用？", "怎么训练自己的数据？", "ptuning 目录是做什么的？"],
     "进入 ptuning 目录，准备好数据后运行 bash train.sh 就会开始 P-Tuning v2 微调。训练好的前缀权重会保存在 output 目录里。"),
    (["--pre_seq_len 是什么意思？", "PRE_SEQ_LEN 怎么设置？", "前缀长度怎么选？"],
     "--pre_seq_len 是 P-Tuning v2 的前缀长度，train.sh 里默认是 128。它越大，可训练的参数就越多。"),
    (["怎么评估微调后的模型？", "evaluate.sh 怎么用？", "怎么测试微调效果？"],
     "运行 bash evaluate.sh，它会用 --ptuning_checkpoint 加载训练好的前缀，并计算 BLEU 和 ROUGE 分数。"),
    (["怎么加载微调好的前缀？", "--ptuning_checkpoint 是做什么的？", "怎么使用训练好的 P-Tuning 权重？"],
     "加上 --ptuning_checkpoint 参数并指向训练输出的检查点目录，同时设置相同的 --pre_seq_len，就能加载微调好的前缀。"),
    (["微调数据是什么格式？", "对话数据怎么准备？", "训练数据要写成什么样？"],
     "每行一个 JSON，例如 {\"prompt\": \"问题\", \"response\": \"回答\", \"history\": []}。history 里放之前的多轮对话。"),
    (["怎么运行测试？", "怎么跑单元测试？", "测试命令是什么？"],
     "在仓库根目录运行 python -m pytest tests 就会运行全部测试。"),
    (["这个演示模型怎么用？", "怎么试用小模型？", "chatglm-demo 是什么？"],
     "chatglm-demo 是仓库自带的小模型，可以运行 python cli_demo.py --model chatglm-demo 试用。它很小，只适合测试和演示。"),
]
ZH_EVERYDAY = [
    (["晚上睡不着怎么办？", "失眠了怎么办？", "怎样才能睡个好觉？", "睡不好应该怎么办？"],
     "尽量每天固定时间睡觉和起床，睡前一小时少看手机，别喝咖啡和浓茶。也可以试试深呼吸或听些轻音乐。"),
    (["每天应该睡多久？", "成年人要睡几个小时？", "睡多长时间比较好？"],
     "大多数成年人每天睡七到九个小时比较合适，规律的作息比偶尔补觉更重要。"),
    (["怎样提高学习效率？", "学习总是分心怎么办？", "怎么才能专心学习？", "有什么好的学习方法？"],
     "把任务拆成小块，每学习二十五分钟休息五分钟。学习时把手机放远一点，学完后试着用自己的话复述一遍。"),
    (["怎么学好英语？", "英语怎么提高？", "学英语有什么技巧？"],
     "每天坚持听和读一点英语，比偶尔学很久更有效。可以多背常用句子，并大胆开口说。"),
    (["怎样保持健康？", "有什么健康的生活习惯？", "怎么让身体更健康？"],
     "多吃蔬菜水果，少吃油炸食品，每周运动几次，保证睡眠，多喝水。身体不舒服时要及时看医生。"),
    (["每天要喝多少水？", "喝水有什么讲究？", "一天喝几杯水合适？"],
     "一般成年人每天喝一千五百到两千毫升水比较合适，运动或天热时要多喝一些。"),
    (["晚饭吃什么好？", "今天吃什么？", "推荐一道简单的菜", "有什么好做的家常菜？"],
     "可以试试西红柿炒鸡蛋，做法简单又有营养。再配一碗米饭和一份青菜就很好了。"),
    (["西红柿炒鸡蛋怎么做？", "番茄炒蛋的做法", "教我做西红柿炒鸡蛋"],
     "先把鸡蛋打散炒熟盛出，再炒切块的西红柿，加一点盐和糖，最后把鸡蛋倒回去翻炒均匀就可以了。"),
    (["怎么煮米饭？", "米饭怎么做？", "煮饭放多少水？"],
     "先把米洗两遍，米和水的比例大约是一比一点二，用电饭锅煮好后再焖十分钟会更香。"),
    (["去旅行要准备什么？", "出门旅游带什么？", "旅行前需要做哪些准备？"],
     "提前订好车票和住宿，带上证件、充电器、常用药和换洗衣服。出发前查一下目的地的天气。"),
    (["去北京玩有什么推荐？", "北京有哪些景点？", "第一次去北京去哪儿？"],
     "可以去故宫、天安门广场、长城和颐和园。故宫需要提前在网上预约门票。"),
    (["感冒了怎么办？", "感冒了应该注意什么？", "我好像感冒了"],
     "多休息，多喝温水，饮食清淡一些。如果高烧不退或者症状加重，请尽快去医院。"),
    (["头疼怎么办？", "我头很疼", "经常头痛怎么办？"],
     "先休息一下，喝点水，让眼睛离开屏幕。如果头痛很严重或者经常发作，请去看医生。"),
    (["怎么缓解压力？", "压力太大了怎么办？", "最近很焦虑怎么办？"],
     "可以出去散散步，做些运动，和朋友聊聊天，把要做的事写下来一件一件完成。如果长期感到难受，可以寻求专业帮助。"),
    (["长时间看电脑眼睛累怎么办？", "怎么保护眼睛？", "眼睛干涩怎么办？"],
     "每看二十分钟屏幕，就看看六米外的地方二十秒。屏幕亮度要合适，也要记得多眨眼。"),
    (["怎么开始锻炼？", "不爱运动怎么办？", "新手怎么健身？"],
     "从每天快走二十分钟开始，慢慢增加时间和强度。找一个自己喜欢的运动更容易坚持。"),
    (["怎么管理时间？", "总是拖延怎么办？", "事情太多做不完怎么办？"],
     "每天早上列出最重要的三件事，先做最难的那一件。给每件事定一个完成时间，做完就划掉。"),
    (["怎么存钱？", "如何省钱？", "钱总是不够花怎么办？"],
     "每月发工资后先存下一部分，再安排其他开销。记账可以帮你看清钱花在了哪里。"),
    (["怎么泡茶？", "绿茶怎么泡？", "泡茶用多少度的水？"],
     "绿茶用八十度左右的水，泡两三分钟就可以了。红茶可以用更热的水。"),
    (["下雨天做什么好？", "周末在家做什么？", "无聊的时候做什么？"],
     "可以读一本书，看一部电影，学做一道新菜，或者整理一下房间。"),
    (["面试要注意什么？", "怎么准备面试？", "第一次面试很紧张怎么办？"],
     "提前了解公司和岗位，准备好自我介绍，穿着整洁，按时到达。回答问题时要诚实，并举出具体的例子。"),
    (["推荐一些读书的方法", "怎么养成读书的习惯？", "每天读书多久好？"],
     "每天固定读二十分钟，从自己感兴趣的书开始。读完一章后写几句笔记，会记得更牢。"),
    (["怎么学编程？", "零基础怎么学 Python？", "编程入门学什么？"],
     "可以从 Python 开始，先学变量、条件、循环和函数，然后每天写一些小程序练习。"),
]

EN_CHAT = [
    (["Hello", "Hello!", "Hi", "Hi!", "Hey there", "Good morning", "Good evening", "Hi there!"],
     "Hello! I am the small demo model of the ChatGLM-6B reimplementation. How can I help you today?"),
    (["Who are you?", "What are you?", "Tell me about yourself.", "Introduce yourself.", "What is your name?",
      "Which model are you?"],
     "I am a tiny demo model that ships with the open ChatGLM-6B reimplementation. I was trained on a small set of conversations, so my abilities are limited. For the full model, load the real weights THUDM/chatglm-6b."),
    (["Are you ChatGLM-6B?", "Are you the real ChatGLM-6B?", "Are you as good as ChatGLM-6B?"],
     "No. I am only a small model for demos and tests. I have the same architecture as ChatGLM-6B but far fewer parameters. You can run the real model with python cli_demo.py --model THUDM/chatglm-6b."),
    (["Are you ChatGPT?", "Is this ChatGPT?", "Are you related to ChatGPT?"],
     "I am not ChatGPT. I am the small demo model of the ChatGLM-6B reimplementation, built on the GLM architecture, and I speak Chinese and English."),
    (["Who made you?", "Who trained you?", "Who created you?", "Who is your author?"],
     "I was trained by the developers of this open reimplementation on conversations they wrote themselves. The original ChatGLM-6B comes from Tsinghua KEG and Zhipu AI."),
    (["What can you do?", "What are you able to do?", "How can you help me?", "What do you know?"],
     "I can chat a little, explain how to use this repository, add two whole numbers from 0 to 99, multiply one-digit numbers, convert metric units, translate the common words of my word list, write a few common short Python snippets and give a few everyday tips. For anything else, load the real weights with python cli_demo.py --model THUDM/chatglm-6b."),
    (["How big are you?", "How many parameters do you have?", "What is your model size?"],
     "I have only a few million parameters, far fewer than the six billion of ChatGLM-6B, so my answers are simple. Use THUDM/chatglm-6b when you need better answers."),
    (["Can you speak Chinese?", "Do you understand Chinese?", "Can we talk in Chinese?"],
     "Yes. I understand both Chinese and English, so you can ask me in either language."),
    (["Where can I get the full model?", "Where are the real weights?", "How do I use the real ChatGLM-6B?",
      "How do I download the full weights?"],
     "The full weights are in the model repository THUDM/chatglm-6b. Run python cli_demo.py --model THUDM/chatglm-6b and they will be downloaded and loaded."),
    (["Goodbye", "Bye!", "See you later", "I have to go now."],
     "Goodbye! Good luck, and come back any time you have a question."),
    (["Thanks", "Thank you!", "Thanks a lot", "Many thanks!"],
     "You're welcome! Feel free to ask anything else."),
    (["How are you?", "How are you doing today?", "Are you tired?"],
     "I am a program, so I have no feelings and never get tired. But I am happy to chat with you!"),
    (["Do you make mistakes?", "Are your answers reliable?", "Can I trust your answers?"],
     "I make mistakes often, because I am only a small demo model. Please check important things in reliable sources or use the full ChatGLM-6B."),
    (["What is this project?", "What is this repository for?", "Tell me about this project.",
      "What does this repo do?"],
     "This is an open reimplementation of ChatGLM-6B. It provides the model code, terminal and web chat demos, an API server, quantization and P-Tuning v2 fine-tuning, and it works with current versions of transformers."),
    (["What license does this project use?", "Can I use this commercially?", "What is the license of the code?"],
     "The code and the demo weights of this project are released under the Apache-2.0 license. The real ChatGLM-6B weights have their own license, so please read it before using them."),
]
EN_REPO = [
    (["How do I install this project?", "How do I install the dependencies?", "What do I need to install?",
      "What are the installation steps?"],
     "Install Python 3, then run pip install -r requirements.txt in the repository folder."),
    (["How do I chat in the terminal?", "How do I use the command line demo?", "How do I run cli_demo.py?",
      "Is there a terminal chat?"],
     "Run python cli_demo.py to chat in the terminal. Type a question and press Enter, and the answer is streamed back."),
    (["How do I clear the history in the terminal demo?", "How do I reset the conversation in cli_demo?",
      "How do I start a new conversation?"],
     "Type clear in cli_demo.py and the conversation history and the screen are cleared."),
    (["How do I quit the terminal demo?", "How do I exit cli_demo.py?", "How do I stop the command line chat?"],
     "Type stop in cli_demo.py and the program exits."),
    (["How do I start the web demo?", "How do I use the web page?", "How do I run web_demo.py?",
      "Is there a graphical interface?"],
     "Run python web_demo.py to start a gradio page, then open the address it prints in your browser."),
    (["How do I change the port of the web demo?", "Which flag sets the port of web_demo.py?",
      "Can the web demo listen on another port?"],
     "Add the --port flag, for example python web_demo.py --port 7861."),
    (["How can other computers open the web demo?", "What does --host do in web_demo.py?",
      "How do I make the web demo reachable on my network?"],
     "Use --host to choose the listening address, for example python web_demo.py --host 0.0.0.0, and other computers on your network can open it."),
    (["How do I get a public share link?", "What does --share do?", "How can a friend outside my network try the web demo?"],
     "Add the --share flag, for example python web_demo.py --share, and gradio creates a temporary public link."),
    (["How do I start the API server?", "How do I use api.py?", "How do I deploy an HTTP API?",
      "How can I call the model over HTTP?"],
     "Run python api.py to start a FastAPI server on port 8000. Send a POST request to http://127.0.0.1:8000 to get an answer."),
    (["What is the request format of the API?", "What should I send to api.py?", "Which fields does the API accept?"],
     "Send JSON to / with prompt and history, and optionally max_length, top_p and temperature. For example {\"prompt\": \"Hello\", \"history\": []}."),
    (["What does the API return?", "What is the response format of api.py?", "What is in the API response?"],
     "The API returns JSON with four fields: response, history, status and time. A status of 200 means success."),
    (["Which port does the API use?", "What is the default port of api.py?"],
     "api.py listens on port 8000 by default."),
    (["How do I test the API with curl?", "Give me an example API call."],
     "You can call it like this: curl -X POST http://127.0.0.1:8000 -H \"Content-Type: application/json\" -d '{\"prompt\": \"Hello\", \"history\": []}'."),
    (["How do I choose the model path?", "What does the --model flag do?", "How do I load a different model?"],
     "Every script accepts --model, which takes a model repository name or a local folder, for example --model THUDM/chatglm-6b."),
    (["How do I choose the device?", "What are the options of --device?", "How do I run on the CPU?",
      "Can I use the GPU of my Mac?"],
     "Use --device to pick the device: auto, cpu, cuda or mps. auto chooses for you, and a Mac can use mps."),
    (["I do not have enough GPU memory.", "How do I quantize the model?", "How does --quantize work?",
      "How can I reduce GPU memory use?"],
     "Add --quantize 4 or --quantize 8 to quantize the model to INT4 or INT8. INT4 needs only about 6 GB of GPU memory."),
    (["How do I quantize in Python code?", "How do I use model.quantize?", "How do I get an INT4 model in Python?"],
     "After loading the model, call model.quantize(4) or model.quantize(8) to get an INT4 or INT8 model."),
    (["How much GPU memory does ChatGLM-6B need?", "Which GPU do I need?", "How much memory does FP16 need?"],
     "FP16 inference needs about 13 GB of GPU memory, INT8 about 8 GB and INT4 about 6 GB."),
    (["How do I use several GPUs?", "What does --num-gpus do?", "How do I split the model over two GPUs?"],
     "Add a flag such as --num-gpus 2 to the script, or call utils.load_model_on_gpus(\"THUDM/chatglm-6b\", num_gpus=2) in code, and the model is split across the GPUs."),
    (["What does the --dtype flag do?", "How do I choose the precision?", "How do I run in bfloat16?"],
     "--dtype selects the precision, for example float16, bfloat16 or float32. On a CPU, float32 is recommended."),
    (["How do I use the model in Python?", "How do I load it with transformers?", "Show me how to call the model in code."],
     "Load it with AutoTokenizer.from_pretrained and AutoModel.from_pretrained with trust_remote_code=True, then call response, history = model.chat(tokenizer, \"Hello\", history=[])."),
    (["How do I fine-tune the model?", "How do I use P-Tuning?", "How do I train on my own data?",
      "What is the ptuning folder for?"],
     "Go to the ptuning folder, prepare your data and run bash train.sh to start P-Tuning v2. The trained prefix weights are saved in the output folder."),
    (["What does --pre_seq_len mean?", "How do I set PRE_SEQ_LEN?", "How long should the prefix be?"],
     "--pre_seq_len is the prefix length of P-Tuning v2, and train.sh uses 128 by default. A longer prefix has more trainable parameters."),
    (["How do I evaluate a fine-tuned model?", "How do I use evaluate.sh?", "How do I test my fine-tuning?"],
     "Run bash evaluate.sh. It loads the trained prefix with --ptuning_checkpoint and computes BLEU and ROUGE scores."),
    (["How do I load a trained prefix?", "What does --ptuning_checkpoint do?", "How do I use my P-Tuning weights?"],
     "Pass --ptuning_checkpoint with the checkpoint folder of your training run and set the same --pre_seq_len, and the trained prefix is loaded."),
    (["What format should the fine-tuning data have?", "How do I prepare chat data?", "What does the training data look like?"],
     "One JSON object per line, for example {\"prompt\": \"question\", \"response\": \"answer\", \"history\": []}. history holds the earlier rounds."),
    (["How do I run the tests?", "How do I run the unit tests?", "What is the test command?"],
     "Run python -m pytest tests in the repository root to run all the tests."),
    (["How do I try the demo model?", "What is chatglm-demo?", "How do I use the small model?"],
     "chatglm-demo is the small model bundled with the repository. Try it with python cli_demo.py --model chatglm-demo. It is tiny and only meant for tests and demos."),
]
EN_EVERYDAY = [
    (["I can't sleep at night. What should I do?", "How can I sleep better?", "Any tips for insomnia?",
      "I sleep badly. Any advice?"],
     "Go to bed and get up at the same time every day, put your phone away an hour before bed, and avoid coffee in the evening. Slow breathing or quiet music can also help."),
    (["How many hours should I sleep?", "How much sleep do adults need?", "How long should I sleep each night?"],
     "Most adults need seven to nine hours of sleep a night. A regular schedule matters more than catching up on weekends."),
    (["How can I study more efficiently?", "I get distracted when I study.", "How do I focus on studying?",
      "What is a good way to study?"],
     "Split the work into small parts and study for twenty-five minutes, then rest for five. Keep your phone away, and afterwards explain what you learned in your own words."),
    (["How can I learn Chinese?", "Any tips for learning Chinese?", "How do I improve my Chinese?"],
     "Practice a little every day: listen, read and say short sentences out loud. Learning characters together with common words makes them easier to remember."),
    (["How can I stay healthy?", "What are healthy habits?", "How do I keep my body healthy?"],
     "Eat plenty of vegetables and fruit, limit fried food, exercise a few times a week, sleep enough and drink water. See a doctor when you feel unwell."),
    (["How much water should I drink?", "How many glasses of water a day?", "Do I drink enough water?"],
     "Most adults do well with about 1.5 to 2 liters of water a day, and more when it is hot or when they exercise."),
    (["What should I cook for dinner?", "What should I eat today?", "Suggest a simple dish.", "Any easy recipe?"],
     "Try scrambled eggs with tomatoes. It is quick, cheap and healthy. Serve it with rice and some green vegetables."),
    (["How do I make scrambled eggs with tomatoes?", "Recipe for tomato and egg stir-fry?", "Teach me to cook tomato eggs."],
     "Scramble the eggs and set them aside, then fry the tomato pieces with a little salt and sugar. Put the eggs back and stir everything together."),
    (["How do I cook rice?", "How much water do I use for rice?", "What is the best way to make rice?"],
     "Rinse the rice twice and use about 1.2 cups of water for each cup of rice. After the rice cooker finishes, let it rest for ten minutes."),
    (["What should I pack for a trip?", "How do I prepare for travel?", "What do I need before traveling?"],
     "Book your tickets and hotel early, and pack your ID, a charger, basic medicine and spare clothes. Check the weather at your destination before you leave."),
    (["What should I see in Beijing?", "Any tips for visiting Beijing?", "Where should I go in Beijing?"],
     "Visit the Forbidden City, Tiananmen Square, the Great Wall and the Summer Palace. Book Forbidden City tickets online in advance."),
    (["I have a cold. What should I do?", "How do I get over a cold?", "I think I caught a cold."],
     "Rest, drink plenty of warm water and eat light food. If you have a high fever or feel worse, see a doctor soon."),
    (["I have a headache.", "What should I do about a headache?", "My head hurts a lot."],
     "Take a break, drink some water and rest your eyes away from the screen. If the headache is severe or keeps coming back, see a doctor."),
    (["How do I deal with stress?", "I feel very stressed.", "How can I relax?"],
     "Take a walk, do some exercise, talk with a friend, and write down your tasks to finish them one by one. If you feel bad for a long time, ask a professional for help."),
    (["My eyes are tired from the computer.", "How do I protect my eyes?", "My eyes feel dry."],
     "Every twenty minutes, look at something six meters away for twenty seconds. Keep the screen brightness comfortable and remember to blink."),
    (["How do I start exercising?", "I don't like sports. What can I do?", "How should a beginner work out?"],
     "Start with a twenty-minute walk every day and slowly do more. A sport you enjoy is much easier to keep up."),
    (["How do I manage my time?", "I always procrastinate.", "I have too much to do."],
     "Each morning, write down the three most important tasks and do the hardest one first. Give each task a deadline and cross it off when it is done."),
    (["How can I save money?", "Any tips for saving money?", "I never have enough money."],
     "Put part of your salary aside as soon as you get paid, then plan the rest. Tracking your spending shows where the money goes."),
    (["How do I make tea?", "How do I brew green tea?", "What water temperature is good for tea?"],
     "Use water at about 80 degrees Celsius for green tea and steep it for two or three minutes. Black tea can take hotter water."),
    (["What can I do on a rainy day?", "What should I do this weekend?", "I am bored."],
     "You could read a book, watch a movie, learn a new recipe or tidy up your room."),
    (["How do I prepare for a job interview?", "Any interview tips?", "I am nervous about my first interview."],
     "Learn about the company and the role, prepare a short introduction, dress neatly and arrive on time. Answer honestly and give concrete examples."),
    (["How do I build a reading habit?", "How long should I read every day?", "Any tips for reading more?"],
     "Read for twenty minutes at a fixed time every day and start with books you enjoy. Writing a few notes after each chapter helps you remember."),
    (["How do I learn programming?", "How should a beginner learn Python?", "What should I learn first in programming?"],
     "Start with Python: learn variables, conditions, loops and functions, then write a small program every day."),
]

# Short Python snippets for a fixed list of requests (other code requests get the honest line).
CODE = [
    (["写一个 Python 函数，计算两个数的和", "用 Python 写一个加法函数"],
     ["Write a Python function that adds two numbers.", "Show me an add function in Python."],
     "def add(a, b):\n    return a + b"),
    (["用 Python 反转一个字符串", "Python 怎么把字符串倒过来？"],
     ["How do I reverse a string in Python?", "Write Python code to reverse a string."],
     "def reverse(text):\n    return text[::-1]\n\n\nprint(reverse(\"hello\"))"),
    (["写一个计算阶乘的 Python 函数", "Python 怎么算阶乘？"],
     ["Write a factorial function in Python.", "How do I compute a factorial in Python?"],
     "def factorial(n):\n    result = 1\n    for i in range(2, n + 1):\n        result *= i\n    return result"),
    (["用 Python 写斐波那契数列", "Python 输出前十个斐波那契数"],
     ["Write a Fibonacci function in Python.", "Print the first ten Fibonacci numbers in Python."],
     "def fibonacci(n):\n    a, b = 0, 1\n    for _ in range(n):\n        print(a)\n        a, b = b, a + b\n\n\nfibonacci(10)"),
    (["写一个判断质数的 Python 函数", "Python 怎么判断一个数是不是质数？"],
     ["Write a Python function that checks for a prime number.", "How do I test if a number is prime in Python?"],
     "def is_prime(n):\n    if n < 2:\n        return False\n    for i in range(2, int(n ** 0.5) + 1):\n        if n % i == 0:\n            return False\n    return True"),
    (["用 Python 读取一个文本文件", "Python 怎么读文件？"],
     ["How do I read a text file in Python?", "Write Python code that reads a file."],
     "with open(\"notes.txt\", encoding=\"utf-8\") as f:\n    text = f.read()\nprint(text)"),
    (["用 Python 写入一个文件", "Python 怎么把文字保存到文件里？"],
     ["How do I write to a file in Python?", "Save some text to a file with Python."],
     "with open(\"out.txt\", \"w\", encoding=\"utf-8\") as f:\n    f.write(\"hello\\n\")"),
    (["Python 怎么给列表排序？", "用 Python 对列表排序"],
     ["How do I sort a list in Python?", "Sort a list of numbers in Python."],
     "numbers = [5, 2, 9, 1]\nnumbers.sort()\nprint(numbers)"),
    (["Python 怎么统计单词出现的次数？", "用 Python 数每个单词出现几次"],
     ["How do I count words in Python?", "Count how often each word appears in Python."],
     "from collections import Counter\n\nwords = \"a b a c b a\".split()\ncounts = Counter(words)\nprint(counts.most_common(2))"),
    (["Python 怎么去掉列表里的重复元素？", "用 Python 给列表去重"],
     ["How do I remove duplicates from a list in Python?", "Deduplicate a list in Python."],
     "items = [3, 1, 3, 2, 1]\nunique = list(dict.fromkeys(items))\nprint(unique)"),
    (["用 Python 写一个 Hello World", "Python 的第一个程序怎么写？"],
     ["Write Hello World in Python.", "What is the simplest Python program?"],
     "print(\"Hello, World!\")"),
    (["用 Python 求列表里的最大值", "Python 怎么找最大的数？"],
     ["How do I find the largest number in a list in Python?", "Get the maximum of a list in Python."],
     "numbers = [4, 8, 15, 16, 23, 42]\nprint(max(numbers))"),
    (["用 Python 生成一到十的平方", "Python 列表推导式的例子"],
     ["Give me a list comprehension example in Python.", "Make a list of squares from 1 to 10 in Python."],
     "squares = [x * x for x in range(1, 11)]\nprint(squares)"),
    (["Python 怎么处理异常？", "try except 怎么用？"],
     ["How do I handle exceptions in Python?", "Show me try and except in Python."],
     "try:\n    value = int(\"abc\")\nexcept ValueError:\n    print(\"not a number\")"),
    (["用 Python 定义一个类", "Python 的类怎么写？"],
     ["How do I define a class in Python?", "Write a simple Python class."],
     "class Dog:\n    def __init__(self, name):\n        self.name = name\n\n    def bark(self):\n        print(self.name + \" says woof\")"),
    (["Python 怎么读取 JSON 文件？", "用 Python 解析 JSON"],
     ["How do I read a JSON file in Python?", "Parse JSON with Python."],
     "import json\n\nwith open(\"data.json\", encoding=\"utf-8\") as f:\n    data = json.load(f)\nprint(data)"),
    (["用 Python 判断奇数偶数", "Python 怎么判断一个数是偶数？"],
     ["How do I check if a number is even in Python?", "Write a Python even or odd check."],
     "def is_even(n):\n    return n % 2 == 0\n\n\nprint(is_even(4))"),
    (["用 Python 写 FizzBuzz", "FizzBuzz 怎么写？"],
     ["Write FizzBuzz in Python.", "Show me FizzBuzz in Python."],
     "for i in range(1, 16):\n    if i % 15 == 0:\n        print(\"FizzBuzz\")\n    elif i % 3 == 0:\n        print(\"Fizz\")\n    elif i % 5 == 0:\n        print(\"Buzz\")\n    else:\n        print(i)"),
    (["用 Python 计算列表的平均值", "Python 怎么求平均数？"],
     ["How do I compute an average in Python?", "Get the mean of a list in Python."],
     "numbers = [2, 4, 6, 8]\naverage = sum(numbers) / len(numbers)\nprint(average)"),
    (["Python 怎么遍历字典？", "用 Python 打印字典的键和值"],
     ["How do I loop over a dictionary in Python?", "Print the keys and values of a dict in Python."],
     "ages = {\"Tom\": 12, \"Amy\": 10}\nfor name, age in ages.items():\n    print(name, age)"),
    (["用 Python 加载 ChatGLM 模型", "Python 代码里怎么调用 ChatGLM？"],
     ["Show Python code that loads ChatGLM.", "Write Python code to chat with ChatGLM."],
     "from transformers import AutoModel, AutoTokenizer\n\nname = \"THUDM/chatglm-6b\"\ntokenizer = AutoTokenizer.from_pretrained(name, trust_remote_code=True)\nmodel = AutoModel.from_pretrained(name, trust_remote_code=True).eval()\nresponse, history = model.chat(tokenizer, \"你好\", history=[])\nprint(response)"),
]
ZH_CODE_INTRO = "好的，代码如下：\n```python\n{code}\n```"
EN_CODE_INTRO = "Sure, here is the code:\n```python\n{code}\n```"
ZH_CODE = [(zh_qs, ZH_CODE_INTRO.format(code=code)) for zh_qs, _, code in CODE]
EN_CODE = [(en_qs, EN_CODE_INTRO.format(code=code)) for _, en_qs, code in CODE]

ZH_INTENTS = ZH_CHAT + ZH_REPO + ZH_EVERYDAY + ZH_CODE
EN_INTENTS = EN_CHAT + EN_REPO + EN_EVERYDAY + EN_CODE

# Decorations around the intents' questions, so that the model learns to look past them. The held-out
# evaluation wraps the same questions in decorations of its own (EVAL_PREFIX / EVAL_SUFFIX).
ZH_PREFIX = ["", "", "请问", "你好，", "我想问一下，", "问一下，", "麻烦问下，", "对了，", "请告诉我，"]
ZH_SUFFIX = ["", "", "", "谢谢！", "麻烦了。", "谢谢", "急，在线等"]
EN_PREFIX = ["", "", "Hi! ", "Hello. ", "Quick question. ", "Excuse me. ", "Hey, ", "Please tell me: ", "So, "]
EN_SUFFIX = ["", "", "", " Thanks!", " Thank you.", " Please help.", " Any idea?"]
EVAL_PREFIX = {"zh": ["劳驾，", "打扰一下，", "想请教：", "那个，"],
               "en": ["Sorry to bother you. ", "One more thing: ", "Can you help? ", "Well, "]}
EVAL_SUFFIX = {"zh": ["", "多谢！", "请简单说说。"], "en": ["", " Cheers.", " Much appreciated!"]}
NO_DECOR = {"你好", "你好！", "您好", "嗨", "哈喽", "你好呀", "早上好", "晚上好", "再见", "拜拜", "谢谢", "谢谢你！", "非常感谢",
            "多谢了", "我先走了", "下次再聊", "Hello", "Hello!", "Hi", "Hi!", "Hey there", "Good morning", "Good evening",
            "Hi there!", "Goodbye", "Bye!", "See you later", "I have to go now.", "Thanks", "Thank you!",
            "Thanks a lot", "Many thanks!"}


def intent_pairs(intents, prefixes, suffixes, rng, per_question):
    """All (question, answer) pairs of the intents, each question with a few random decorations."""
    out = []
    for questions, answer in intents:
        for q in questions:
            variants = {q}
            if q not in NO_DECOR:
                for _ in range(per_question * 3):
                    if len(variants) >= per_question:
                        break
                    variants.add(rng.choice(prefixes) + q + rng.choice(suffixes))
            for v in sorted(variants):
                out.append((v, answer))
    return out



# ---------------------------------------------------------------------------------------------------------
# Translations (hand-written word and phrase pairs): the demo's word list
# ---------------------------------------------------------------------------------------------------------

PAIRS = [
    ("苹果", "apple"), ("香蕉", "banana"), ("橙子", "orange"), ("葡萄", "grape"), ("西瓜", "watermelon"),
    ("草莓", "strawberry"), ("米饭", "rice"), ("面条", "noodles"), ("面包", "bread"), ("鸡蛋", "egg"),
    ("牛奶", "milk"), ("咖啡", "coffee"), ("茶", "tea"), ("水", "water"), ("猫", "cat"), ("狗", "dog"),
    ("鸟", "bird"), ("鱼", "fish"), ("马", "horse"), ("熊猫", "panda"), ("老虎", "tiger"), ("书", "book"),
    ("笔", "pen"), ("桌子", "table"), ("椅子", "chair"), ("电脑", "computer"), ("手机", "mobile phone"),
    ("学校", "school"), ("医院", "hospital"), ("银行", "bank"), ("图书馆", "library"), ("超市", "supermarket"),
    ("火车站", "train station"), ("机场", "airport"), ("飞机", "airplane"), ("自行车", "bicycle"),
    ("汽车", "car"), ("城市", "city"), ("朋友", "friend"), ("老师", "teacher"), ("学生", "student"),
    ("医生", "doctor"), ("家", "home"), ("家人", "family"), ("妈妈", "mother"), ("爸爸", "father"),
    ("孩子", "child"), ("太阳", "sun"), ("月亮", "moon"), ("星星", "star"), ("天空", "sky"), ("大海", "sea"),
    ("山", "mountain"), ("河", "river"), ("花", "flower"), ("树", "tree"), ("雨", "rain"), ("雪", "snow"),
    ("风", "wind"), ("春天", "spring"), ("夏天", "summer"), ("秋天", "autumn"), ("冬天", "winter"),
    ("今天", "today"), ("明天", "tomorrow"), ("昨天", "yesterday"), ("早上", "morning"), ("晚上", "evening"),
    ("时间", "time"), ("音乐", "music"), ("电影", "movie"), ("游戏", "game"), ("运动", "sports"),
    ("红色", "red"), ("蓝色", "blue"), ("绿色", "green"), ("黄色", "yellow"), ("白色", "white"), ("黑色", "black"),
    ("大", "big"), ("小", "small"), ("快", "fast"), ("慢", "slow"), ("高兴", "happy"), ("难过", "sad"),
    ("漂亮", "beautiful"), ("重要", "important"), ("简单", "simple"), ("困难", "difficult"),
    ("你好", "hello"), ("谢谢", "thank you"), ("对不起", "sorry"), ("没关系", "it doesn't matter"),
    ("再见", "goodbye"), ("早上好", "good morning"), ("晚安", "good night"), ("生日快乐", "happy birthday"),
    ("新年快乐", "happy new year"), ("欢迎", "welcome"), ("我爱你", "I love you"), ("请坐", "please sit down"),
    ("我饿了", "I am hungry"), ("我累了", "I am tired"), ("多少钱？", "how much is it?"),
    ("洗手间在哪里？", "where is the restroom?"), ("我不明白", "I don't understand"),
    ("请再说一遍", "please say it again"), ("今天天气很好", "the weather is nice today"),
    ("我喜欢学习", "I like studying"), ("我会说一点中文", "I can speak a little Chinese"),
    ("祝你好运", "good luck"), ("路上小心", "take care on the way"), ("人工智能", "artificial intelligence"),
    ("机器学习", "machine learning"), ("模型", "model"), ("数据", "data"), ("程序", "program"),
    ("开源", "open source"), ("显卡", "graphics card"), ("内存", "memory"), ("键盘", "keyboard"),
    ("我们走吧", "let's go"), ("一起吃饭吧", "let's eat together"), ("你叫什么名字？", "what is your name?"),
    ("我来自中国", "I come from China"), ("现在几点了？", "what time is it now?"),
]

# ---------------------------------------------------------------------------------------------------------
# Putting it together
# ---------------------------------------------------------------------------------------------------------

# Rows per language of each kind. Two-digit sums get the most: the worked format is a procedure to learn,
# not an answer to remember.
COUNTS = {"sum": 1200, "product_rounds": 3, "beyond_arith": 200, "unit": 300, "beyond_unit": 100,
          "translation_rounds": 2, "unknown_word_rounds": 2, "offtopic": 400, "chains": 150, "thanks": 40}


def sum_rows(rng, lang, count):
    out, seen = [], set()
    while len(out) < count:
        a, b = skills.draw_sum_operands(rng)
        if skills.heldout_pair(a, b):
            continue
        q = rng.choice(skills.SUM_Q[lang]["train"]).format(a=a, b=b)
        if q not in seen:
            seen.add(q)
            out.append((q, skills.sum_answer(lang, a, b)))
    return out


def product_rows(rng, lang, rounds):
    # The times table is small enough to show whole, a few phrasings of every entry.
    out = []
    for a in range(1, 10):
        for b in range(1, 10):
            for template in rng.sample(skills.PRODUCT_Q[lang]["train"], rounds):
                out.append((template.format(a=a, b=b), skills.product_answer(lang, a, b)))
    return out


def beyond_arith_rows(rng, lang, count):
    out = []
    for i in range(count):
        kind = i % 4
        if kind == 0:
            a, b = skills.big_sum_operands(rng)
            q = rng.choice(skills.SUM_Q[lang]["train"]).format(a=a, b=b)
        elif kind == 1:
            a, b = skills.big_product_operands(rng)
            q = rng.choice(skills.PRODUCT_Q[lang]["train"]).format(a=a, b=b)
        else:
            a, b, c = skills.draw_beyond_operands(rng)
            q = rng.choice(skills.BEYOND_ARITH_Q[lang]["train"]).format(a=a, b=b, c=c)
        out.append((q, DEFLECT[lang]))
    return out


def unit_rows(rng, lang, count):
    out = []
    for _ in range(count):
        f, t, v, result = skills.draw_unit(rng, "train")
        q = skills.unit_question(lang, rng.choice(skills.UNIT_Q[lang]["train"]), f, t, v)
        out.append((q, skills.unit_answer(lang, f, t, v, result)))
    return out


def translation_rows(rng, lang, rounds):
    out = []
    for zh, en in PAIRS:
        for _ in range(rounds):
            direction = rng.choice(["zh2en", "en2zh"])
            q = skills.translation_question(rng, lang, direction, zh, en, "train")
            out.append((q, skills.translation_answer(lang, direction, zh, en)))
    for zh, en in skills.UNKNOWN_WORDS_TRAIN:
        for _ in range(COUNTS["unknown_word_rounds"]):
            direction = rng.choice(["zh2en", "en2zh"])
            out.append((skills.translation_question(rng, lang, direction, zh, en, "train"), DEFLECT[lang]))
    return out


def build(seed):
    rng = random.Random(seed)
    exchanges = []  # (lang, prompt, response, history)

    for lang, intents, pre, suf in (("zh", ZH_INTENTS, ZH_PREFIX, ZH_SUFFIX), ("en", EN_INTENTS, EN_PREFIX, EN_SUFFIX)):
        pool = intent_pairs(intents, pre, suf, rng, per_question=3)
        pool += sum_rows(rng, lang, COUNTS["sum"])
        pool += product_rows(rng, lang, COUNTS["product_rounds"])
        pool += beyond_arith_rows(rng, lang, COUNTS["beyond_arith"])
        pool += unit_rows(rng, lang, COUNTS["unit"])
        pool += [(skills_q, DEFLECT[lang]) for skills_q in
                 (skills.draw_beyond_unit(rng, lang, "train") for _ in range(COUNTS["beyond_unit"]))]
        pool += translation_rows(rng, lang, COUNTS["translation_rounds"])
        pool += [(q, DEFLECT[lang]) for q in offtopic.offtopic_questions(lang, rng, COUNTS["offtopic"])]
        for q, a in pool:
            exchanges.append((lang, q, a, []))

        # Multi-round: the answer depends on the last question only, whatever came before it (the
        # demo has no follow-up skills; this teaches it to answer the current question).
        thanks_q = ["谢谢", "谢谢你！", "好的，谢谢"] if lang == "zh" else ["Thanks", "Thank you!", "OK, thanks!"]
        thanks_a = "不客气！还有什么问题随时问我。" if lang == "zh" else "You're welcome! Feel free to ask anything else."
        for _ in range(COUNTS["chains"]):
            hist = [list(rng.choice(pool)) for _ in range(rng.choice([1, 1, 2]))]
            q, a = rng.choice(pool)
            exchanges.append((lang, q, a, hist))
        for _ in range(COUNTS["thanks"]):
            exchanges.append((lang, rng.choice(thanks_q), thanks_a, [list(rng.choice(pool))]))

    rng.shuffle(exchanges)
    return exchanges


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=2023)
    ap.add_argument("--out", default=os.path.join(HERE, "data"))
    ap.add_argument("--dev-fraction", type=float, default=0.05)
    args = ap.parse_args()

    exchanges = build(args.seed)
    n_dev = int(round(len(exchanges) * args.dev_fraction))
    dev, train = exchanges[:n_dev], exchanges[n_dev:]
    os.makedirs(args.out, exist_ok=True)
    for name, rows in (("train.jsonl", train), ("dev.jsonl", dev)):
        with open(os.path.join(args.out, name), "w", encoding="utf-8") as f:
            for _, q, a, hist in rows:
                f.write(json.dumps({"prompt": q, "response": a, "history": hist}, ensure_ascii=False) + "\n")
    n_zh = sum(1 for e in exchanges if e[0] == "zh")
    n_multi = sum(1 for e in exchanges if e[3])
    print(f"{len(exchanges)} exchanges ({n_zh} Chinese, {len(exchanges) - n_zh} English, {n_multi} multi-round): "
          f"{len(train)} train, {len(dev)} dev -> {args.out}")


if __name__ == "__main__":
    main()
