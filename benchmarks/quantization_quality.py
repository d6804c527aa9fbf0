"""How closely INT8 and INT4 models follow the fp32 model: top-1 next-token agreement and memory.
"+ embeddings" rows also quantize the word embeddings and the tied LM head (`quantize_embeddings=True`).

For each prompt the fp32 model writes a greedy continuation; the quantized model then reads the same
tokens (teacher forcing) and we count the positions where its top-1 token equals fp32's.

    python benchmarks/quantization_quality.py                          # bundled demo checkpoint
    python benchmarks/quantization_quality.py --model tests/goldens/model_A --tokenizer tests/goldens/tokenizer
"""

import argparse
import copy

import torch
from transformers import AutoModel, AutoTokenizer

import chatglm

PROMPTS = ["你好", "晚上睡不着应该怎么办？", "Write a Python function:\ndef add(a, b):\n    return",
           "How do I run the API server?", "把“早上好”翻译成英文", "What is 12 plus 30?"]


def weight_bytes(model):
    """Bytes of the parameters as held in memory (the tied embeddings / LM head once)."""
    return sum(p.numel() * p.element_size() for p in model.parameters())


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=chatglm.DEMO_MODEL_PATH)
    parser.add_argument("--tokenizer", default=None, help="tokenizer folder (default: the model folder)")
    parser.add_argument("--new-tokens", type=int, default=32)
    args = parser.parse_args()

    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer or args.model)
    base = AutoModel.from_pretrained(args.model, dtype=torch.float32).eval()
    sequences = []
    for prompt in PROMPTS:
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
        out = base.generate(ids, max_length=ids.shape[1] + args.new_tokens, do_sample=False)
        sequences.append((ids.shape[1], out))

    print("| precision | weights MB | top-1 agreement with fp32 |")
    print("|---|---|---|")
    variants = {"fp32": (0, False), "int8": (8, False), "int4": (4, False),
                "int8 + embeddings": (8, True), "int4 + embeddings": (4, True)}
    for name, (bits, embeddings) in variants.items():
        model = base if bits == 0 else copy.deepcopy(base).quantize(bits, quantize_embeddings=embeddings)
        agree = total = 0
        with torch.no_grad():
            for prompt_length, seq in sequences:
                reference = base(seq).logits[0, prompt_length - 1 : -1].argmax(-1)
                ours = model(seq).logits[0, prompt_length - 1 : -1].argmax(-1)
                agree += int((reference == ours).sum())
                total += reference.numel()
        print(f"| {name} | {weight_bytes(model) / 1e6:.1f} | {100 * agree / total:.1f}% ({agree}/{total}) |")


if __name__ == "__main__":
    main()
