"""One error type for everything a user can cause; the API maps it to an OpenAI-shaped 4xx."""

from __future__ import annotations


class GraftError(Exception):
    status_code = 400
    error_type = "invalid_request_error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None,
                 status_code: int | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code
        if status_code is not None:
            self.status_code = status_code

    def to_dict(self) -> dict:
        return {"error": {"message": self.message, "type": self.error_type,
                          "param": self.param, "code": self.code}}


class NotFound(GraftError):
    status_code = 404
    error_type = "not_found_error"


class Conflict(GraftError):
    status_code = 409
    error_type = "conflict_error"


class Unavailable(GraftError):
    status_code = 503
    error_type = "unavailable_error"
