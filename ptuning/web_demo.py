#!/usr/bin/env python3
"""Chat in the browser with a base model plus a P-Tuning v2 prefix checkpoint.

    python3 ptuning/web_demo.py --model_name_or_path THUDM/chatglm-6b \\
        --ptuning_checkpoint ptuning/output/adgen-chatglm-6b-pt-128-2e-2/checkpoint-3000 --pre_seq_len 128
    python3 ptuning/web_demo.py --model_name_or_path chatglm-demo --ptuning_checkpoint DIR --device cpu --port 7861

Model flags are those of ptuning/main.py (ModelArguments: --model_name_or_path, --ptuning_checkpoint,
--pre_seq_len, --prefix_projection, --quantization_bit, --lora_checkpoint); --pre_seq_len may be left out (it is
read from the checkpoint). The page is the one of the top-level web_demo.py (chatglm.entrypoints.webui.build_demo).
"""

from dataclasses import dataclass, field

from ptuning.arguments import ModelArguments


@dataclass
class ServerArguments:
    device: str = field(default="auto", metadata={"help": "auto (cuda, then mps, then cpu), cuda, cuda:N, mps or cpu."})
    host: str = field(default="127.0.0.1",
                      metadata={"help": "Address to listen on (0.0.0.0: reachable from other machines)."})
    port: int | None = field(default=None, metadata={"help": "Port (default: 7860, or the next free one)."})
    share: bool = field(default=False, metadata={"help": "Also create a public gradio.live link."})
    max_batch_size: int = field(default=8, metadata={
        "help": "Answers generated at the same time, batched together; others wait in the queue."})


def load_model(model_args, device="cpu"):
    """(tokenizer, model) for chatting: base model + prefix checkpoint (or LoRA adapter, --lora_checkpoint),
    optionally quantized, on `device`.
    On CUDA half precision with the prefix encoder in fp32 (as the original); on CPU fp32."""
    import torch

    from ptuning.prefix import half_with_fp32_prefix, load_for_ptuning

    _, tokenizer, model = load_for_ptuning(model_args, dtype=torch.float32)
    if getattr(model_args, "lora_checkpoint", None):
        from chatglm.lora import apply_lora

        model = apply_lora(model, [model_args.lora_checkpoint], merge=not model_args.quantization_bit)
    if str(device) != "cpu":
        model = half_with_fp32_prefix(model)
    model = model.to(device).eval()
    return tokenizer, model


def main(argv=None):
    from transformers import HfArgumentParser

    from chatglm.entrypoints.loader import pick_device

    parser = HfArgumentParser((ModelArguments, ServerArguments))
    model_args, server_args = parser.parse_args_into_dataclasses(args=argv)
    device = pick_device(server_args.device)
    tokenizer, model = load_model(model_args, device)

    from chatglm.entrypoints.webui import build_demo, launch

    title = "ChatGLM"
    demo = build_demo(tokenizer, model, title=title, max_batch_size=server_args.max_batch_size)
    launch(demo, host=server_args.host, port=server_args.port, share=server_args.share,
           max_batch_size=server_args.max_batch_size)


if __name__ == "__main__":
    from chatglm.entrypoints.cli import run_script

    run_script(main)
