"""transformers' Seq2SeqTrainer adapted to ChatGLM fine-tuning.

Two changes, both as in the original ChatGLM-6B ptuning/:
  * with `save_prefixencoder=True` (P-Tuning v2), checkpoints hold only the `transformer.prefix_encoder.*`
    weights (a few MB instead of the whole model);
  * generation-based evaluation returns only the newly generated tokens (the prompt is cut off) and no loss
    (prompts and labels have different lengths for a decoder-only model).
"""

import os

import torch
from transformers import Seq2SeqTrainer as _HFSeq2SeqTrainer

from ptuning.prefix import PREFIX

WEIGHTS_NAME = "pytorch_model.bin"
TRAINING_ARGS_NAME = "training_args.bin"


class Seq2SeqTrainer(_HFSeq2SeqTrainer):
    def __init__(self, *args, save_prefixencoder=False, gen_kwargs=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.save_prefixencoder = save_prefixencoder
        # generation settings for evaluate()/predict() calls without arguments (evaluations during training)
        self.default_gen_kwargs = dict(gen_kwargs or {})

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval", **gen_kwargs):
        gen_kwargs = gen_kwargs or dict(self.default_gen_kwargs)
        return super().evaluate(eval_dataset, ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix,
                                **gen_kwargs)

    def predict(self, test_dataset, ignore_keys=None, metric_key_prefix="test", **gen_kwargs):
        gen_kwargs = gen_kwargs or dict(self.default_gen_kwargs)
        return super().predict(test_dataset, ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix, **gen_kwargs)

    # ---- saving ----------------------------------------------------------------------------------------

    def _save(self, output_dir=None, state_dict=None):
        if not self.save_prefixencoder:
            return super()._save(output_dir, state_dict=state_dict)
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if not self.args.should_save:
            return
        os.makedirs(output_dir, exist_ok=True)
        model = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
        if state_dict is None:
            state_dict = model.state_dict()
        prefix_state = {k: v.detach().cpu().clone() for k, v in state_dict.items() if k.startswith(PREFIX)}
        if not prefix_state:
            raise RuntimeError("P-Tuning checkpoint: the model has no transformer.prefix_encoder weights to save")
        torch.save(prefix_state, os.path.join(output_dir, WEIGHTS_NAME))
        model.config.save_pretrained(output_dir)
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
        torch.save(self.args, os.path.join(output_dir, TRAINING_ARGS_NAME))

    # ---- evaluation --------------------------------------------------------------------------------------

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None, **gen_kwargs):
        if not self.args.predict_with_generate or prediction_loss_only:
            return super().prediction_step(model, inputs, prediction_loss_only=prediction_loss_only,
                                           ignore_keys=ignore_keys)

        inputs = self._prepare_inputs(inputs)
        if len(gen_kwargs) == 0 and hasattr(self, "_gen_kwargs"):
            gen_kwargs = self._gen_kwargs.copy()
        for key in ("num_beams", "max_length", "max_new_tokens"):
            if key in gen_kwargs and gen_kwargs[key] is None:
                gen_kwargs.pop(key)
        generation_inputs = {k: v for k, v in inputs.items() if k != "labels"}
        prompt_length = generation_inputs["input_ids"].shape[-1]
        unwrapped = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
        with torch.no_grad():
            generated = unwrapped.generate(**generation_inputs, **gen_kwargs)
        generated = generated[:, prompt_length:]
        if generated.shape[-1] == 0:  # nothing generated at all: keep one pad column so batches concatenate
            pad = self.processing_class.pad_token_id if self.processing_class is not None else 0
            generated = torch.full((generated.shape[0], 1), pad, dtype=torch.long, device=generated.device)
        labels = inputs.get("labels")
        return None, generated, labels
