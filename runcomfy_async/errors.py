"""The exception tree of runcomfy-async.

Every exception the library raises on purpose derives from :class:`RunComfyError`::

    RunComfyError
    +-- ConfigurationError            bad client setup: missing token or user id, bad URL
    +-- ClientClosedError             the client was closed, or never entered
    +-- AsyncUsageError               `with` instead of `async with`, or a forgotten `await`
    +-- WrongEventLoopError           the client is used from another event loop than its own
    +-- ValidationError               input refused before any byte was sent
    |   +-- DatasetValidationError    a dataset folder breaks the upload rules (lists every problem)
    |   +-- ConfigError               an AI Toolkit config the service would reject
    |   +-- ModelInputError           model inputs that fail the model's input schema
    +-- TransportError                connection failed, reset or timed out (no HTTP answer)
    |   +-- APITimeoutError           a connect/read/total timeout expired
    |   +-- UnsentTransportError      the connection never opened: the request provably never left
    |   |   +-- UnsentTimeoutError    connecting timed out (also an APITimeoutError)
    |   +-- OutcomeUnknownError       a create was sent but its answer was lost: it may have run
    +-- APIError                      the server answered with an error
    |   +-- BadRequestError           400 / 422 (the request was invalid)
    |   +-- AuthenticationError       401 (token missing, wrong or expired)
    |   +-- PermissionDeniedError     403
    |   +-- InsufficientBalanceError  402 (top up the account)
    |   +-- NotFoundError             404
    |   +-- ConflictError             409 (e.g. a dataset name already taken)
    |   +-- PayloadTooLargeError      413
    |   +-- RateLimitError            429 after retries ran out
    |   +-- ServerError               5xx after retries ran out
    |   +-- UnexpectedResponseError   a body that is not the JSON the API documents
    |   +-- DeploymentUnavailableError  a serverless deployment refuses inference
    |       +-- DeploymentDisabledError   it is disabled (error code 10002)
    |       +-- DeploymentDeletedError    it was deleted (error code 10003)
    +-- UploadError                   one or more files could not be uploaded
    +-- DownloadError                 one or more files could not be downloaded
    +-- OperationFailed               a remote operation ended badly
    |   +-- DatasetFailed             a dataset went FAILED
    |   +-- JobFailed                 a training job went FAILED
    |   +-- RequestFailed             a model or serverless request finished as failed
    |   +-- RequestCancelled          a model or serverless request was cancelled
    |   +-- MachineFailed             a machine stopped or errored while starting
    +-- WaitTimeoutError              a client-side wait deadline passed
    +-- ComfyUIError                  a machine's ComfyUI refused a prompt or failed running it
    +-- ComfyUIWarning                a warning: ComfyUI runs a prompt without some of its outputs
    +-- WebhookError                  a webhook delivery was refused
        +-- InvalidWebhookError       the body is not a delivery (not JSON, no request id/status)
        +-- WebhookSecretError        the delivery's shared secret is missing or wrong

Messages name the problem and the fix. Where the fix is advice for Python code (an argument,
an environment variable, another call), it is kept apart in ``fix`` and ``problem`` holds the
rest: ``str(error)`` joins both, and the ``runcomfy`` command words its own advice for the shell.
None of them ever contains the API token.
"""

from __future__ import annotations

import builtins
from collections.abc import Mapping
from typing import Any, ClassVar

__all__ = [
    "APIError",
    "APITimeoutError",
    "AsyncUsageError",
    "AuthenticationError",
    "BadRequestError",
    "ClientClosedError",
    "ComfyUIError",
    "ComfyUIWarning",
    "ConfigError",
    "ConfigurationError",
    "ConflictError",
    "DatasetFailed",
    "DatasetValidationError",
    "DeploymentDeletedError",
    "DeploymentDisabledError",
    "DeploymentUnavailableError",
    "DownloadError",
    "InsufficientBalanceError",
    "InvalidWebhookError",
    "JobFailed",
    "MachineFailed",
    "ModelInputError",
    "NotFoundError",
    "OperationFailed",
    "OutcomeUnknownError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "RateLimitError",
    "RequestCancelled",
    "RequestFailed",
    "RunComfyError",
    "ServerError",
    "TransportError",
    "UnexpectedResponseError",
    "UnsentTimeoutError",
    "UnsentTransportError",
    "UploadError",
    "ValidationError",
    "WaitTimeoutError",
    "WebhookError",
    "WebhookSecretError",
    "WrongEventLoopError",
]


