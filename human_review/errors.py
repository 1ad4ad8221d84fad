"""Review-app errors: each maps to one HTTP status and the OpenAI error shape."""

from __future__ import annotations

from lorafleet.errors import LorafleetError


class ReviewError(LorafleetError):
    status = 400
    type = "invalid_request_error"


class NotFound(ReviewError):
    status = 404
    type = "not_found_error"


class Forbidden(ReviewError):
    status = 403
    type = "permission_error"


class Conflict(ReviewError):
    status = 409
    type = "conflict_error"
