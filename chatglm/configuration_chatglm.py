"""Configuration of ChatGLM-6B models (the fields of the real `THUDM/chatglm-6b` config.json)."""

from transformers import PretrainedConfig


class ChatGLMConfig(PretrainedConfig):
    """Hyper-parameters of a ChatGLM model.

    The defaults describe the real 6B model. `quantization_bit` 4 or 8 builds weight-only quantized
    block Linear layers (the `-int4`/`-int8` checkpoints), and with `quantization_embeddings` also the
    word embeddings and the LM head tied to them (the `-int4-qe` checkpoint); `pre_seq_len` adds a P-Tuning v2 prefix
    encoder and freezes everything else.
    """

    model_type = "chatglm"
    # generate() and the cache classes read the standard names.
    attribute_map = {
        "num_hidden_layers": "num_layers",
        "intermediate_size": "inner_hidden_size",
        "max_position_embeddings": "max_sequence_length",
    }

    def __init__(
        self,
        vocab_size=130528,
        hidden_size=4096,
        num_layers=28,
        num_attention_heads=32,
        layernorm_epsilon=1e-5,
        use_cache=True,
        bos_token_id=130004,
        eos_token_id=130005,
        mask_token_id=130000,
        gmask_token_id=130001,
        pad_token_id=3,
        max_sequence_length=2048,
        inner_hidden_size=16384,
        position_encoding_2d=True,
        quantization_bit=0,
        quantization_embeddings=False,
        pre_seq_len=None,
        prefix_projection=False,
        tie_word_embeddings=True,
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.num_attention_heads = num_attention_heads
        self.layernorm_epsilon = layernorm_epsilon
        self.use_cache = use_cache
        self.mask_token_id = mask_token_id
        self.gmask_token_id = gmask_token_id
        self.max_sequence_length = max_sequence_length
        self.inner_hidden_size = inner_hidden_size
        self.position_encoding_2d = position_encoding_2d
        self.quantization_bit = quantization_bit
        self.quantization_embeddings = quantization_embeddings
        self.pre_seq_len = pre_seq_len
        self.prefix_projection = prefix_projection
        super().__init__(
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            pad_token_id=pad_token_id,
            tie_word_embeddings=tie_word_embeddings,
            **kwargs,
        )

    @classmethod
    def get_config_dict(cls, pretrained_model_name_or_path, **kwargs):
        config_dict, kwargs = super().get_config_dict(pretrained_model_name_or_path, **kwargs)
        model_type = config_dict.get("model_type")
        if model_type is not None and model_type != cls.model_type:
            raise ValueError(
                f"{pretrained_model_name_or_path} is not a ChatGLM-6B checkpoint (its config.json says "
                f'model_type "{model_type}", expected "chatglm")'
            )
        return config_dict, kwargs
