"""The OpenAI shapes the gateway speaks: completions, chat completions (plain and streamed chunks)
and the models list. Requests are validated strictly (``"5"`` is not an integer); unknown fields
are ignored, as OpenAI clients send new ones over time.

Sampling limits, checked here so that no request reaches the engine with values it cannot run:
``seed`` within a signed 64-bit integer (what torch and vLLM accept); a ``temperature`` below
1e-5 is greedy, as in vLLM (1/T would overflow); integer fields accept integral floats (``7.0``)
as OpenAI does, never ``7.5`` or ``"7"``. Error messages echo at most 80 characters of a value.

Scoring (what lm-evaluation-harness and log-likelihood clients send): a completion ``prompt`` is
a string, a list of strings, a list of token ids or a list of such lists (one choice per prompt,
with its ``index``); ``echo`` returns the prompt before the completion; ``logprobs: k`` returns
OpenAI's legacy object (``tokens``, ``token_logprobs`` with ``null`` for the first prompt token,
``top_logprobs``, ``text_offset`` into the choice's text) for echoed and generated tokens;
``max_tokens: 0`` with ``echo`` scores without generating. Chat takes ``logprobs: true`` and
``top_logprobs: k`` in OpenAI's chat shape. Log-probs are the model's (raw logits).

lexlora extensions (ignored by clients that do not send them): ``lora_scale`` (0–2, 0 = base),
``adapters`` (weighted composition of the caller's own adapters) and vLLM's ``ignore_eos``.
"""

from __future__ import annotations

import re
import time
import uuid
from typing import Annotated, Any, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from lexlora.config_errors import shown
from lexlora.serve.errors import bad_request

MAX_STOP_SEQUENCES = 16
MAX_PROMPTS = 128  # prompts in one completion request
MAX_LOGPROBS = 20  # alternatives per token (OpenAI's chat limit)
GREEDY_BELOW = 1e-5  # a temperature under this is greedy (0), as in vLLM: 1/T would overflow
SEED_RANGE = (-(2**63), 2**63 - 1)  # a signed 64-bit seed: what torch and vLLM both accept


