"""Request and response bodies of the HTTP API (pydantic, so FastAPI validates them and /openapi.json
documents every field): the original ``POST /`` and the OpenAI-compatible ``/v1/chat/completions``.

Numbers are strict: ``"100"`` or ``true`` is not a number, and a float is not an integer.
"""

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

from ..generation import DEFAULT_MAX_LENGTH, DEFAULT_TEMPERATURE, DEFAULT_TOP_P

MAX_LENGTH_LIMIT = 32768
TEMPERATURE_LIMIT = 100.0


class ApiError(Exception):
    """A request that cannot be answered as sent: the HTTP status, a message saying what to do, the field at
    fault (``param``) and extra response headers."""

    def __init__(self, status: int, message: str, param: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.headers = status, message, param, headers


# --- POST / (the original contract) ----------------------------------------------------------------


class ChatRequest(BaseModel):
    prompt: StrictStr = Field(description="the question")
    history: list[tuple[StrictStr, StrictStr]] | None = Field(
        None, description="earlier rounds as [question, answer] pairs, oldest first")
    max_length: StrictInt = Field(DEFAULT_MAX_LENGTH, ge=1, le=MAX_LENGTH_LIMIT,
                                  description="limit on prompt plus answer, in tokens; when the prompt with "
                                              "the whole history is too long, the oldest rounds are left out")
    top_p: float = Field(DEFAULT_TOP_P, ge=0.0, le=1.0, strict=True, allow_inf_nan=False,
                         description="nucleus sampling: sample among the most likely tokens that make up top_p")
    temperature: float = Field(DEFAULT_TEMPERATURE, ge=0.0, le=TEMPERATURE_LIMIT, strict=True, allow_inf_nan=False,
                               description="sampling temperature; 0 means greedy (always the most likely token)")


class ChatResponse(BaseModel):
    response: str
    history: list[tuple[str, str]]
    status: int = 200
    time: str = Field(description="when the answer was ready, YYYY-MM-DD HH:MM:SS (server's local time)")


# --- OpenAI chat completions --------------------------------------------------------------------------


class TextPart(BaseModel):
    type: Literal["text"]
    text: StrictStr


class ChatMessage(BaseModel):
    role: Literal["system", "developer", "user", "assistant"] = Field(
        description="system and developer messages are put before the first user message")
    content: StrictStr | list[TextPart]
    name: StrictStr | None = Field(None, description="accepted and ignored")

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class StreamOptions(BaseModel):
    include_usage: StrictBool = Field(False, description="send one more chunk with the token counts")


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")  # like OpenAI: an unknown option is an error, not ignored

    messages: list[ChatMessage] = Field(min_length=1, description="the conversation; the last one is the "
                                                                  "user's question")
    model: StrictStr | None = Field(None, description="accepted whatever it says; answers name the served model")
    temperature: float | None = Field(None, ge=0.0, le=2.0, strict=True, allow_inf_nan=False,
                                      description=f"default {DEFAULT_TEMPERATURE}; 0 means greedy")
    top_p: float | None = Field(None, ge=0.0, le=1.0, strict=True, allow_inf_nan=False,
                                description=f"default {DEFAULT_TOP_P}")
    top_k: StrictInt | None = Field(None, ge=0, le=1_000_000,
                                    description="extension: sample among the k most likely tokens (0: no limit; "
                                                "default: the model's, 50)")
    max_tokens: StrictInt | None = Field(None, ge=1, le=MAX_LENGTH_LIMIT,
                                         description="limit on the answer's tokens; default: what is left of the "
                                                     "model's context")
    max_completion_tokens: StrictInt | None = Field(None, ge=1, le=MAX_LENGTH_LIMIT,
                                                    description="the newer name of max_tokens")
    ignore_eos: StrictBool = Field(False, description="extension: go on past the end-of-answer token up to "
                                                      "max_tokens (answers of a fixed length, for benchmarks)")
    stop: StrictStr | list[StrictStr] | None = Field(
        None, description="up to 16 strings; the answer ends before the first one that appears")
    stream: StrictBool = Field(False, description="send the answer as server-sent events while it is generated")
    stream_options: StreamOptions | None = None
    user: StrictStr | None = Field(None, description="accepted and ignored")
    # accepted only at their "off" values, so that a client relying on them gets a clear error
    n: StrictInt | None = Field(None, description="not supported beyond 1")
    tools: list[Any] | None = Field(None, description="not supported")
    tool_choice: Any | None = Field(None, description="not supported")
    functions: list[Any] | None = Field(None, description="not supported")
    function_call: Any | None = Field(None, description="not supported")
    logprobs: StrictBool | None = Field(None, description="not supported")
    top_logprobs: StrictInt | None = Field(None, description="not supported")
    presence_penalty: float | None = Field(None, description="not supported beyond 0")
    frequency_penalty: float | None = Field(None, description="not supported beyond 0")
    logit_bias: dict[str, float] | None = Field(None, description="not supported")
    seed: StrictInt | None = Field(None, description="not supported")
    response_format: dict[str, Any] | None = Field(None, description="only {\"type\": \"text\"}")

    def stop_strings(self) -> list[str]:
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stop) > 16:
            raise ApiError(400, f"'stop' takes at most 16 strings, got {len(stop)}", "stop")
        return stop

    def check_supported(self):
        """Raise ApiError for an option this server cannot honour."""
        unsupported = {
            "n": self.n not in (None, 1),
            "tools": bool(self.tools),
            "tool_choice": self.tool_choice not in (None, "none"),
            "functions": bool(self.functions),
            "function_call": self.function_call not in (None, "none"),
            "logprobs": bool(self.logprobs),
            "top_logprobs": bool(self.top_logprobs),
            "presence_penalty": bool(self.presence_penalty),
            "frequency_penalty": bool(self.frequency_penalty),
            "logit_bias": bool(self.logit_bias),
            "seed": self.seed is not None,
            "response_format": self.response_format not in (None, {"type": "text"}),
        }
        for name, bad in unsupported.items():
            if bad:
                raise ApiError(400, f"'{name}' is not supported by this server (ChatGLM answers one plain-text choice "
                                 f"per request); leave it out", name)


