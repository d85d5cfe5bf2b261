"""HTTP request/response models and the 413 / 422 mapping."""

import pytest
from pydantic import ValidationError

from app.serving.schemas import PredictRequest, Prediction, PredictResponse, http_error, make_request_model

Request = make_request_model(max_chars=10, max_batch=3)


def rejected(body):
    """(status, [(field, type, message)]) for a body that must fail validation."""
    with pytest.raises(ValidationError) as e:
        Request.model_validate(body)
    status, payload = http_error(e.value)
    return status, [(d["field"], d["type"], d["message"]) for d in payload["detail"]]


def test_valid_single_and_batch():
    one = Request.model_validate({"text": "good film"})
    assert one.inputs == ["good film"] and not one.is_batch and one.opt_out is False
    batch = Request.model_validate({"texts": ["a", "b c", "0123456789"], "opt_out": True})  # 10 chars is allowed
    assert batch.inputs == ["a", "b c", "0123456789"] and batch.is_batch and batch.opt_out


def test_size_limits_map_to_413_and_name_the_field():
    assert rejected({"text": "x" * 11}) == (413, [("text", "text_too_long", "text has 11 characters; max_chars is 10")])
    assert rejected({"texts": ["a"] * 4}) == (413, [("texts", "batch_too_large", "texts has 4 items; max_batch is 3")])
    status, errs = rejected({"texts": ["ok", "y" * 12]})
    assert status == 413 and errs[0][2] == "texts[1] has 12 characters; max_chars is 10"
    # A size error wins over a malformed field elsewhere in the same body.
    assert rejected({"text": "x" * 11, "opt_out": "maybe"})[0] == 413


@pytest.mark.parametrize("body, field, kind, message_part", [
    ({"text": "hi", "texts": ["hi"]}, "body", "text_or_texts", "exactly one of 'text' or 'texts'; got both"),
    ({}, "body", "text_or_texts", "got neither"),
    ({"text": "   \n"}, "text", "text_empty", "text is empty after stripping"),
    ({"texts": ["ok", " "]}, "texts", "text_empty", "texts[1] is empty"),
    ({"texts": []}, "texts", "batch_empty", "at least 1 text"),
    ({"text": 5}, "text", "string_type", "valid string"),
    ({"txt": "hi"}, "txt", "extra_forbidden", "Extra inputs"),
])
def test_malformed_bodies_map_to_422(body, field, kind, message_part):
    status, errs = rejected(body)
    assert status == 422
    assert (errs[0][0], errs[0][1]) == (field, kind) and message_part in errs[0][2]


def test_default_model_and_factory_checks():
    assert PredictRequest.max_chars == 4000 and PredictRequest.max_batch == 64
    assert Request.max_chars == 10 and PredictRequest.max_chars == 4000  # the factory does not leak limits
    with pytest.raises(ValueError, match="max_batch = 0"):
        make_request_model(100, 0)


def test_prediction_models():
    p = Prediction(label="positive", confidence=0.93, stage="stage:0", model_version="v3")
    assert PredictResponse(predictions=[p]).model_dump()["predictions"][0]["stage"] == "stage:0"
    with pytest.raises(ValidationError, match="confidence"):
        Prediction(label="positive", confidence=1.2, stage="weighted", model_version="v3")


def test_parse_body_statuses_and_size_bound():
    from app.serving.schemas import FeedbackRequest, make_request_model, max_body_bytes, parse_body

    model = make_request_model(max_chars=10, max_batch=2)
    cap = max_body_bytes(10, 2)
    assert cap == 10 * 2 * 4 + 4096
    req, err = parse_body(b'{"texts": ["good", "bad"]}', cap, model)
    assert err is None and req.texts == ["good", "bad"]
    assert parse_body(b"x" * (cap + 1), cap, model) == (None, (413, {"detail": f"body of {cap + 1} bytes exceeds {cap}"}))
    _, (status, body) = parse_body(b'{"text": "unterminated', cap, model)
    assert status == 400 and body["detail"].startswith("invalid JSON")
    _, (status, body) = parse_body(b'{"text": "' + b"y" * 11 + b'"}', cap, model)  # over max_chars: a size error
    assert status == 413 and body["detail"][0]["field"] == "text"
    _, (status, body) = parse_body(b'{"label": "positive"}', cap, FeedbackRequest)  # names neither item nor text
    assert status == 422
