"""HTTP request/response models of the prediction endpoint (pydantic v2).

Limits come from the serve config, so the request model is built by `make_request_model(max_chars,
max_batch)`. Every error's `loc` names the field ("text" or "texts"; the message names the index inside
`texts`). Status codes, via `http_error`:
- 413 Payload Too Large: error type `text_too_long` (a text has more than max_chars characters) or
  `batch_too_large` (more than max_batch texts). The client must send less, so 413 wins over any other
  error in the same body. (The server should also cap the raw body size before parsing.)
- 422 Unprocessable Entity: everything else — both or neither of text/texts, an empty or whitespace-only
  text, an empty `texts` list, wrong types, unknown fields.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

DEFAULT_MAX_CHARS = 4000  # roughly 1k tokens: the members' context is bigger, so this bounds latency, not truncation
DEFAULT_MAX_BATCH = 64
SIZE_ERROR_TYPES = frozenset({"text_too_long", "batch_too_large"})


def _check_text(value: str, where: str, max_chars: int) -> None:
    if not value.strip():
        raise PydanticCustomError("text_empty", "{where} is empty after stripping whitespace; send non-empty text",
                                  {"where": where})
    if len(value) > max_chars:
        raise PydanticCustomError("text_too_long", "{where} has {n} characters; max_chars is {max_chars}",
                                  {"where": where, "n": len(value), "max_chars": max_chars})


class PredictRequestBase(BaseModel):
    """Body of POST /predict: exactly one of `text` (one item) or `texts` (a batch). Use `make_request_model`."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    max_chars: ClassVar[int] = DEFAULT_MAX_CHARS
    max_batch: ClassVar[int] = DEFAULT_MAX_BATCH

    text: str | None = Field(None, description="one input text; give this or `texts`, not both")
    texts: list[str] | None = Field(None, description="a batch of input texts; give this or `text`, not both")
    opt_out: bool = Field(False, description="true: do not keep this request for training data")

    @field_validator("text")
    @classmethod
    def _text_ok(cls, v: str | None) -> str | None:
        if v is not None:
            _check_text(v, "text", cls.max_chars)
        return v

    @field_validator("texts")
    @classmethod
    def _texts_ok(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return v
        if not v:
            raise PydanticCustomError("batch_empty", "texts is an empty list; send at least 1 text")
        if len(v) > cls.max_batch:
            raise PydanticCustomError("batch_too_large", "texts has {n} items; max_batch is {max_batch}",
                                      {"n": len(v), "max_batch": cls.max_batch})
        for i, t in enumerate(v):
            _check_text(t, f"texts[{i}]", cls.max_chars)
        return v

    @model_validator(mode="after")
    def _exactly_one(self) -> "PredictRequestBase":
        if (self.text is None) == (self.texts is None):
            got = "both" if self.text is not None else "neither"
            raise PydanticCustomError("text_or_texts", "give exactly one of 'text' or 'texts'; got {got}", {"got": got})
        return self

    @property
    def inputs(self) -> list[str]:
        """The texts to classify, as a list (length 1 for `text`)."""
        return [self.text] if self.text is not None else list(self.texts)

    @property
    def is_batch(self) -> bool:
        """True when the client sent `texts` (answer with a list even for one item)."""
        return self.texts is not None


def make_request_model(max_chars: int = DEFAULT_MAX_CHARS,
                       max_batch: int = DEFAULT_MAX_BATCH) -> type[PredictRequestBase]:
    """Build the request model with the config's limits (characters per text, texts per request)."""
    for name, value in (("max_chars", max_chars), ("max_batch", max_batch)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} = {value!r}; must be an integer >= 1")
    return type("PredictRequest", (PredictRequestBase,),
                {"max_chars": max_chars, "max_batch": max_batch, "__module__": __name__})


PredictRequest = make_request_model()


class Prediction(BaseModel):
    """One answer of the ensemble."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    label: str = Field(..., description="predicted class name")
    confidence: float = Field(..., ge=0, le=1, description="probability of `label` under the ensemble")
    stage: str = Field(..., description="what answered: 'weighted', 'stage:0', 'fallback', 'expert:1', 'moe'")
    model_version: str = Field(..., description="version of the deployed ensemble (champion or challenger)")


class PredictResponse(BaseModel):
    """Body of a successful POST /predict: one prediction per input, in input order."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    predictions: list[Prediction] = Field(..., description="one entry per input text")


class FeedbackRequest(BaseModel):
    """Body of POST /feedback: the true label of an answered item, found by `request_id` (+ `index`) or `text`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    request_id: str | None = Field(None, min_length=1, max_length=200,
                                   description="x-request-id of the /predict response; give this or `text`")
    index: int | None = Field(None, ge=0, description="item of a batch request (default 0); only with request_id")
    text: str | None = Field(None, min_length=1, description="the answered text itself (its latest answer counts)")
    label: str = Field(..., min_length=1, description="the true label, one of the endpoint's labels")

    @model_validator(mode="after")
    def _exactly_one(self) -> "FeedbackRequest":
        if (self.request_id is None) == (self.text is None):
            got = "both" if self.text is not None else "neither"
            raise PydanticCustomError("request_id_or_text", "give exactly one of 'request_id' or 'text'; got {got}",
                                      {"got": got})
        if self.index is not None and self.request_id is None:
            raise PydanticCustomError("index_without_request_id", "'index' goes with 'request_id', not with 'text'")
        return self


class FeedbackResponse(BaseModel):
    """Body of a successful POST /feedback: what the label was matched to."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    request_id: str = Field(..., description="request the label was matched to")
    index: int = Field(..., description="item of that request")
    model_version: str = Field(..., description="version that answered it")
    variant: str = Field(..., description="champion, challenger, or retired (a version no longer routed)")
    predicted: str = Field(..., description="the label the endpoint answered")
    label: str = Field(..., description="the true label received")
    correct: bool = Field(..., description="predicted == label")


def http_error(exc: ValidationError) -> tuple[int, dict[str, Any]]:
    """Map a request ValidationError to (status, JSON body): 413 for size limits, else 422 (module docstring).

    Body: {"detail": [{"field": "texts", "type": "batch_too_large", "message": "..."}]}; "field" is "body"
    for errors about the request as a whole (both/neither of text and texts).
    """
    errors = exc.errors(include_url=False)
    status = 413 if any(e["type"] in SIZE_ERROR_TYPES for e in errors) else 422
    detail = [{"field": ".".join(str(p) for p in e["loc"]) or "body", "type": e["type"], "message": e["msg"]}
              for e in errors]
    return status, {"detail": detail}


def max_body_bytes(max_chars: int, max_batch: int) -> int:
    """Largest raw request body worth parsing: the biggest valid batch at 4 bytes a character (UTF-8's worst
    case) plus 4 KiB of JSON around it. Bounding the body first keeps a huge request from being parsed."""
    return max_chars * max_batch * 4 + 4096


def parse_body(raw: bytes, max_body: int, model: type[BaseModel]) -> tuple[BaseModel | None, tuple[int, Any] | None]:
    """Size-check, decode and validate one request body.

    Returns:
        ``(request, None)``, or ``(None, (status, JSON body))``: 413 for a body over ``max_body`` bytes, 400 for
        bytes that are not JSON, and ``http_error``'s 413 / 422 for a body the model rejects.
    """
    if len(raw) > max_body:
        return None, (413, {"detail": f"body of {len(raw)} bytes exceeds {max_body}"})
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        return None, (400, {"detail": f"invalid JSON: {e}"})
    try:
        return model.model_validate(body), None
    except ValidationError as e:
        return None, http_error(e)
