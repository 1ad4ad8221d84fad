"""OpenAI request shapes for the gateway's OpenAPI document, as JSON schemas.

The routes read the raw body and forward it (only `model` is rewritten), so FastAPI sees no body
model and would publish none: client generators and API fuzzers would see nothing. These schemas
go on the routes as `openapi_extra`: documented, never parsed on the request path. Unknown fields
are allowed, as vLLM accepts more than OpenAI documents.
"""

from __future__ import annotations

from typing import Any

_STRINGS = {"type": "array", "items": {"type": "string"}}
_TOKENS = {"type": "array", "items": {"type": "integer", "minimum": 0}}

# sampling fields both endpoints take; the vLLM extras are what vLLM's own protocol models accept
SAMPLING: dict[str, Any] = {
    "max_tokens": {"type": ["integer", "null"], "minimum": 1},
    "temperature": {"type": ["number", "null"], "minimum": 0, "maximum": 2},
    "top_p": {"type": ["number", "null"], "exclusiveMinimum": 0, "maximum": 1},
    "n": {"type": ["integer", "null"], "minimum": 1, "description": "Choices to generate."},
    "stop": {"anyOf": [{"type": "string"}, {**_STRINGS, "maxItems": 16}, {"type": "null"}]},
    "seed": {"type": ["integer", "null"]},
    "presence_penalty": {"type": ["number", "null"], "minimum": -2, "maximum": 2},
    "frequency_penalty": {"type": ["number", "null"], "minimum": -2, "maximum": 2},
    "logit_bias": {"type": ["object", "null"], "additionalProperties": {"type": "number"}},
    "stream": {"type": ["boolean", "null"], "default": False},
    "stream_options": {"type": ["object", "null"], "properties": {"include_usage": {"type": "boolean"}}},
    "user": {"type": ["string", "null"], "description": "End user; sticky key for weighted aliases."},
    "top_k": {"type": ["integer", "null"], "minimum": -1, "description": "vLLM: -1 or 0 disables."},
    "min_p": {"type": ["number", "null"], "minimum": 0, "maximum": 1, "description": "vLLM."},
    "repetition_penalty": {"type": ["number", "null"], "exclusiveMinimum": 0, "description": "vLLM."},
    "min_tokens": {"type": ["integer", "null"], "minimum": 0, "description": "vLLM."},
    "structured_outputs": {"type": ["object", "null"],
                           "description": "vLLM: constrain output by json (a schema), regex, choice or grammar.",
                           "properties": {"json": {"type": "object"}, "regex": {"type": "string"},
                                          "choice": _STRINGS, "grammar": {"type": "string"}}},
}
MODEL = {"type": "string", "minLength": 1, "maxLength": 200,
         "description": "The base, or an adapter ref: name, name@vN or name@alias."}
_CONTENT_PART = {"type": "object", "required": ["type"], "properties": {"type": {"type": "string"}}}
MESSAGE = {
    "type": "object",
    "required": ["role"],
    "properties": {
        "role": {"type": "string", "enum": ["system", "developer", "user", "assistant", "tool"]},
        "content": {"anyOf": [{"type": "string"}, {"type": "array", "items": _CONTENT_PART}, {"type": "null"}]},
        "name": {"type": "string"},
    },
}

CHAT_COMPLETION_REQUEST: dict[str, Any] = {
    "title": "ChatCompletionRequest",
    "type": "object",
    "required": ["model", "messages"],
    "additionalProperties": True,
    "properties": {
        "model": MODEL,
        "messages": {"type": "array", "minItems": 1, "items": MESSAGE},
        **SAMPLING,
        "max_completion_tokens": {"type": ["integer", "null"], "minimum": 1},
        "logprobs": {"type": ["boolean", "null"]},
        "top_logprobs": {"type": ["integer", "null"], "minimum": 0, "maximum": 20},
        "response_format": {
            "type": ["object", "null"], "required": ["type"],
            "properties": {"type": {"type": "string", "enum": ["text", "json_object", "json_schema"]},
                           "json_schema": {"type": "object"}}},
        "tools": {"type": ["array", "null"], "items": {"type": "object"}},
        "tool_choice": {"anyOf": [{"type": "string"}, {"type": "object"}, {"type": "null"}]},
    },
}

COMPLETION_REQUEST: dict[str, Any] = {
    "title": "CompletionRequest",
    "type": "object",
    "required": ["model", "prompt"],
    "additionalProperties": True,
    "properties": {
        "model": MODEL,
        "prompt": {"anyOf": [{"type": "string"}, _STRINGS, _TOKENS, {"type": "array", "items": _TOKENS}]},
        **SAMPLING,
        "logprobs": {"type": ["integer", "null"], "minimum": 0, "maximum": 20},
        "echo": {"type": ["boolean", "null"]},
        "suffix": {"type": ["string", "null"]},
    },
}


def request_body(schema: dict[str, Any]) -> dict[str, Any]:
    """`openapi_extra` for a route whose JSON body has `schema`."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


CHAT_BODY = request_body(CHAT_COMPLETION_REQUEST)
COMPLETION_BODY = request_body(COMPLETION_REQUEST)