def _integral(value: Any) -> Any:
    """``7.0`` → ``7`` (OpenAI accepts integral floats for integer fields); ``7.5`` stays and
    fails the strict integer check."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _greedy_if_tiny(value: float) -> float:
    return 0.0 if value < GREEDY_BELOW else value


Integer = Annotated[int, BeforeValidator(_integral)]


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")


class AdapterWeight(_Strict):
    name: str
    weight: float = Field(ge=-2.0, le=2.0)


class StreamOptions(_Strict):
    include_usage: bool = False


class _GenerationRequest(_Strict):
    """Fields shared by completions and chat completions."""

    model: str
    temperature: Annotated[float, Field(ge=0.0, le=2.0), AfterValidator(_greedy_if_tiny)] = 1.0
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    stop: str | Annotated[list[str], Field(max_length=MAX_STOP_SEQUENCES)] | None = None
    seed: Integer | None = Field(None, ge=SEED_RANGE[0], le=SEED_RANGE[1])
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: Integer = Field(1, ge=1, le=128)
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] | None = None
    user: str | None = None
    # lexlora extensions
    lora_scale: float | None = Field(None, ge=0.0, le=2.0)
    adapters: Annotated[list[AdapterWeight], Field(min_length=1, max_length=8)] | None = None
    ignore_eos: bool = False

    def stop_list(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return [s for s in stops if s]

    def check_supported(self) -> None:
        """400 for standard OpenAI options this server does not implement."""
        if self.n != 1:
            raise bad_request("only n=1 is supported", param="n")
        if self.presence_penalty or self.frequency_penalty:
            param = "presence_penalty" if self.presence_penalty else "frequency_penalty"
            raise bad_request(f"'{param}' is not supported (send 0 or leave it out)", param=param)
        if self.logit_bias:
            raise bad_request("'logit_bias' is not supported", param="logit_bias")


TokenIds = Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]
Prompts = Annotated[list[str], Field(min_length=1, max_length=MAX_PROMPTS)]
TokenIdPrompts = Annotated[list[TokenIds], Field(min_length=1, max_length=MAX_PROMPTS)]


class CompletionRequest(_GenerationRequest):
    prompt: str | Prompts | TokenIds | TokenIdPrompts
    max_tokens: Integer | None = Field(16, ge=0)
    echo: bool = False
    logprobs: Integer | None = Field(None, ge=0, le=MAX_LOGPROBS)
    best_of: Integer | None = Field(None, ge=1)
    suffix: str | None = None

    def prompts(self) -> list[str | list[int]]:
        """Each prompt: text, or token ids used as they are (no special tokens added)."""
        prompt = self.prompt
        if isinstance(prompt, str):
            return [prompt]
        if prompt and isinstance(prompt[0], int):
            return [list(prompt)]  # type: ignore[arg-type]
        return list(prompt)  # type: ignore[arg-type]

    def check_supported(self) -> None:
        super().check_supported()
        if self.max_tokens == 0 and not self.echo:
            raise bad_request("'max_tokens' may be 0 only with 'echo'", param="max_tokens")
        if self.stream and len(self.prompts()) > 1:
            raise bad_request("'stream' takes one prompt per request", param="prompt")
        if self.best_of not in (None, 1):
            raise bad_request("only best_of=1 is supported", param="best_of")
        if self.suffix:
            raise bad_request("'suffix' is not supported", param="suffix")


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class ChatCompletionRequest(_GenerationRequest):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_tokens: Integer | None = Field(None, ge=1)
    max_completion_tokens: Integer | None = Field(None, ge=1)
    logprobs: bool | None = None
    top_logprobs: Integer | None = Field(None, ge=0, le=MAX_LOGPROBS)
    tools: list[dict] | None = None
    response_format: dict | None = None

    def check_supported(self) -> None:
        super().check_supported()
        if self.top_logprobs is not None and not self.logprobs:
            raise bad_request("'top_logprobs' needs 'logprobs': true", param="top_logprobs")
        if self.tools:
            raise bad_request("'tools' (function calling) is not supported", param="tools")
        if self.response_format and self.response_format.get("type", "text") != "text":
            raise bad_request("only response_format type 'text' is supported", "response_format")


RequestT = TypeVar("RequestT", bound=_GenerationRequest)
_FIELD = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict", "none", "literal"}


def field_path(loc: tuple) -> str:
    """``("adapters", 0, "weight")`` → ``adapters.0.weight``; pydantic's union-member tags
    (``str``, ``list[str]``, …) are left out."""
    parts = []
    for part in loc:
        if isinstance(part, int) or (_FIELD.match(part) and part not in _TYPE_TAGS):
            parts.append(str(part))
        else:
            break
    return ".".join(parts)


def parse_request(model: type[RequestT], body: bytes) -> RequestT:
    """Validate a JSON body; the first problem becomes a 400 naming the field."""
    try:
        request = model.model_validate_json(body or b"")
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = field_path(err["loc"])
        if err["type"] == "json_invalid" or not loc:
            raise bad_request(
                f"the request body is not a valid JSON object: {err['msg']}"
            ) from None
        if err["type"] == "missing":
            raise bad_request(f"'{loc}' is required", param=loc) from None
        got = shown(err.get("input"))
        raise bad_request(f"'{loc}': {err['msg']} (got {got})", param=loc) from None
    request.check_supported()
    return request


# --- responses ----------------------------------------------------------------------------------


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, prompt: int, completion: int) -> Usage:
        return cls(
            prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion
        )


class CompletionLogprobs(BaseModel):
    """OpenAI's legacy completion log-probs, one entry per token of the choice's text."""

    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: str | None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int]


class ChatTokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(BaseModel):
    """OpenAI's chat log-probs: one entry per generated token."""

    content: list[ChatTokenLogprob]
    refusal: None = None


class ChatChoice(BaseModel):
    index: int = 0
    message: AssistantMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: str


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class ChatDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(BaseModel):
    index: int = 0
    delta: ChatDelta
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    root: str
    parent: str | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())
