"""Write a random-weight ChatGLM-6B-shaped checkpoint in the real layout, one shard at a time.

The layout of THUDM/chatglm-6b: fp16 `pytorch_model-0000N-of-0000M.bin` shards filled layer by layer,
`pytorch_model.bin.index.json` (with its total_size), the rotary `inv_freq` buffers and a separate
`lm_head.weight` holding the embedding's values in the last shard. Only one shard is in memory at a time,
so the real 28-layer size (about 13 GB on disk) is written with about 2 GB of RAM.

    python benchmarks/random_checkpoint.py OUT_DIR --tokenizer tests/goldens/tokenizer        # 28 layers
    python benchmarks/random_checkpoint.py OUT_DIR --tokenizer ... --layers 4 --shards 2              # "mid"
"""

import argparse
import json
import os
import shutil
from pathlib import Path

import torch

from chatglm import ChatGLMConfig, ChatGLMTokenizer


def layer_tensors(index, config, generator):
    """{name: tensor} of block `index`, in the real checkpoint's names and dtypes (LayerNorms fp32)."""
    hidden, inner = config.hidden_size, config.inner_hidden_size
    rotary_dim = hidden // config.num_attention_heads // 2

    def normal(*shape):
        return (torch.randn(*shape, generator=generator) * 0.02).half()

    prefix = f"transformer.layers.{index}."
    return {
        prefix + "input_layernorm.weight": torch.ones(hidden),
        prefix + "input_layernorm.bias": torch.zeros(hidden),
        prefix + "attention.rotary_emb.inv_freq": (1.0 / 10000 ** (torch.arange(0, rotary_dim, 2) / rotary_dim)).half(),
        prefix + "attention.query_key_value.weight": normal(3 * hidden, hidden),
        prefix + "attention.query_key_value.bias": normal(3 * hidden),
        prefix + "attention.dense.weight": normal(hidden, hidden),
        prefix + "attention.dense.bias": normal(hidden),
        prefix + "post_attention_layernorm.weight": torch.ones(hidden),
        prefix + "post_attention_layernorm.bias": torch.zeros(hidden),
        prefix + "mlp.dense_h_to_4h.weight": normal(inner, hidden),
        prefix + "mlp.dense_h_to_4h.bias": normal(inner),
        prefix + "mlp.dense_4h_to_h.weight": normal(hidden, inner),
        prefix + "mlp.dense_4h_to_h.bias": normal(hidden),
    }


def write_checkpoint(out_dir, config, shards, seed=0):
    """Shard 1 starts with the embedding, the layers are spread evenly, the last shard ends with the final
    LayerNorm and lm_head (the embedding's values)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)
    embedding = (torch.randn(config.vocab_size, config.hidden_size, generator=generator) * 0.02).half()
    layers_per_shard = [len(part) for part in torch.arange(config.num_layers).tensor_split(shards)]
    weight_map, total_size, layer = {}, 0, 0
    for shard in range(shards):
        name = f"pytorch_model-{shard + 1:05d}-of-{shards:05d}.bin"
        state = {"transformer.word_embeddings.weight": embedding} if shard == 0 else {}
        for _ in range(layers_per_shard[shard]):
            state.update(layer_tensors(layer, config, generator))
            layer += 1
        if shard == shards - 1:
            state["transformer.final_layernorm.weight"] = torch.ones(config.hidden_size)
            state["transformer.final_layernorm.bias"] = torch.zeros(config.hidden_size)
            state["lm_head.weight"] = embedding.clone()
        torch.save(state, out_dir / name)
        weight_map.update(dict.fromkeys(state, name))
        total_size += sum(t.numel() * t.element_size() for t in state.values())
        print(f"wrote {name} ({len(state)} tensors)", flush=True)
        del state
    index = {"metadata": {"total_size": total_size}, "weight_map": weight_map}
    (out_dir / "pytorch_model.bin.index.json").write_text(json.dumps(index, indent=2))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir")
    parser.add_argument("--tokenizer", required=True, help="folder with ice_text.model and tokenizer_config.json")
    parser.add_argument("--layers", type=int, default=28)
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--hidden-size", type=int, default=4096, help="smaller for quick trials (inner: 4x, "
                        "heads: hidden / 128)")
    args = parser.parse_args()

    tokenizer = ChatGLMTokenizer.from_pretrained(args.tokenizer)
    ids = tokenizer.convert_tokens_to_ids
    # the real config with the tokenizer's special ids (the small reference tokenizer numbers them lower)
    config = ChatGLMConfig(num_layers=args.layers, hidden_size=args.hidden_size,
                           inner_hidden_size=4 * args.hidden_size, num_attention_heads=args.hidden_size // 128,
                           bos_token_id=ids("<sop>"), eos_token_id=ids("<eop>"),
                           mask_token_id=ids("[MASK]"), gmask_token_id=ids("[gMASK]"), pad_token_id=ids("<pad>"),
                           torch_dtype="float16")
    write_checkpoint(args.out_dir, config, args.shards)
    config.save_pretrained(args.out_dir)
    for name in ("ice_text.model", "tokenizer_config.json"):
        shutil.copy(os.path.join(args.tokenizer, name), args.out_dir)


if __name__ == "__main__":
    main()
