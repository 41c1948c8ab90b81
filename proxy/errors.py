"""The gateway's error tree: every error a client can get from the gateway itself, in one file.

    wire.errors.APIError            OpenAI's envelope (shared with the mock's `MockError`)
    └── GatewayError                500 any error the gateway answers itself (`internal_error`)
        ├── AuthenticationError     401 missing or unknown key                              auth
        ├── InvalidRequest          400 malformed input the gateway must read (JSON it parses)
        │   ├── Unestimable         400 a budgeted request whose cost cannot be bounded     estimate
        │   └── ContextTooLong      400 a prompt over the model's context window            estimate
        ├── OverrideRefused         403 a fixtures mode or cassette header the config forbids  fixtures
        ├── Forbidden               403 a dashboard view this key may not see (another key's rows)  dashboard
        ├── NotFound                404 an object this key may not see (another key's, or unknown): owners
        │   └── ModelNotFound       404 `model_not_found`: no upstream serves the model      budget
        ├── RequestTimeout          408 the client stopped sending its body
        ├── PayloadTooLarge         413 a body over `[server] max_json_bytes` / `max_upload_bytes`
        ├── UnsupportedEncoding     415 a `Content-Encoding` the gateway cannot decode
        ├── BudgetExceeded          429 `insufficient_quota`: a budget is spent (not retried)  budget
        ├── RateLimited             429 over a rate limit, with `retry-after`               ratelimit
        ├── FixtureMiss             `[fixtures] miss_status` (404): no recording, replay mode  fixtures
        ├── StateUnavailable        503 the shared state (Redis) is unreachable: fail closed  budget, ratelimit
        ├── LedgerUnavailable       503 the ledger cannot be read: no report rather than $0   dashboard
        └── UpstreamError           502 the upstream could not be reached or broke the connection
            └── UpstreamTimeout     504 the upstream did not answer in time

The last column names the stage that raises it. Errors an upstream answers itself are relayed as
they came, not wrapped. `ConfigError` (bad config.toml) is raised before serving and never reaches a
client; the CLI turns it into exit code 2 (see `proxy.cli`).
"""

from __future__ import annotations

from .wire.configfile import ConfigError
from .wire.errors import INVALID_REQUEST, SERVER_ERROR, APIError


class GatewayError(APIError):
    """An error answered in OpenAI's envelope; subclasses set status, type and code."""

    status = 500
    type = SERVER_ERROR


class AuthenticationError(GatewayError):
    status, type, code = 401, INVALID_REQUEST, "invalid_api_key"


class InvalidRequest(GatewayError):
    status, type = 400, INVALID_REQUEST
    code: str | None = None


class Unestimable(InvalidRequest):
    """400: a budgeted request whose cost the gateway cannot bound."""

    code = "unestimable_request"


class ContextTooLong(InvalidRequest):
    code = "context_length_exceeded"


class OverrideRefused(GatewayError):
    """A request asked for another fixtures mode or cassette where the config does not allow it."""

    status, type, code = 403, "permission_error", "fixtures_override_not_allowed"


class NotFound(GatewayError):
    """OpenAI's answer for an object that is not there; the gateway's for one that is not the caller's."""

    status, type = 404, INVALID_REQUEST
    code: str | None = None


class ModelNotFound(NotFound):
    """OpenAI's answer for a model the upstream does not serve (an unpriced model on a budgeted key)."""

    code = "model_not_found"


class RequestTimeout(GatewayError):
    status, type, code = 408, INVALID_REQUEST, "request_timeout"


class PayloadTooLarge(GatewayError):
    status, type, code = 413, INVALID_REQUEST, "request_too_large"


class UnsupportedEncoding(GatewayError):
    status, type, code = 415, INVALID_REQUEST, "unsupported_content_encoding"


class BudgetExceeded(GatewayError):
    """429 `insufficient_quota` with `x-should-retry: false`, so SDKs do not retry it."""

    status, type, code = 429, "insufficient_quota", "budget_exceeded"


class RateLimited(GatewayError):
    status, type, code = 429, "requests", "rate_limit_exceeded"


class FixtureMiss(GatewayError):
    """No recording for this request in replay mode; its status is `[fixtures] miss_status`."""

    type, code = INVALID_REQUEST, "fixture_not_found"


class StateUnavailable(GatewayError):
    """503: the shared state cannot be reached, so a budget or limit cannot be enforced (fail closed)."""

    status, code = 503, "state_unavailable"

    def __init__(self, message: str = "The gateway cannot reach its shared budget and rate-limit state "
                 "(Redis), so it cannot enforce this request's limits. Please try again shortly.") -> None:
        super().__init__(message, headers={"x-should-retry": "true", "retry-after": "1"})


class LedgerUnavailable(GatewayError):
    """503: a report (the dashboard, OpenAI's usage and costs API) cannot read the ledger now; an empty
    one would say nothing was spent. The reason goes to the gateway's log."""

    status, code = 503, "ledger_unavailable"

    def __init__(self) -> None:
        super().__init__("The gateway cannot read its ledger right now, so it cannot report spend (its log says "
                         "why). Please try again shortly.", headers={"x-should-retry": "true", "retry-after": "5"})


class UpstreamError(GatewayError):
    status, type, code = 502, SERVER_ERROR, "upstream_error"


class UpstreamTimeout(UpstreamError):
    status, code = 504, "upstream_timeout"


__all__ = ["AuthenticationError", "BudgetExceeded", "ConfigError", "ContextTooLong", "FixtureMiss", "Forbidden",
           "GatewayError", "InvalidRequest", "LedgerUnavailable", "ModelNotFound", "NotFound", "OverrideRefused",
           "PayloadTooLarge", "RateLimited", "RequestTimeout", "StateUnavailable", "Unestimable", "UnsupportedEncoding",
           "UpstreamError", "UpstreamTimeout"]


class Forbidden(GatewayError):
    """A dashboard or spend-API view of another key's rows, asked for by a key that is not an admin."""

    status, type, code = 403, INVALID_REQUEST, "forbidden"
