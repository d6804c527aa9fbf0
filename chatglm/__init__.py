"""ChatGLM-6B for current transformers: `import chatglm` registers the model type "chatglm" with the
Auto classes, so `AutoConfig/AutoTokenizer/AutoModel.from_pretrained(folder)` use this package's code
for any checkpoint folder in the original layout, without executing downloaded code."""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

from .configuration_chatglm import ChatGLMConfig
from .entrypoints.hub import DEMO_MODEL_PATH
from .modeling_chatglm import ChatGLMForConditionalGeneration, ChatGLMModel
from .tokenization_chatglm import ChatGLMTokenizer

AutoConfig.register("chatglm", ChatGLMConfig, exist_ok=True)
AutoTokenizer.register(ChatGLMConfig, slow_tokenizer_class=ChatGLMTokenizer, exist_ok=True)
for _auto in (AutoModel, AutoModelForCausalLM, AutoModelForSeq2SeqLM):
    _auto.register(ChatGLMConfig, ChatGLMForConditionalGeneration, exist_ok=True)

__all__ = ["ChatGLMConfig", "ChatGLMTokenizer", "ChatGLMModel", "ChatGLMForConditionalGeneration", "DEMO_MODEL_PATH"]
