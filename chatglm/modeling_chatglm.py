"""ChatGLM-6B: the GLM decoder with 2-D rotary positions, as published beside the THUDM weights,
rewritten for current torch and transformers.

Reading order: rotary embedding -> attention -> MLP -> block -> prefix encoder (P-Tuning v2) ->
ChatGLMModel (masks and positions) -> ChatGLMForConditionalGeneration (LM head, generate hooks; chat
and streaming live in generation.py).
Tensors are batch-first, [batch, seq, hidden]; the original was sequence-first, the numbers are the same.
"""

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from .configuration_chatglm import ChatGLMConfig
from .cpu_kernels import add_source_folder, attend, rotate_qk, takes_attention, takes_rotary
from .generation import chat, process_response, stream_chat, stream_generate
from .huge_pages import collapse_weights
from .kv_cache import KVCache
from .linear import Linear
from .positions import glm_position_ids
from .quantization import quantize_model, quantize_word_embeddings, to_cpu_kernel_layout
from .streaming_load import can_stream, load_streaming

# The original builds every block with num_layers=28 whatever the config says, so the residual scale
# is sqrt(2 * 28) for every model size. Checkpoints were trained with it.
RESIDUAL_ALPHA = math.sqrt(2 * 28)
MASKED_SCORE = -10000.0


# --- rotary position embedding ---------------------------------------------------------------------


@functools.cache
def rotary_inv_freq(dim, device=None):
    """Inverse frequencies of a `dim`-wide rotary table, rounded to fp16 as in the original weights.
    Computed once per width and device (every decoding step needs it); callers must not modify it."""
    inv_freq = 1.0 / (10000 ** (torch.arange(0, dim, 2, device=device, dtype=torch.float32) / dim))
    return inv_freq.half().float()


@functools.cache
def rotary_table(dim, length, dtype, device=None):
    """cos and sin of a `dim`-wide rotary embedding at positions 0 .. length - 1: [length, 2, dim], cos at
    [:, 0] and sin at [:, 1]. Computed once per width, length, dtype and device (the original caches its
    tables too; building them at every decoding step cost more than the step's attention on small models);
    callers must not modify it. fp16 models compute the table in fp16 like the original; every other dtype
    in fp32."""
    table_dtype = torch.float16 if dtype == torch.float16 else torch.float32
    inv_freq = rotary_inv_freq(dim, device).to(table_dtype)
    freqs = torch.arange(length, device=device).to(table_dtype)[:, None] * inv_freq  # [length, dim / 2]
    emb = torch.cat((freqs, freqs), dim=-1)  # [length, dim]
    return torch.stack((emb.cos(), emb.sin()), dim=1).to(dtype)


@functools.cache
def block_step(device):
    """[[0], [1]]: what a decoded token adds to the 2-D positions [batch, 2, 1] of the token before it (built
    once per device: a tensor built at every step is a measurable share of a small step). Must not be
    modified."""
    return torch.tensor([[0], [1]], device=device)


def rotate_half(x, parts):
    """Each of the `parts` equal slices [x1 | x2] of the last dimension becomes [-x2 | x1]."""
    x = x.unflatten(-1, (parts, 2, -1))  # [..., parts, 2, width / (2 * parts)]
    return torch.stack((-x[..., 1, :], x[..., 0, :]), dim=-2).flatten(-3)


def apply_rotary(x, rotary):
    """x * cos + rotate_half(x) * sin, with `rotary` = (cos, sin, parts) from ChatGLMModel.rotary_tables."""
    cos, sin, parts = rotary
    return x * cos + rotate_half(x, parts) * sin


def rotate_queries_and_keys(qkv, rotary):
    """q and k of the fused projection qkv [batch, seq, heads, 3, head_dim], rotated: on CPU in place by one
    C call (the same numbers as apply_rotary, whose dozen small ops each cost a dispatch at every layer of a
    decoding step), elsewhere by apply_rotary."""
    cos, sin, parts = rotary
    if takes_rotary(qkv, cos, sin):
        rotate_qk(qkv, cos, sin, parts)
        return qkv[:, :, :, 0], qkv[:, :, :, 1]
    return apply_rotary(qkv[:, :, :, :2], rotary).unbind(3)  # q and k rotated at once