class RunComfyError(Exception):
    """Root of every error raised by runcomfy-async.

    Attributes:
        fix: what to do about it, worded for Python code ("pass ``exist_ok=True``..."); empty
            when the message already says it. ``str(error)`` ends with it.
    """

    fix: str = ""

    def __init__(self, *args: Any, fix: str | None = None) -> None:
        super().__init__(*args)
        if fix is not None:
            self.fix = fix

    @property
    def problem(self) -> str:
        """The message without :attr:`fix`: what went wrong (a CLI adds its own advice)."""
        return super().__str__()

    def __str__(self) -> str:
        problem = self.problem
        if not self.fix:
            return problem
        return f"{problem}\n{self.fix}" if "\n" in problem else f"{problem}; {self.fix}"


class ConfigurationError(RunComfyError):
    """The client is set up wrongly (missing token or user id, bad base URL)."""


class ClientClosedError(RunComfyError):
    """The client is closed (or was never opened) and cannot send requests."""


class AsyncUsageError(RunComfyError, TypeError):
    """An async API was used like a sync one: ``with RunComfy()`` instead of ``async with``, or
    the result of a call used without ``await`` (iterated, entered, or asked for an attribute).
    """


class WrongEventLoopError(RunComfyError):
    """The client was opened in one event loop and used from another."""


class ValidationError(RunComfyError, ValueError):
    """Input was refused on the client before any byte was sent."""


