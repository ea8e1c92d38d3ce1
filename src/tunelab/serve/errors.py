"""Errors as OpenAI's clients expect them: ``{"error": {"message", "type", "param", "code"}}`` with a 4xx/5xx status.

Every way a request can fail ends here: our own checks (``ApiError``), pydantic's validation of the body, routing
(404/405) and anything unexpected (500). The message names what was wrong and what to send instead.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("tunelab.serve")


class ApiError(Exception):
    """A request the server answers with an error: the HTTP status and OpenAI's four error fields."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",  # noqa: A002 - OpenAI's name
                 param: str | None = None, code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers

    def body(self) -> dict[str, Any]:
        """The JSON body OpenAI's clients parse into their error classes."""
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        """This error as an HTTP response."""
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def bad_request(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    """A 400: the request itself is wrong (a value, a size, a parameter this server does not support)."""
    return ApiError(400, message, param=param, code=code)


def model_failed(err: BaseException) -> ApiError:
    """A 500 for an exception raised inside the model: the request is answered, the server keeps serving."""
    return ApiError(500, f"the model failed on this request ({type(err).__name__}: {err}); the server is still up, "
                    "and the traceback is in its log", type="server_error", code="model_error")


def where(loc: tuple[Any, ...]) -> str:
    """A pydantic error location as the parameter a client wrote:
    ('body', 'messages', 0, 'content') -> messages[0].content."""
    out = ""
    for part in loc[1:] if loc and loc[0] == "body" else loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}" if out else str(part)
    return out


def validation_error(err: RequestValidationError) -> ApiError:
    """pydantic's complaints about a body as one 400 naming each bad parameter (or the JSON syntax error)."""
    problems, first = [], None
    for item in err.errors():
        if item["type"] == "json_invalid":
            detail = item.get("ctx", {}).get("error", "")
            return bad_request(f"the request body is not valid JSON ({detail}); send a JSON object", code="invalid_json")
        param = where(tuple(item["loc"]))
        if not param:  # the body as a whole: not an object, or not sent as JSON
            return bad_request("the request body must be a JSON object sent with Content-Type: application/json",
                               code="invalid_value")
        first = first or param
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "not a parameter this server supports; leave it out"
        elif item["type"] == "missing":
            message = "required"
        problems.append(f"{param}: {message}")
    return bad_request("invalid request: " + "; ".join(problems), param=first, code="invalid_value")


def install(app: FastAPI) -> None:
    """Answer every failure in OpenAI's error shape, whatever raised it."""

    @app.exception_handler(ApiError)
    async def _ours(_: Request, err: ApiError) -> JSONResponse:
        return err.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, err: RequestValidationError) -> JSONResponse:
        return validation_error(err).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, err: StarletteHTTPException) -> JSONResponse:
        if err.status_code == 404:
            message = f"no endpoint {request.url.path}; see GET /v1/models, GET /health and /docs"
        elif err.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}"
        else:
            message = str(err.detail)
        code = {404: "unknown_url", 405: "method_not_allowed"}.get(err.status_code)
        return ApiError(err.status_code, message, code=code, headers=getattr(err, "headers", None)).response()

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, err: Exception) -> JSONResponse:
        log.error("unexpected error", exc_info=err)
        return ApiError(500, f"internal error ({type(err).__name__}: {err}); the server is still up",
                        type="server_error", code="internal_error").response()
