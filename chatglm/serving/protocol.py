"""Request and response bodies of the HTTP API (pydantic, so FastAPI validates them and /openapi.json
documents every field): the original ``POST /`` and the OpenAI-compatible ``/v1/chat/completions``.

The published schema is the contract: what it allows the server accepts, and what the server refuses it
does not allow. So numbers are strict (``"100"`` or ``true`` is not a number) but a whole-number float such
as ``1.0`` is an integer, as JSON Schema says; and the OpenAI options this server cannot honour are
declared at the one value that means "off" (``n`` 1, ``tools`` empty, ...), so a client relying on more gets
a 400 that the schema predicts. Message lists of any order are answered (see ``messages_to_chat``).
"""

from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictStr,
    WithJsonSchema,
)

from ..generation import DEFAULT_MAX_LENGTH, DEFAULT_TEMPERATURE, DEFAULT_TOP_P

MAX_LENGTH_LIMIT = 32768
TEMPERATURE_LIMIT = 100.0
MAX_STOP_STRINGS = 16


def _whole_number(value):
    """1.0 is the integer 1 (JSON Schema's ``integer`` allows it); a bool is not a number."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def integer(low: int, high: int):
    """A strict integer from ``low`` to ``high`` that also takes whole-number floats. The bounds come before
    the float conversion, so that /openapi.json shows them as JSON Schema's minimum and maximum."""
    return Annotated[int, Field(strict=True, ge=low, le=high), BeforeValidator(_whole_number)]


Number = Annotated[float, Field(strict=True, allow_inf_nan=False)]
# a [question, answer] round; a list of two rather than a tuple, whose prefixItems some OpenAPI tools reject
Round = Annotated[list[StrictStr], Field(min_length=2, max_length=2)]
AnswerRound = Annotated[list[str], Field(min_length=2, max_length=2)]


def _is_number(value, expected) -> bool:
    return type(value) in (int, float) and value == expected


def only_off(schema: dict, is_off: Callable[[Any], bool], description: str):
    """An OpenAI option this server does not support: ``schema`` (which allows null) and ``is_off`` say the
    values that leave it off; any other value is refused with a message saying so."""

    def check(value):
        if value is not None and not is_off(value):
            raise ValueError("not supported by this server (ChatGLM answers one plain-text choice per request); "
                             "leave it out")
        return value

    schema = {"anyOf": [schema, {"type": "null"}], "description": description}
    return Annotated[Any, AfterValidator(check), WithJsonSchema(schema)]
# --- POST / (the original contract) ----------------------------------------------------------------


class ChatRequest(BaseModel):
    prompt: StrictStr = Field(description="the question")
    history: list[Round] | None = Field(
        None, description="earlier rounds as [question, answer] pairs, oldest first")
    max_length: integer(1, MAX_LENGTH_LIMIT) = Field(
        DEFAULT_MAX_LENGTH, description="limit on prompt plus answer, in tokens; when the prompt with the whole "
                                        "history is too long, the oldest rounds are left out")
    top_p: Number = Field(DEFAULT_TOP_P, ge=0.0, le=1.0,
                          description="nucleus sampling: sample among the most likely tokens that make up top_p")
    temperature: Number = Field(DEFAULT_TEMPERATURE, ge=0.0, le=TEMPERATURE_LIMIT,
                                description="sampling temperature; 0 means greedy (always the most likely token)")


class ChatResponse(BaseModel):
    response: str
    history: list[AnswerRound]
    status: int = 200
    time: str = Field(description="when the answer was ready, YYYY-MM-DD HH:MM:SS (server's local time)")
    cut: Literal[True] | None = Field(
        None, description="only present, true, when the server was shutting down and cut the answer short "
                          "(--drain-seconds)")


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
    temperature: Number | None = Field(None, ge=0.0, le=2.0,
                                       description=f"default {DEFAULT_TEMPERATURE}; 0 means greedy")
    top_p: Number | None = Field(None, ge=0.0, le=1.0, description=f"default {DEFAULT_TOP_P}")
    top_k: integer(0, 1_000_000) | None = Field(
        None, description="extension: sample among the k most likely tokens (0: no limit; default: the model's, 50)")
    max_tokens: integer(1, MAX_LENGTH_LIMIT) | None = Field(
        None, description="limit on the answer's tokens; default: what is left of the model's context")
    max_completion_tokens: integer(1, MAX_LENGTH_LIMIT) | None = Field(None, description="the newer name of max_tokens")
    ignore_eos: StrictBool = Field(False, description="extension: go on past the end-of-answer token up to "
                                                      "max_tokens (answers of a fixed length, for benchmarks)")
    stop: StrictStr | Annotated[list[StrictStr], Field(max_length=MAX_STOP_STRINGS)] | None = Field(
        None, description=f"up to {MAX_STOP_STRINGS} strings; the answer ends before the first one that appears")
    stream: StrictBool = Field(False, description="send the answer as server-sent events while it is generated")
    stream_options: StreamOptions | None = None
    user: StrictStr | None = Field(None, description="accepted and ignored")
    # accepted only at their "off" values, so that a client relying on them gets a clear error
    n: only_off({"enum": [1]}, lambda v: _is_number(v, 1), "not supported beyond 1") = None
    tools: only_off({"type": "array", "maxItems": 0}, lambda v: v == [], "not supported (empty only)") = None
    tool_choice: only_off({"enum": ["none"]}, lambda v: v == "none", "not supported beyond \"none\"") = None
    functions: only_off({"type": "array", "maxItems": 0}, lambda v: v == [], "not supported (empty only)") = None
    function_call: only_off({"enum": ["none"]}, lambda v: v == "none", "not supported beyond \"none\"") = None
    logprobs: only_off({"enum": [False]}, lambda v: v is False, "not supported beyond false") = None
    top_logprobs: only_off({"enum": [0]}, lambda v: _is_number(v, 0), "not supported beyond 0") = None
    presence_penalty: only_off({"enum": [0]}, lambda v: _is_number(v, 0), "not supported beyond 0") = None
    frequency_penalty: only_off({"enum": [0]}, lambda v: _is_number(v, 0), "not supported beyond 0") = None
    logit_bias: only_off({"type": "object", "maxProperties": 0}, lambda v: v == {}, "not supported (empty only)") \
        = None
    seed: only_off({"not": {}}, lambda v: False, "not supported") = None
    response_format: only_off(
        {"type": "object", "properties": {"type": {"enum": ["text"]}}, "required": ["type"],
         "additionalProperties": False}, lambda v: v == {"type": "text"}, "only {\"type\": \"text\"}") = None

    def stop_strings(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


def messages_to_chat(messages: list[ChatMessage]) -> tuple[str, list[tuple[str, str]]]:
    """OpenAI messages -> ChatGLM's (query, history [(question, answer), ...]).

    ChatGLM-6B has no system role: the text of all system/developer messages goes before the first user
    message, separated by a new line. Consecutive messages of one role are joined with new lines. ChatGLM's
    prompt alternates questions and answers and ends with a question, so an answer with no question before
    it gets an empty question, and a list that ends with an answer is followed by an empty question (a
    started answer cannot be continued).
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
    if turns and turns[0][0] == "assistant":
        turns.insert(0, ["user", ""])
    if not turns or turns[-1][0] == "assistant":
        turns.append(["user", ""])
    if system:
        turns[0][1] = system + "\n" + turns[0][1] if turns[0][1] else system
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