# --- attention -------------------------------------------------------------------------------------


class SelfAttention(nn.Module):
    def __init__(self, config, layer_id):
        super().__init__()
        self.layer_id = layer_id
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.query_key_value = Linear(config.hidden_size, 3 * config.hidden_size)
        self.dense = Linear(config.hidden_size, config.hidden_size)

    def forward(self, hidden_states, rotary, attention_mask, prefix_key=None, prefix_value=None, cache=None,
                output_attentions=False):
        q, k, v = self.project(hidden_states, rotary)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_id)
        if prefix_key is not None:  # P-Tuning v2 keys carry no rotary; every query sees them
            k, v = torch.cat((prefix_key, k), dim=2), torch.cat((prefix_value, v), dim=2)
        return self.attend_keys(q, k, v, attention_mask, output_attentions)

    def project(self, hidden_states, rotary):
        """Queries, keys and values of ``hidden_states`` [batch, seq, hidden], rotated: each [batch, heads, seq,
        head_dim]."""
        batch, seq, _ = hidden_states.shape
        # The fused projection is laid out per head: [q_h | k_h | v_h] for head h.
        qkv = self.query_key_value(hidden_states).view(batch, seq, self.num_heads, 3, self.head_dim)
        q, k = rotate_queries_and_keys(qkv, rotary)
        v = qkv[:, :, :, 2]  # each [batch, seq, heads, head_dim]
        return (t.transpose(1, 2) for t in (q, k, v))  # [batch, heads, seq, head_dim]

    def attend_keys(self, q, k, v, attention_mask, output_attentions=False):
        """The attention output [batch, query, hidden] of queries over keys/values (the cache's and any
        prefix's included), and the probabilities if asked for."""
        batch, _, seq, _ = q.shape
        if output_attentions:
            context, probs = self.layer_scaled_attention(q, k, v, attention_mask)
        else:
            # Same numbers as the layer-scaled form: the scaling cancels out of the softmax.
            if takes_attention(q, k, v, attention_mask):  # a decoding step on CPU, padded batches too
                context = attend(q, k, v, self.head_dim**-0.5, attention_mask)
            else:
                context = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask, scale=self.head_dim**-0.5)
            probs = None
        context = context.transpose(1, 2).reshape(batch, seq, self.num_heads * self.head_dim)
        return self.dense(context), probs

    def layer_scaled_attention(self, q, k, v, attention_mask):
        """The original computation, kept to return attention probabilities: scores are divided by
        (layer_id + 1) before masking (fp16 headroom) and multiplied back for an fp32 softmax."""
        coeff = float(self.layer_id + 1)
        scores = torch.matmul(q / (math.sqrt(self.head_dim) * coeff), k.transpose(-1, -2))
        if attention_mask is not None:
            scores = scores.masked_fill(~attention_mask, MASKED_SCORE)
        probs = F.softmax(scores.float() * coeff, dim=-1).to(v.dtype)
        return torch.matmul(probs, v), probs


class MLP(nn.Module):
    """The feed-forward block: Linear -> GELU (tanh approximation) -> Linear. The original names this class
    GLU, though nothing gates it; the parameter names are the original's."""

    def __init__(self, config):
        super().__init__()
        self.dense_h_to_4h = Linear(config.hidden_size, config.inner_hidden_size)
        self.dense_4h_to_h = Linear(config.inner_hidden_size, config.hidden_size)

    def forward(self, x):
        return self.dense_4h_to_h(F.gelu(self.dense_h_to_4h(x), approximate="tanh"))


