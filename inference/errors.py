"""Errors as OpenAI's error JSON: `{"error": {"message", "type", "param", "code"}}`."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from inference.schemas import ErrorDetail, ErrorResponse

ERROR_TYPES = {
    400: "invalid_request_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    408: "timeout",
    413: "invalid_request_error",
    415: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "service_unavailable",
    504: "timeout",
}


class ApiError(Exception):
    """An error answered to the client; the message says what to fix."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers

    def response(self) -> JSONResponse:
        body = ErrorResponse(
            error=ErrorDetail(
                message=self.message,
                type=ERROR_TYPES.get(self.status, "invalid_request_error"),
                param=self.param,
                code=self.code,
            )
        )
        return JSONResponse(body.model_dump(), status_code=self.status, headers=self.headers)

    @classmethod
    def from_validation(cls, errors: list[Any]) -> ApiError:
        """The first problem of a pydantic validation, phrased for someone writing the request by hand."""
        problem = errors[0]
        loc = [str(part) for part in problem.get("loc", ()) if part != "body"]
        field = loc[0] if loc else None
        kind = problem.get("type", "")
        if kind == "extra_forbidden":
            return cls(400, f"Unrecognized request argument supplied: {field}", param=field)
        if kind == "missing":
            return cls(400, f"you must provide a {field} parameter", param=field)
        if kind == "json_invalid":
            return cls(400, f"the request body is not valid JSON: {problem.get('msg', '')}")
        if kind in ("model_type", "model_attributes_type", "dict_type") and not field:
            return cls(400, "the request body must be a JSON object")
        # A union field (prompt, stop) fails once per alternative; say all of them in one sentence.
        messages = dict.fromkeys(
            str(e.get("msg", "invalid value")).removeprefix("Value error, ")
            for e in errors
            if [str(p) for p in e.get("loc", ()) if p != "body"][:1] == loc[:1]
        )
        where = (field or "body") + "".join(f"[{part}]" for part in loc[1:] if part.isdigit())
        return cls(400, f"{where}: {'; or '.join(messages)} (got {_short(problem.get('input'))})", param=field)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


async def api_error_handler(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return exc.response()


async def http_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    headers = dict(exc.headers) if exc.headers else None
    message = str(exc.detail)
    if exc.status_code == 404:
        message = f"{request.method} {request.url.path} does not exist; see /docs for the routes"
    elif exc.status_code == 405:
        message = f"{request.method} is not allowed on {request.url.path}"
    return ApiError(exc.status_code, message, headers=headers).response()
