"""Multi-round chat: pass the returned history back in, and the model sees the earlier rounds.

    python examples/chat_with_history.py [--model THUDM/chatglm-6b]
"""

from _common import parse_args
from transformers import AutoModel, AutoTokenizer

args = parse_args(__doc__)
tokenizer = AutoTokenizer.from_pretrained(args.model)
model = AutoModel.from_pretrained(args.model).float().eval()  # on a GPU: .half().cuda()

history = []  # a list of (question, answer) pairs
for question in ["你好", "晚上睡不着应该怎么办"]:
    # do_sample=False: greedy decoding, the same answer every time
    answer, history = model.chat(tokenizer, question, history=history, max_length=args.max_length,
                                 do_sample=False)
    print(f"Q: {question}\nA: {answer}\n")

print(f"rounds in history: {len(history)}")