class GLMBlock(GradientCheckpointingLayer):
    """Post-LayerNorm residual: the residual adds to the LayerNorm OUTPUT scaled by alpha."""

    def __init__(self, config, layer_id):
        super().__init__()
        self.input_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layernorm_epsilon)
        self.attention = SelfAttention(config, layer_id)
        self.post_attention_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layernorm_epsilon)
        self.mlp = MLP(config)

    def forward(self, hidden_states, rotary, attention_mask, prefix_key=None, prefix_value=None, cache=None,
                output_attentions=False):
        normed = self.input_layernorm(hidden_states)
        attention_output, probs = self.attention(normed, rotary, attention_mask, prefix_key, prefix_value, cache,
                                                 output_attentions)
        return self.after_attention(normed, attention_output), probs

    def after_attention(self, normed, attention_output):
        """The block's output from its normed input and the attention's output: residual, MLP, residual."""
        hidden_states = normed * RESIDUAL_ALPHA + attention_output
        normed = self.post_attention_layernorm(hidden_states)
        return normed * RESIDUAL_ALPHA + self.mlp(normed)


class PrefixEncoder(nn.Module):
    """P-Tuning v2: trained per-layer key/value prefixes, [batch, pre_seq_len, 2 * layers * hidden]."""

    def __init__(self, config):
        super().__init__()
        width = 2 * config.num_layers * config.hidden_size
        self.prefix_projection = config.prefix_projection
        if self.prefix_projection:
            self.embedding = nn.Embedding(config.pre_seq_len, config.hidden_size)
            self.trans = nn.Sequential(
                nn.Linear(config.hidden_size, config.hidden_size), nn.Tanh(), nn.Linear(config.hidden_size, width)
            )
        else:
            self.embedding = nn.Embedding(config.pre_seq_len, width)

    def forward(self, prefix):
        embedded = self.embedding(prefix)
        return self.trans(embedded) if self.prefix_projection else embedded


# --- the model -------------------------------------------------------------------------------------


class ChatGLMPreTrainedModel(PreTrainedModel):
    config_class = ChatGLMConfig
    config: ChatGLMConfig
    base_model_prefix = "transformer"
    supports_gradient_checkpointing = True
    _no_split_modules = ["GLMBlock"]
    _supports_sdpa = True
    # Old checkpoints store the rotary table; it is recomputed, never loaded.
    _keys_to_ignore_on_load_unexpected = [r"rotary_emb\.inv_freq"]

    @torch.no_grad()
    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


