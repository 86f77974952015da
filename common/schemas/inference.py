"""The OpenAI wire format of /v1/chat/completions and /v1/completions: request schemas and response builders.

Pure pydantic, no torch: the API validates with these same classes before it forwards a request to `serve`,
and `serve` parses with them again when it is called directly. Types and ranges fail as 422 (pydantic);
`check_supported` turns parameters that are valid OpenAI but not offered here into a 400 that names them.
"""

from __future__ import annotations

import json
import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from common.errors import InvalidRequest
from common.schemas.strings import Name

MAX_STOP_SEQUENCES = 4
MAX_N = 16
MAX_PROMPTS = 16


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: str
    text: str | None = None


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    refusal: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None

    def text(self, index: int) -> str:
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        out = []
        for j, part in enumerate(self.content):
            if part.type != "text" or part.text is None:
                raise InvalidRequest(
                    f"messages[{index}].content[{j}] is of type {part.type!r}; this server takes text parts only",
                    param=f"messages[{index}].content[{j}].type", code="unsupported_content")
            out.append(part.text)
        return "".join(out)


class StreamOptions(_Strict):
    include_usage: bool = False
    include_obfuscation: bool | None = None


class _Sampling(_Strict):
    model: Name = Field(min_length=1)  # looked up in Postgres (common/services/models.py `check_usable`)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    n: int | None = Field(default=None, ge=1, le=MAX_N)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None
    user: str | None = None

    @field_validator("stop")
    @classmethod
    def _check_stop(cls, value: str | list[str] | None) -> str | list[str] | None:
        stops = [value] if isinstance(value, str) else value or []
        if len(stops) > MAX_STOP_SEQUENCES:
            raise ValueError(f"at most {MAX_STOP_SEQUENCES} stop sequences; got {len(stops)}")
        if any(s == "" for s in stops):
            raise ValueError("a stop sequence must not be empty")
        return value

    @property
    def stop_list(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    @property
    def choices(self) -> int:
        return self.n or 1

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def check_prompt_chars(self, max_chars: int, context_tokens: int) -> int:
        """The prompt's length in characters, or a 400 naming `messages`/`prompt` when it is over `max_chars`:
        more text than a context of `context_tokens` can hold, refused before any tokeniser runs (serve:
        worker/serve/tokenise.py). Each prompt is measured on its own; a chat's messages together."""
        where = "messages" if isinstance(self, ChatCompletionRequest) else "prompt"
        lengths = self.prompt_lengths()
        longest = max(lengths)
        if longest > max_chars:
            raise InvalidRequest(f"This model's maximum context length is {context_tokens} tokens, which holds at "
                                 f"most {max_chars} characters of text; the {where} has {longest} characters. "
                                 f"Please reduce the length of the {where}.", param=where,
                                 code="context_length_exceeded")
        return sum(lengths)

    def prompt_lengths(self) -> list[int]:
        raise NotImplementedError

    def _check_common(self) -> None:
        for name in ("frequency_penalty", "presence_penalty"):
            if getattr(self, name):
                raise InvalidRequest(f"{name} is not supported by this server; leave it out or set it to 0",
                                     param=name, code="unsupported_parameter")
        if self.logit_bias:
            raise InvalidRequest("logit_bias is not supported by this server", param="logit_bias",
                                 code="unsupported_parameter")
        if self.stream_options is not None and not self.stream:
            raise InvalidRequest("stream_options is only allowed when stream is true", param="stream_options",
                                 code="invalid_value")


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    response_format: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    functions: list[dict[str, Any]] | None = None
    function_call: str | dict[str, Any] | None = None
    metadata: dict[str, str] | None = None
    store: bool | None = None
    service_tier: str | None = None

    @property
    def token_limit(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def check_supported(self) -> None:
        self._check_common()
        if self.logprobs or self.top_logprobs:
            raise InvalidRequest("logprobs are not supported by this server", param="logprobs",
                                 code="unsupported_parameter")
        for name in ("tools", "functions", "tool_choice", "function_call"):
            if getattr(self, name):
                raise InvalidRequest(f"{name} (function calling) is not supported by this server", param=name,
                                     code="unsupported_parameter")
        if self.response_format and self.response_format.get("type") != "text":
            raise InvalidRequest("response_format must be {\"type\": \"text\"} on this server",
                                 param="response_format", code="unsupported_parameter")
        if self.max_tokens is not None and self.max_completion_tokens is not None \
                and self.max_tokens != self.max_completion_tokens:
            raise InvalidRequest("max_tokens and max_completion_tokens disagree; send one of them",
                                 param="max_tokens", code="invalid_value")
        for i, message in enumerate(self.messages):
            if message.role in ("tool", "function") or message.tool_calls:
                raise InvalidRequest(f"messages[{i}]: tool and function messages are not supported by this server",
                                     param=f"messages[{i}].role", code="unsupported_parameter")
            message.text(i)

    def prompt_lengths(self) -> list[int]:
        return [sum(len(m.text(i)) for i, m in enumerate(self.messages))]

    def conversation(self) -> list[dict[str, str]]:
        """Messages as the chat template wants them; `developer` is OpenAI's newer name for `system`."""
        return [{"role": "system" if m.role == "developer" else m.role, "content": m.text(i)}
                for i, m in enumerate(self.messages)]


class CompletionRequest(_Sampling):
    prompt: str | list[str] = Field(min_length=1)
    max_tokens: int | None = Field(default=16, ge=1)
    echo: bool | None = False
    logprobs: int | None = Field(default=None, ge=0, le=5)
    best_of: int | None = Field(default=None, ge=1, le=MAX_N)
    suffix: str | None = None

    @field_validator("prompt")
    @classmethod
    def _check_prompt(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and len(value) > MAX_PROMPTS:
            raise ValueError(f"at most {MAX_PROMPTS} prompts in one request; got {len(value)}")
        return value

    @property
    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)

    @property
    def token_limit(self) -> int | None:
        return self.max_tokens

    def prompt_lengths(self) -> list[int]:
        return [len(p) for p in self.prompts]

    def check_supported(self) -> None:
        self._check_common()
        if self.logprobs:
            raise InvalidRequest("logprobs are not supported by this server", param="logprobs",
                                 code="unsupported_parameter")
        if self.suffix:
            raise InvalidRequest("suffix (insertion) is not supported by this server", param="suffix",
                                 code="unsupported_parameter")
        if self.best_of is not None and self.best_of != self.choices:
            raise InvalidRequest("best_of is not supported by this server; leave it out", param="best_of",
                                 code="unsupported_parameter")
        if self.choices * len(self.prompts) > MAX_N:
            raise InvalidRequest(f"n × number of prompts must be at most {MAX_N}; got "
                                 f"{self.choices} × {len(self.prompts)}", param="n", code="invalid_value")


InferenceRequest = ChatCompletionRequest | CompletionRequest


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


class ResponseBuilder:
    """Builds the response objects and stream chunks of one request (chat or text completion)."""

    def __init__(self, kind: Literal["chat", "text"], model: str, request_id: str) -> None:
        self.kind = kind
        self.model = model
        self.id = request_id
        self.created = int(time.time())

    def _envelope(self, obj: str) -> dict[str, Any]:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model,
                "system_fingerprint": None}

    def final(self, texts: list[str], reasons: list[str | None], prompt_tokens: int,
              completion_tokens: int) -> dict[str, Any]:
        if self.kind == "chat":
            out = self._envelope("chat.completion")
            out["choices"] = [{"index": i, "message": {"role": "assistant", "content": t, "refusal": None},
                               "logprobs": None, "finish_reason": r}
                              for i, (t, r) in enumerate(zip(texts, reasons, strict=True))]
        else:
            out = self._envelope("text_completion")
            out["choices"] = [{"index": i, "text": t, "logprobs": None, "finish_reason": r}
                              for i, (t, r) in enumerate(zip(texts, reasons, strict=True))]
        out["usage"] = usage(prompt_tokens, completion_tokens)
        return out

    def chunk(self, index: int, text: str | None, finish_reason: str | None = None, *,
              first: bool = False) -> dict[str, Any]:
        if self.kind == "chat":
            out = self._envelope("chat.completion.chunk")
            delta: dict[str, Any] = {}
            if first:
                delta["role"] = "assistant"
            if text is not None:
                delta["content"] = text
            out["choices"] = [{"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]
        else:
            out = self._envelope("text_completion")
            out["choices"] = [{"index": index, "text": text or "", "logprobs": None, "finish_reason": finish_reason}]
        return out

    def usage_chunk(self, prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
        out = self._envelope("chat.completion.chunk" if self.kind == "chat" else "text_completion")
        out["choices"] = []
        out["usage"] = usage(prompt_tokens, completion_tokens)
        return out


def sse(obj: dict[str, Any] | str) -> bytes:
    data = obj if isinstance(obj, str) else json.dumps(obj, separators=(",", ":"))
    return f"data: {data}\n\n".encode()


SSE_DONE = sse("[DONE]")