def messages_to_chat(messages: list[ChatMessage]) -> tuple[str, list[tuple[str, str]]]:
    """OpenAI messages -> ChatGLM's (query, history [(question, answer), ...]).

    ChatGLM-6B has no system role: the text of all system/developer messages goes before the first user
    message, separated by a new line. Consecutive messages of one role are joined with new lines. The last
    message must be the user's: a trailing assistant message is rejected, because ChatGLM's prompt cannot
    continue an answer that was already started.
    """
    system = "\n".join(m.text() for m in messages if m.role in ("system", "developer"))
    turns: list[list[str]] = []  # [role, text], consecutive roles merged
    for message in messages:
        if message.role in ("system", "developer"):
            continue
        if turns and turns[-1][0] == message.role:
            turns[-1][1] += "\n" + message.text()
        else:
            turns.append([message.role, message.text()])
    if not turns or turns[-1][0] != "user":
        raise ApiError(400, "'messages' must end with a user message (ChatGLM answers the last user message; a "
                         "trailing assistant message cannot be continued)", "messages")
    if turns[0][0] != "user":
        raise ApiError(400, "'messages' must start with a user message (after any system messages): an assistant "
                         "message needs the question it answers", "messages")
    if system:
        turns[0][1] = system + "\n" + turns[0][1]
    history = [(turns[i][1], turns[i + 1][1]) for i in range(0, len(turns) - 1, 2)]
    return turns[-1][1], history


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: Literal["stop", "length"]


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "chatglm"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


# every field name above, to tell them apart from pydantic's union tags in error locations
FIELD_NAMES = frozenset(name for model in (ChatRequest, TextPart, ChatMessage, StreamOptions, ChatCompletionRequest)
                        for name in model.model_fields)
