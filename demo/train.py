"""Train the small bundled demo checkpoint `chatglm-demo/` from scratch on the demo corpus (CPU).

    python demo/build_corpus.py          # demo/data/{train,dev}.jsonl
    python demo/build_tokenizer.py       # demo/work/ice_text.model
    nice python demo/train.py            # trains, exports chatglm-demo/, evaluates, writes the model card

Rows use the layout of chat fine-tuning (`ptuning.data_utils.build_training_row`): the prompt is built as
`chat()` builds it (history rounds as `[Round i]\\n问：q\\n答：a\\n`), then

    input_ids = encode(prompt) + [gMASK, <sop>] + encode(response) + [<eop>]
    labels    = -100 up to <sop>, the ids from <sop> on; right padding with <pad> (3), label -100.

Deterministic for a seed (no dropout; the batch order is drawn from the seed up front). Resumable: a
training state (model, optimizer, step) is saved atomically to demo/work/train_state.pt every
--save-every steps and at the end; rerunning the same command continues from it (--fresh starts over).
The loss log is demo/work/train_log.jsonl.
"""

import argparse
import json
import math
import os
import random
import sys
import time

import torch
from tqdm import tqdm

from chatglm import ChatGLMConfig, ChatGLMForConditionalGeneration, ChatGLMTokenizer
from demo.rows import encode_rows, evaluate_loss, load_rows
from ptuning.data_utils import IGNORE_INDEX, pad_training_rows

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=os.path.join(HERE, "data"))
    ap.add_argument("--tokenizer", default=os.path.join(HERE, "work", "ice_text.model"))
    ap.add_argument("--work", default=os.path.join(HERE, "work"), help="training state, logs (git-ignored)")
    ap.add_argument("--out", default=os.path.join(ROOT, "chatglm-demo"), help="exported checkpoint folder")
    # model size
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--max-seq", type=int, default=512, help="max_sequence_length of the config")
    ap.add_argument("--max-source", type=int, default=256, help="prompt tokens kept (the tail)")
    ap.add_argument("--max-target", type=int, default=160, help="answer tokens kept")
    # optimisation
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--batch-tokens", type=int, default=3072, help="padded tokens per batch (length-bucketed)")
    ap.add_argument("--max-batch", type=int, default=48, help="at most this many rows per batch")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--min-lr-ratio", type=float, default=0.05)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--weight-decay", type=float, default=0.01)
    ap.add_argument("--clip", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--save-every", type=int, default=100, help="steps between training-state saves")
    ap.add_argument("--max-steps", type=int, default=None, help="stop after this many steps (timing runs)")
    ap.add_argument("--fresh", action="store_true", help="ignore an existing training state")
    ap.add_argument("--no-export", action="store_true", help="train only")
    ap.add_argument("--fp16", action="store_true", help="store the exported weights in float16")
    ap.add_argument("--skip-eval", action="store_true",
                    help="export only; run demo/evaluate.py --json ... and demo/model_card.py afterwards")
    return ap.parse_args(argv)


# --- data ----------------------------------------------------------------------------------------


def make_batches(lengths, batch_tokens, max_batch, rng):
    """One epoch of length-bucketed batches: shuffle, sort inside large chunks, cut by padded size."""
    order = list(range(len(lengths)))
    rng.shuffle(order)
    chunk = max_batch * 50
    batches = []
    for start in range(0, len(order), chunk):
        part = sorted(order[start : start + chunk], key=lambda i: lengths[i])
        batch, longest = [], 0
        for i in part:
            new_longest = max(longest, lengths[i])
            if batch and (new_longest * (len(batch) + 1) > batch_tokens or len(batch) >= max_batch):
                batches.append(batch)
                batch, new_longest = [], lengths[i]
            batch.append(i)
            longest = new_longest
        if batch:
            batches.append(batch)
    rng.shuffle(batches)
    return batches


# --- model ---------------------------------------------------------------------------------------


def build_config(tokenizer, args):
    if args.hidden % args.heads or (args.hidden // args.heads) % 4:
        raise SystemExit("hidden / heads must be a multiple of 4 (2-D rotary)")
    tid = tokenizer.convert_tokens_to_ids
    return ChatGLMConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=args.hidden,
        inner_hidden_size=4 * args.hidden,
        num_layers=args.layers,
        num_attention_heads=args.heads,
        layernorm_epsilon=1e-5,
        max_sequence_length=args.max_seq,
        position_encoding_2d=True,
        bos_token_id=tid("<sop>"),
        eos_token_id=tid("<eop>"),
        mask_token_id=tid("[MASK]"),
        gmask_token_id=tid("[gMASK]"),
        pad_token_id=tokenizer.pad_token_id,
        use_cache=True,
        architectures=["ChatGLMModel"],
    )


def lr_at(step, total, args):
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    progress = min(1.0, (step - args.warmup) / max(1, total - args.warmup))
    ratio = args.min_lr_ratio + (1 - args.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return args.lr * ratio


def atomic_save(obj, path):
    tmp = path + ".tmp"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    os.makedirs(args.work, exist_ok=True)

    tokenizer = ChatGLMTokenizer(vocab_file=args.tokenizer)
    train_rows = load_rows(os.path.join(args.data_dir, "train.jsonl"))
    dev_rows = load_rows(os.path.join(args.data_dir, "dev.jsonl"))
    train = encode_rows(tokenizer, train_rows, args.max_source, args.max_target)
    dev = encode_rows(tokenizer, dev_rows, args.max_source, args.max_target)
    lengths = [len(ids) for ids, _ in train]
    n_label = sum(sum(1 for x in lab if x != IGNORE_INDEX) for _, lab in train)
    print(f"{len(train)} train rows ({sum(lengths)} tokens, {n_label} label tokens, longest {max(lengths)}), "
          f"{len(dev)} dev rows", flush=True)

    config = build_config(tokenizer, args)
    model = ChatGLMForConditionalGeneration(config)
    model.train()
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(f"model: hidden {args.hidden}, {args.layers} layers, {args.heads} heads, vocab {config.vocab_size}: "
          f"{n_params / 1e6:.2f}M parameters", flush=True)

    # The whole batch schedule is drawn from the seed up front, so a resumed run sees the same batches.
    data_rng = random.Random(args.seed)
    schedule = [(epoch, b) for epoch in range(args.epochs)
                for b in make_batches(lengths, args.batch_tokens, args.max_batch, data_rng)]
    total_steps = len(schedule) if args.max_steps is None else min(len(schedule), args.max_steps)

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}],
                                  lr=args.lr, betas=(0.9, 0.98), eps=1e-8)

    state_path = os.path.join(args.work, "train_state.pt")
    log_path = os.path.join(args.work, "train_log.jsonl")
    step, elapsed_before, dev_history = 0, 0.0, []
    if os.path.exists(state_path) and not args.fresh:
        state = torch.load(state_path, map_location="cpu", weights_only=False)
        if state["args"]["hidden"] != args.hidden or state["args"]["layers"] != args.layers:
            raise SystemExit(f"{state_path} is for another model size; use --fresh to start over")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step, elapsed_before, dev_history = state["step"], state["elapsed"], state.get("dev_history", [])
        print(f"resumed from {state_path} at step {step}/{total_steps}", flush=True)
    elif os.path.exists(log_path):
        os.remove(log_path)

    def save_state():
        atomic_save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                     "elapsed": elapsed_before + time.time() - start, "args": vars(args),
                     "dev_history": dev_history}, state_path)

    start = time.time()
    window_loss, window_tokens, window_steps, window_start = 0.0, 0, 0, time.time()
    bar = tqdm(total=total_steps, initial=step, desc="train", unit="step", dynamic_ncols=True)
    log = open(log_path, "a", encoding="utf-8")
    while step < total_steps:
        epoch, batch = schedule[step]
        input_ids, labels = pad_training_rows([train[i] for i in batch], tokenizer.pad_token_id)
        lr = lr_at(step, total_steps, args)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss = model(input_ids=input_ids, labels=labels, use_cache=False).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        optimizer.step()
        step += 1
        window_loss += float(loss.detach())
        window_tokens += input_ids.numel()
        window_steps += 1
        bar.update(1)
        bar.set_postfix(epoch=epoch, loss=f"{float(loss.detach()):.3f}", lr=f"{lr:.2e}")
        last_of_epoch = step == total_steps or schedule[step][0] != epoch
        if step % 20 == 0 or last_of_epoch:
            now = time.time()
            record = {"step": step, "epoch": epoch, "loss": window_loss / window_steps, "lr": lr,
                      "grad_norm": float(grad_norm), "tokens_per_s": window_tokens / (now - window_start),
                      "elapsed_s": elapsed_before + now - start}
            if last_of_epoch:
                record["dev_loss"] = evaluate_loss(model, dev, tokenizer.pad_token_id)
                dev_history.append({"epoch": epoch, "step": step, "dev_loss": record["dev_loss"]})
                tqdm.write(f"epoch {epoch} done at step {step}: train loss {record['loss']:.3f}, "
                           f"dev loss {record['dev_loss']:.3f}")
            log.write(json.dumps(record) + "\n")
            log.flush()
            window_loss, window_tokens, window_steps, window_start = 0.0, 0, 0, time.time()
        if step % args.save_every == 0 or step == total_steps:
            save_state()
    bar.close()
    log.close()
    elapsed = elapsed_before + time.time() - start
    print(f"trained {step} steps in {elapsed / 60:.1f} min", flush=True)

    summary = {
        "command": "python demo/train.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "args": vars(args), "steps": step, "train_minutes": round(elapsed / 60, 1),
        "parameters": n_params, "train_rows": len(train), "dev_rows": len(dev),
        "train_tokens_per_epoch": sum(lengths), "dev_history": dev_history,
        "torch": torch.__version__, "threads": args.threads,
    }
    with open(os.path.join(args.work, "train_summary.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=1, ensure_ascii=False)
    if args.no_export or step < len(schedule):
        return
    export(model, tokenizer, args)


def export(model, tokenizer, args):
    from chatglm.export import export_checkpoint

    model.eval()
    # The code files are symlinks to chatglm/ (the checkpoint lives in this repository; git keeps the links),
    # so the checkpoint always runs the current model code.
    export_checkpoint(model, tokenizer, args.out, weights_dtype=torch.float16 if args.fp16 else None,
                      link_code=True)
    print(f"exported {args.out}", flush=True)
    if args.skip_eval:
        return
    # Measure (the held-out evaluation of demo/evaluate.py) and write the model card.
    from demo import evaluate, model_card

    # 2 threads whatever training used: the checkpoint's speed budget is set on 2 CPU cores.
    results = evaluate.run(args.out, os.path.join(args.data_dir, "dev.jsonl"), threads=2)
    with open(os.path.join(args.work, "eval_results.json"), "w", encoding="utf-8") as f:
        json.dump(results, f, indent=1, ensure_ascii=False)
    model_card.write(args.out, os.path.join(args.work, "train_summary.json"),
                     os.path.join(args.work, "eval_results.json"))


if __name__ == "__main__":
    main()