class ChatGLMModel(ChatGLMPreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.pre_seq_len = config.pre_seq_len
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(GLMBlock(config, i) for i in range(config.num_layers))
        self.final_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layernorm_epsilon)
        if config.pre_seq_len is not None:
            self.prefix_encoder = PrefixEncoder(config)
            self.prefix_dropout = nn.Dropout(0.1)
            self.freeze_all_but_prefix()
        if config.quantization_bit:
            quantize_model(self, config.quantization_bit, empty=True)
        self.post_init()

    def freeze_all_but_prefix(self):
        """P-Tuning v2 trains the prefix encoder only."""
        for name, param in self.named_parameters():
            param.requires_grad = name.startswith("prefix_encoder.")

    def get_input_embeddings(self):
        return self.word_embeddings

    def set_input_embeddings(self, new_embeddings):
        self.word_embeddings = new_embeddings

    # --- GLM positions and masks ---

    def special_positions(self, input_ids, check=True):
        """Per row: the index of the first <sop> (the context length), the index of the mask token, and
        whether that mask token is [gMASK]. The model prefers [gMASK] over [MASK] (the tokenizer the other
        way round). ``check=False`` skips the checks that both exist (each waits for the device). Code that
        builds its own decoding positions (chatglm.serving's batches) starts from these."""
        config = self.config
        has_sop = (input_ids == config.bos_token_id).any(dim=1)
        if check and not has_sop.all():
            raise ValueError(
                f"input has no <sop> token (id {config.bos_token_id}); ChatGLM prompts end with "
                "[gMASK] <sop>: build the inputs with the ChatGLM tokenizer"
            )
        context_lengths = (input_ids == config.bos_token_id).int().argmax(dim=1)
        use_gmask = (input_ids == config.gmask_token_id).any(dim=1)
        mask_ids = torch.where(use_gmask, config.gmask_token_id, config.mask_token_id)
        is_mask = input_ids == mask_ids[:, None]
        if check and not is_mask.any(dim=1).all():
            raise ValueError(
                f"input has no [gMASK] (id {config.gmask_token_id}) or [MASK] (id {config.mask_token_id}) "
                "token; build the inputs with the ChatGLM tokenizer"
            )
        return context_lengths, is_mask.int().argmax(dim=1), use_gmask

    def get_position_ids(self, input_ids, padding_mask=None, past_length=0):
        """Positions of ``input_ids[:, past_length:]`` given the whole sequence ``input_ids`` [batch, seq]:
        [batch, 2, seq - past_length], or [batch, seq - past_length] without 2-D encoding (rules in
        positions.py). ``past_length > 0`` means those tokens are decoded after a cache of the others.
        With a left-padding mask the positions start after the padding; without one, padding counts as
        context."""
        # a decoding step's ids were checked with the prompt
        context_lengths, mask_positions, use_gmask = self.special_positions(input_ids, check=past_length == 0)
        pads = None if padding_mask is None else (padding_mask[:, -input_ids.shape[1] :] == 0).sum(dim=1)
        # The original's 1-D prompts keep counting past a [gMASK]; its cached decoding steps do not.
        counting = use_gmask if not self.config.position_encoding_2d and past_length == 0 else None
        return glm_position_ids(input_ids.shape[1], context_lengths, mask_positions, counting=counting, pads=pads,
                                start=past_length, two_d=self.config.position_encoding_2d)

    def next_position_ids(self, position_ids):
        """The positions of the token decoded after one decoded at ``position_ids`` ([batch, 2, 1], or [batch,
        1] without 2-D encoding): the absolute position stays at the mask token's, the block position counts
        on. (Cheaper than get_position_ids, which reads every id of the sequence.)"""
        if not self.config.position_encoding_2d:
            return position_ids
        return position_ids + block_step(position_ids.device)

    def get_attention_mask(self, input_ids, past_length, padding_mask, prefix_length):
        """Boolean mask [batch, 1, query, key], True = may attend, or None when nothing is masked.

        Everything before <sop> attends bidirectionally; from <sop> on it is causal. Padding keys
        are hidden; padding queries see everything (their outputs are never used, and a fully
        masked row would be NaN).
        """
        batch, seq = input_ids.shape
        if seq == 1 and past_length and not prefix_length and (padding_mask is None or bool(padding_mask.all())):
            return None  # a decoding step without padding: its token sees every key (the common case, cheaply)
        device = input_ids.device
        query = torch.arange(past_length, past_length + seq, device=device)[:, None]
        key = torch.arange(past_length + seq, device=device)[None, :]
        allowed = (key <= query).expand(batch, seq, past_length + seq)
        if past_length == 0:
            context_lengths = self.special_positions(input_ids)[0]
            allowed = allowed | (key < context_lengths[:, None, None])
        if padding_mask is not None:
            padding_mask = padding_mask[:, -(past_length + seq) :].bool()
            allowed = (allowed & padding_mask[:, None, :]) | ~padding_mask[:, -seq:, None]
        if prefix_length:
            allowed = torch.cat((allowed.new_ones(batch, seq, prefix_length), allowed), dim=-1)
        if bool(allowed.all()):
            return None
        return allowed[:, None]

    def rotary_tables(self, position_ids, dtype):
        """(cos, sin, parts) for rotate_queries_and_keys, cos/sin [batch, seq, 1, 1, head_dim] (broadcast over
        heads and q/k; views of contiguous [batch, seq, head_dim], as the C kernel reads them). In 2-D mode
        (2 parts) the first half of each head follows the absolute positions and the second half the block
        positions."""
        head_dim = self.config.hidden_size // self.config.num_attention_heads
        # tables are kept in whole multiples of max_sequence_length, so that a long generation adds few
        longest = self.config.max_sequence_length
        length = longest * -(-(int(position_ids.max()) + 1) // longest)
        parts = 2 if self.config.position_encoding_2d else 1
        table = rotary_table(head_dim // parts, length, dtype, position_ids.device)  # [length, 2, head_dim / parts]
        if parts == 2:
            # [batch, 2 (absolute, block), seq, 2 (cos, sin), head_dim / 2] -> [2 (cos, sin), batch, seq, head_dim]
            cos, sin = table[position_ids].permute(3, 0, 2, 1, 4).flatten(-2).contiguous()
        else:
            cos, sin = table[position_ids].movedim(2, 0).contiguous()  # [2 (cos, sin), batch, seq, head_dim]
        return cos[:, :, None, None], sin[:, :, None, None], parts

    def prefix_key_values(self, batch_size, device, dtype):
        """The P-Tuning prefix: keys of layer i at [2i], values at [2i + 1], each [batch, heads, pre_seq_len, head_dim].

        Kept out of the KV cache so that gradient checkpointing (which drops caches) still sees it."""
        config = self.config
        prefix = torch.arange(self.pre_seq_len, device=device).expand(batch_size, -1)
        past = self.prefix_encoder(prefix).to(dtype)
        head_dim = config.hidden_size // config.num_attention_heads
        past = past.view(batch_size, self.pre_seq_len, 2 * config.num_layers, config.num_attention_heads, head_dim)
        return self.prefix_dropout(past).permute(2, 0, 3, 1, 4)  # [2 * layers, batch, heads, pre_seq_len, head_dim]

    def forward(
        self,
        input_ids,
        position_ids=None,
        attention_mask=None,
        cache=None,
        use_cache=None,
        output_attentions=False,
        output_hidden_states=False,
        past_key_values=None,
        **kwargs,
    ):
        """`attention_mask` is the standard 2-D padding mask (1 = token, 0 = padding, covering the
        cached tokens too); the GLM mask is built from the ids. A 4-D boolean mask in the original's
        convention (True = blocked) is accepted as well."""
        cache = cache if cache is not None else past_key_values
        use_cache = use_cache if use_cache is not None else self.config.use_cache
        # quantized word embeddings return float32 rows
        hidden_states = self.word_embeddings(input_ids).to(self.final_layernorm.weight.dtype)
        batch, seq = input_ids.shape

        prefix_length = self.pre_seq_len or 0
        prefix = self.prefix_key_values(batch, input_ids.device, hidden_states.dtype) if prefix_length else None
        if use_cache and cache is None:
            cache = KVCache()
        past_length = cache.get_seq_length() if cache is not None else 0

        padding_mask = attention_mask if attention_mask is not None and attention_mask.dim() == 2 else None
        if attention_mask is not None and attention_mask.dim() == 4:
            mask = ~attention_mask.bool()
            mask = mask | ~mask.any(dim=-1, keepdim=True)  # fully blocked (padding) rows would give NaN
            if prefix_length:
                mask = torch.cat((mask.new_ones(*mask.shape[:3], prefix_length), mask), dim=-1)
        else:
            mask = self.get_attention_mask(input_ids, past_length, padding_mask, prefix_length)

        if position_ids is None:
            if past_length:
                raise ValueError("position_ids are required when decoding with a cache")
            position_ids = self.get_position_ids(input_ids, padding_mask)
        elif position_ids.dim() != (3 if self.config.position_encoding_2d else 2):
            raise ValueError(
                f"position_ids of shape {list(position_ids.shape)} do not fit this model, which takes "
                + ("[batch, 2, seq] (2-D positions)" if self.config.position_encoding_2d else
                   "[batch, seq] (1-D positions; the tokenizer's padded batches carry 2-D ones)")
                + ": leave position_ids out and pass the attention_mask, the model builds them"
            )
        rotary = self.rotary_tables(position_ids, hidden_states.dtype)

        all_hidden_states = () if output_hidden_states else None
        all_attentions = () if output_attentions else None
        for i, layer in enumerate(self.layers):
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
            prefix_key, prefix_value = (prefix[2 * i], prefix[2 * i + 1]) if prefix is not None else (None, None)
            hidden_states, probs = layer(hidden_states, rotary, mask, prefix_key, prefix_value,
                                         cache=cache if use_cache else None, output_attentions=output_attentions)
            if output_attentions:
                all_attentions += (probs,)
        hidden_states = self.final_layernorm(hidden_states)
        if output_hidden_states:
            all_hidden_states += (hidden_states,)

        return BaseModelOutputWithPast(last_hidden_state=hidden_states, cache=cache if use_cache else None,
                                       hidden_states=all_hidden_states, attentions=all_attentions)


class ChatGLMForConditionalGeneration(ChatGLMPreTrainedModel, GenerationMixin):
    # The original ties the LM head to the embeddings; a checkpoint's own lm_head.weight is ignored.
    _tied_weights_keys = {"lm_head.weight": "transformer.word_embeddings.weight"}

    def __init__(self, config):
        super().__init__(config)
        # loaded with trust_remote_code, this code runs from transformers' module cache, which lacks the C source
        add_source_folder(config.name_or_path)
        self.transformer = ChatGLMModel(config)
        self.lm_head = Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.quantization_bit and config.quantization_embeddings:
            self._quantize_embeddings(config.quantization_bit, empty=True)
        if self.generation_config.top_k is None:
            self.generation_config.top_k = 50  # the original's transformers default
        self.post_init()

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, quantization_bit=None, quantize_embeddings=False,
                        **kwargs):
        """Load a checkpoint (folder or hub id). `quantization_bit=4` or `8` quantizes the block Linear
        layers while loading, never holding a full-precision copy of the model; `quantize_embeddings=True`
        also the embeddings and the LM head tied to them (see `quantize`).

        Checkpoints are read tensor by tensor (see `streaming_load`), so the peak memory is about the final
        model's; only options that loader does not know (device_map, ...) go through transformers' loader."""
        if can_stream(args, kwargs):
            model = load_streaming(cls, pretrained_model_name_or_path, quantization_bit=quantization_bit,
                                   quantize_embeddings=quantize_embeddings, **kwargs)
        elif quantization_bit or quantize_embeddings:
            raise ValueError(f"quantizing while loading cannot be combined with {sorted(kwargs)}; load, then call "
                             ".quantize()")
        else:
            model = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        if model.config.pre_seq_len is not None:
            model.transformer.freeze_all_but_prefix()  # loading re-creates the parameters as trainable
        to_cpu_kernel_layout(model)
        collapse_weights(model)  # CPU weights in 2 MB pages: decoding streams them (see huge_pages)
        return model

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, new_embeddings):
        self.lm_head = new_embeddings

    def forward(
        self,
        input_ids,
        position_ids=None,
        attention_mask=None,
        cache=None,
        labels=None,
        use_cache=None,
        output_attentions=False,
        output_hidden_states=False,
        past_key_values=None,
        logits_to_keep=0,
        **kwargs,
    ):
        """`logits_to_keep=n` computes the logits of the last n positions only (0: all); generate() asks
        for 1, which spares a prompt's LM head over every position."""
        outputs = self.transformer(
            input_ids,
            position_ids=position_ids,
            attention_mask=attention_mask,
            cache=cache if cache is not None else past_key_values,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )
        hidden_states = outputs.last_hidden_state
        logits = self.lm_head(hidden_states[:, -logits_to_keep:] if logits_to_keep else hidden_states)
        loss = None
        if labels is not None:
            shift_logits = logits[:, :-1].float()
            shift_labels = labels[:, 1:].to(logits.device)
            loss = F.cross_entropy(shift_logits.reshape(-1, shift_logits.size(-1)), shift_labels.reshape(-1),
                                   ignore_index=-100).to(logits.dtype)
        return CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )

    # --- generate() integration ---

    # Four private hooks remain, each with a test that fails if transformers stops calling it: generate()
    # builds the prompt's positions with the first, expands them for beams with the third and moves them on
    # with the fourth (tests/test_positions.py), and takes its cache from the second (tests/test_kv_cache.py).

    def _prepare_position_ids_for_generation(self, inputs_tensor, model_kwargs):
        return self.transformer.get_position_ids(inputs_tensor, model_kwargs.get("attention_mask"))

    def _prepare_cache_for_generation(self, generation_config, model_kwargs, *args, **kwargs):
        # generate() would otherwise build a DynamicCache, which copies the whole cache at every step.
        if (model_kwargs.get("cache") is None and model_kwargs.get("past_key_values") is None
                and generation_config.use_cache and generation_config.cache_implementation in (None, "dynamic")):
            model_kwargs["cache"] = KVCache()
            return
        super()._prepare_cache_for_generation(generation_config, model_kwargs, *args, **kwargs)

    def _expand_inputs_for_generation(self, expand_size=1, is_encoder_decoder=False, input_ids=None, **model_kwargs):
        # GLM positions are [batch, 2, seq]; the generic code takes 3-D positions as [n, batch, seq].
        position_ids = model_kwargs.pop("position_ids", None)
        input_ids, model_kwargs = super()._expand_inputs_for_generation(
            expand_size, is_encoder_decoder, input_ids, **model_kwargs
        )
        if position_ids is not None:
            model_kwargs["position_ids"] = position_ids.repeat_interleave(expand_size, dim=0)
        return input_ids, model_kwargs

    def _update_model_kwargs_for_generation(self, outputs, model_kwargs, is_encoder_decoder=False,
                                            num_new_tokens=1):
        # transformers would move every position row on by one per new token. A 2-D model's next token keeps
        # the absolute position and moves the block position on (next_position_ids), from the last token's;
        # a 1-D model's first decoded token does not follow from the prompt's last position (a [gMASK] prompt
        # keeps counting), so its positions are read from the ids in prepare_inputs_for_generation.
        positions = model_kwargs.pop("position_ids", None)
        model_kwargs = super()._update_model_kwargs_for_generation(outputs, model_kwargs, is_encoder_decoder,
                                                                   num_new_tokens)
        if positions is not None and self.config.position_encoding_2d and num_new_tokens == 1:
            model_kwargs["position_ids"] = self.transformer.next_position_ids(positions[..., -1:])
        return model_kwargs

    def prepare_inputs_for_generation(self, input_ids, *args, attention_mask=None, is_first_iteration=False,
                                      **kwargs):
        inputs = super().prepare_inputs_for_generation(
            input_ids, *args, attention_mask=attention_mask, is_first_iteration=is_first_iteration, **kwargs
        )
        if not is_first_iteration and inputs.get("position_ids") is None:
            past_length = input_ids.shape[1] - inputs["input_ids"].shape[1]
            inputs["position_ids"] = self.transformer.get_position_ids(input_ids, attention_mask, past_length)
        return inputs

    def quantize(self, bits, empty_init=False, quantize_embeddings=False, **kwargs):
        """Weight-only INT8/INT4 quantization of the four Linear layers of every block, in place
        (one fp16 scale per output row, as the original). Works on CPU and GPU. Returns the model.

        The original's arguments: `empty_init=True` only allocates the quantized layers, for weights
        loaded afterwards; `quantize_embeddings=True` also quantizes the word embeddings and the LM head
        tied to them (THUDM's `-int4-qe` variant: less memory and faster decoding, other answers)."""
        if kwargs:
            raise TypeError(f"quantize() got unexpected arguments {sorted(kwargs)}; "
                            "it takes bits (4 or 8), empty_init and quantize_embeddings")
        if bits == 0:
            return self
        quantize_model(self.transformer, bits, empty=empty_init)
        if quantize_embeddings:
            self._quantize_embeddings(bits, empty=empty_init)
        if not empty_init:
            to_cpu_kernel_layout(self)
            collapse_weights(self)
        self.config.quantization_bit = bits
        self.config.quantization_embeddings = quantize_embeddings
        return self

    def _quantize_embeddings(self, bits, empty):
        quantize_word_embeddings(self, bits, empty=empty)
        # The LM head shares the embeddings' scales too; transformers ties (and saves once) what this lists.
        self._tied_weights_keys = {**type(self)._tied_weights_keys,
                                   "lm_head.weight_scale": "transformer.word_embeddings.weight_scale"}
        self.all_tied_weights_keys = self.get_expanded_tied_weights_keys(all_submodels=False)

    # --- chat: the user-facing methods, written in generation.py as functions of the model ---

    chat = chat
    stream_chat = stream_chat
    stream_generate = stream_generate
    process_response = staticmethod(process_response)