class DatasetValidationError(ValidationError):
    """A set of dataset files breaks the upload rules; ``problems`` lists every one."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        shown = "\n  - ".join(self.problems[:50])
        more = f"\n  ... and {len(self.problems) - 50} more" if len(self.problems) > 50 else ""
        super().__init__(
            f"{len(self.problems)} problem(s) in the dataset files; nothing was uploaded:"
            f"\n  - {shown}{more}"
        )


class ConfigError(ValidationError):
    """An AI Toolkit config that the training service would reject."""


class ModelInputError(ValidationError):
    """Model inputs fail the model's input schema (``validate=True``); nothing was sent.

    Attributes:
        model_id: the model whose schema refused them.
        problems: one line per problem, ``"seed: 'abc' is not of type 'integer'"``.
        valid: every input the schema lists, e.g. ``"prompt (string, required)"``.
    """

    def __init__(self, *, model_id: str, problems: list[str], valid: list[str]) -> None:
        self.model_id = model_id
        self.problems = list(problems)
        self.valid = list(valid)
        shown = "\n  - ".join(self.problems[:20])
        more = f"\n  ... and {len(self.problems) - 20} more" if len(self.problems) > 20 else ""
        listed = "; ".join(self.valid) if self.valid else "the schema lists none"
        super().__init__(
            f"{len(self.problems)} problem(s) in the inputs for model {model_id!r}; nothing was "
            f"sent:\n  - {shown}{more}\nvalid inputs: {listed}\nfix the inputs, or pass "
            "validate=False to let the service decide"
        )


class TransportError(RunComfyError):
    """No HTTP answer: the connection failed, was reset, or timed out."""

    fix = "check the network and try again"

    def __init__(self, message: str, *, method: str = "", url: str = "") -> None:
        self.method = method
        self.url = url
        super().__init__(message)


class APITimeoutError(TransportError, builtins.TimeoutError):
    """A connect, read or total timeout expired."""

    fix = "if the network is slow, give the client more time: RunComfy(timeout=...)"


class UnsentTransportError(TransportError):
    """The connection could not be opened: the request provably never left the machine."""


class UnsentTimeoutError(UnsentTransportError, APITimeoutError):
    """Connecting timed out: nothing was sent, so even a create may be tried again."""


class OutcomeUnknownError(TransportError):
    """A request that creates (and may bill) something was sent, but its answer was lost.

    The server may have queued it: it was not repeated, since a repeat could run and bill twice.
    ``check`` says where to look for what it made.
    """

    fix = ""  # "try again" would be wrong: the message says what to check first

    def __init__(self, message: str, *, method: str = "", url: str = "", check: str = "") -> None:
        self.check = check
        super().__init__(message, method=method, url=url)


class APIError(RunComfyError):
    """The server answered with an error status or an error body.

    Attributes:
        status: the HTTP status code.
        code: the API's ``error_code`` (int or string) when given.
        message: the API's human-readable message.
        detail: the API's ``detail`` (validation errors) when given.
        method: the HTTP method of the failed request.
        url: the request URL with any query secrets masked.
        request_id: the server's request id header when given.
        api_fix: the advice for this kind of answer from the API itself, worded for Python
            (a class attribute); the client makes it the ``fix`` of an API call's error. The
            same status from object storage or ComfyUI means something else and gets none.
    """

    api_fix: ClassVar[str] = ""

    def __init__(
        self,
        message: str,
        *,
        status: int,
        code: int | str | None = None,
        detail: Any = None,
        method: str = "",
        url: str = "",
        request_id: str | None = None,
    ) -> None:
        self.message = message
        self.status = status
        self.code = code
        self.detail = detail
        self.method = method
        self.url = url
        self.request_id = request_id
        where = f" ({method} {url})" if method else ""
        code_part = f" [{code}]" if code is not None else ""
        rid = f" request_id={request_id}" if request_id else ""
        super().__init__(f"HTTP {status}{code_part}: {message}{where}{rid}")


class BadRequestError(APIError):
    """400 or 422: the server found the request invalid."""

    api_fix = "fix the request as the message says"


class AuthenticationError(APIError):
    """401: the token is missing, wrong or expired; check RUNCOMFY_API_TOKEN."""

    api_fix = (
        "the token comes from RunComfy(token=...) or the RUNCOMFY_API_TOKEN environment "
        "variable; copy it from your runcomfy.com Profile page"
    )


class PermissionDeniedError(APIError):
    """403: the token may not access this resource."""

    api_fix = (
        "the token may not access this resource: use the token of the account that owns it"
    )


class InsufficientBalanceError(APIError):
    """402: the account balance is too low for a paid call; top it up on runcomfy.com."""

    #: What to do, added to the message.
    FIX = (
        "the account balance is too low for this call: add funds on runcomfy.com, then try "
        "again (await rc.account.balance() shows what is left)"
    )

    def __init__(self, message: str, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.args = (f"{self.args[0]}; {self.FIX}",)

    api_fix = "top up the account balance on runcomfy.com, then try again"


class NotFoundError(APIError):
    """404: the resource does not exist (or expired)."""

    api_fix = (
        "check the id (rc.datasets.list() and rc.machines.list() show what exists; ids of "
        "finished work may have expired)"
    )


class ConflictError(APIError):
    """409: the request conflicts with existing state (e.g. a dataset name in use)."""

    api_fix = "check the resource's current status; it does not allow this now"


class PayloadTooLargeError(APIError):
    """413: the body is larger than the endpoint accepts."""

    api_fix = "send less in one request (Dataset.upload sends large files by signed URL)"


class RateLimitError(APIError):
    """429 after every retry: the account's request rate limit was exceeded."""

    api_fix = (
        "lower RunComfy(rate=...), or share one limiter between the processes using this "
        "account (RedisTokenBucket)"
    )

    def __init__(self, message: str, *, retry_after: float | None = None, **kw: Any) -> None:
        self.retry_after = retry_after
        super().__init__(message, **kw)


class ServerError(APIError):
    """5xx after every retry: the service failed."""

    api_fix = "the service failed; try again later (RunComfy(max_retries=...) retries longer)"


class UnexpectedResponseError(APIError):
    """The body is not the JSON the API documents (an HTML proxy page, a cut body)."""

    api_fix = (
        "check that the base URL points at the RunComfy API (a proxy or another host answers "
        "HTML): RunComfy(trainer_url=..., model_url=..., server_url=...) or "
        "RUNCOMFY_TRAINER_URL / RUNCOMFY_MODEL_URL / RUNCOMFY_SERVER_URL"
    )


