"""Streaming: print the answer while it is being generated.

    python examples/streaming.py [--model THUDM/chatglm-6b]
"""

from _common import parse_args
from transformers import AutoModel, AutoTokenizer

args = parse_args(__doc__)
tokenizer = AutoTokenizer.from_pretrained(args.model)
model = AutoModel.from_pretrained(args.model).float().eval()

printed = ""
# do_sample=False: greedy decoding, the same answer every time (drop it to sample, as chat() does by default)
for partial, _history in model.stream_chat(tokenizer, "用三句话介绍一下北京", history=[],
                                           max_length=args.max_length, do_sample=False):
    # each step yields the whole answer so far: print only the new part
    print(partial[len(printed):], end="", flush=True)
    printed = partial
print()
