"""Errors of the HTTP API: one JSON shape for every failure.

Every error answer, whatever its cause (a bad parameter, an unknown URL, a
wrong method, a bug), is ``{"error": {"code": "...", "message": "..."}}`` with
the matching HTTP status; never an HTML page.  Codes:

=====================  ======  ==================================================
code                   status  when
=====================  ======  ==================================================
``bad_parameter``      400     a query parameter is malformed, unknown, or out of
                               range (``from >= to``, bad step, too many points)
``bad_request``        400     the request itself is malformed (werkzeug)
``not_found``          404     unknown service, unknown URL
``method_not_allowed`` 405     the URL exists but not for this method (``Allow``
                               header is set)
``internal_error``     500     anything unexpected (logged with its traceback)
=====================  ======  ==================================================
"""

from __future__ import annotations

import logging

from flask import Flask, Response
from werkzeug.exceptions import HTTPException

log = logging.getLogger("healthmon.serving")

# HTTP status -> error code for errors raised by Flask/werkzeug themselves.
_HTTP_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    500: "internal_error",
}

_HTTP_MESSAGES = {
    404: "no such URL",
}


class ApiError(Exception):
    """An error answer: HTTP ``status``, machine-readable ``code``, human ``message``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def bad_parameter(message: str) -> ApiError:
    return ApiError(400, "bad_parameter", message)


def not_found(message: str) -> ApiError:
    return ApiError(404, "not_found", message)


def error_response(app: Flask, status: int, code: str, message: str, headers=None) -> Response:
    resp = app.json.response({"error": {"code": code, "message": message}})
    resp.status_code = status
    if headers:
        for key, value in headers:
            if key.lower() != "content-type":
                resp.headers[key] = value
    return resp


def register_error_handlers(app: Flask) -> None:
    """Make every error of ``app`` answer in the one JSON shape."""

    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError):
        return error_response(app, exc.status, exc.code, exc.message)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        status = exc.code or 500
        code = _HTTP_CODES.get(status) or _snake(exc.name)
        message = _HTTP_MESSAGES.get(status) or exc.description or exc.name
        return error_response(app, status, code, message, exc.get_headers())

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        log.exception("unexpected error in request")
        return error_response(app, 500, "internal_error", f"internal error: {type(exc).__name__}")


def _snake(name: str) -> str:
    return "_".join(name.lower().replace("-", " ").split()) or "error"
