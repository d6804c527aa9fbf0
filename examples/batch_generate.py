"""Batch generation: several prompts at once, left-padded by the tokenizer, through model.generate.

    python examples/batch_generate.py [--model THUDM/chatglm-6b]
"""

import torch
from _common import parse_args
from transformers import AutoModel, AutoTokenizer

from chatglm.generation import process_response  # the clean-up chat() applies to answers

args = parse_args(__doc__, max_length=64)
tokenizer = AutoTokenizer.from_pretrained(args.model)
model = AutoModel.from_pretrained(args.model).float().eval()

prompts = ["你好", "晚上睡不着应该怎么办", "Write a haiku about the sea"]
# padding=True pads on the left (ChatGLM pads only there) and returns the attention mask
inputs = tokenizer(prompts, padding=True, return_tensors="pt")
with torch.no_grad():
    outputs = model.generate(**inputs, max_length=args.max_length, do_sample=False)

prompt_length = inputs["input_ids"].shape[1]
for prompt, output in zip(prompts, outputs):
    answer = process_response(tokenizer.decode(output[prompt_length:], skip_special_tokens=True))
    print(f"{prompt} -> {answer}")