class DeploymentUnavailableError(APIError):
    """A serverless deployment refused inference: disabled or deleted (whatever the HTTP status)."""


class DeploymentDisabledError(DeploymentUnavailableError):
    """The deployment is disabled (10002): enable it with
    ``rc.deployments.update(deployment_id, is_enabled=True)`` before running requests."""


class DeploymentDeletedError(DeploymentUnavailableError):
    """The deployment was deleted (10003): create a new one and use its id."""


class UploadError(RunComfyError):
    """One or more files could not be uploaded; see ``report`` for each file's reason."""

    def __init__(self, message: str, *, report: Any = None) -> None:
        self.report = report
        super().__init__(message)


class DownloadError(RunComfyError):
    """One or more files could not be downloaded; ``report`` says which were written and which
    failed (a :class:`~runcomfy_async.types.downloads.DownloadReport`).

    The first file's own error is the ``__cause__``. Each failed file's ``.part`` is kept, so
    downloading again resumes it.
    """

    def __init__(self, message: str, *, report: Any = None) -> None:
        self.report = report
        super().__init__(message)


class OperationFailed(RunComfyError):
    """A remote operation reached a failed terminal state."""

    def __init__(
        self, message: str, *, error: Any = None, snapshot: Any = None, fix: str | None = None
    ) -> None:
        self.error = error
        self.snapshot = snapshot
        super().__init__(message, fix=fix)


class DatasetFailed(OperationFailed):
    """The dataset went FAILED; ``error`` holds the server's reason."""


class JobFailed(OperationFailed):
    """The training job went FAILED; ``error`` holds the server's reason."""


class RequestFailed(OperationFailed):
    """The model or serverless request finished as failed; ``error`` holds the server's reason."""


class RequestCancelled(OperationFailed):
    """The model or serverless request was cancelled before it produced output."""


class MachineFailed(OperationFailed):
    """The machine stopped or errored before it became Ready."""


class WaitTimeoutError(RunComfyError, builtins.TimeoutError):
    """A client-side deadline passed while waiting for a remote state."""


class ComfyUIError(RunComfyError):
    """ComfyUI refused a prompt (``node_errors`` says which node and why) or failed running it.

    Attributes:
        node_errors: ``{node_id: {"errors": [...], "class_type": ...}}`` from ``/prompt``.
        error: ComfyUI's ``error`` object, or the ``execution_error`` event's data.
        prompt_id: the prompt concerned, when there is one.
        status: the HTTP status of a refused request (None for execution failures).
    """

    def __init__(
        self,
        message: str,
        *,
        node_errors: Mapping[str, Any] | None = None,
        error: Any = None,
        prompt_id: str | None = None,
        status: int | None = None,
    ) -> None:
        self.node_errors = dict(node_errors or {})
        self.error = error
        self.prompt_id = prompt_id
        self.status = status
        super().__init__(message)


class ComfyUIWarning(RunComfyError, UserWarning):
    """ComfyUI accepted a prompt but refused some of its output nodes (a partly valid prompt).

    The valid outputs run; ``node_errors`` says which nodes were left out and why. Issued by
    ``ComfyUI.queue_prompt`` through :mod:`warnings`; ``ComfyUI.submit`` returns the same
    errors as data instead.

    Attributes:
        prompt_id: the prompt that runs.
        node_errors: ``{node_id: {"errors": [...], "dependent_outputs": [...], ...}}``.
    """

    def __init__(self, message: str, *, prompt_id: str, node_errors: Mapping[str, Any]) -> None:
        self.prompt_id = prompt_id
        self.node_errors = dict(node_errors)
        super().__init__(message)


class WebhookError(RunComfyError):
    """A webhook delivery was refused before any of it was acted on."""


class InvalidWebhookError(WebhookError, ValueError):
    """The body is not a delivery: not a JSON object, or no request id or status in it."""


class WebhookSecretError(WebhookError):
    """The delivery did not carry the shared secret the receiver was configured with."""
