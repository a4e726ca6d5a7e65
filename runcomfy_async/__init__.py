"""runcomfy-async: the asyncio-native client for RunComfy's cloud APIs.

``async with RunComfy() as rc:`` opens a client; its collections (``rc.datasets``, ...) return
awaitable handles. ``runcomfy_async.testing.Emulator`` serves the same APIs locally for tests.
"""

from ._client import ClientState, RunComfy
from ._limiter import Limiter, Priority, TokenBucket
from ._polling import PollPolicy
from ._retry import RetryPolicy
from ._transport import Timeouts
from ._version import __version__
from .errors import (
    APIError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ClientClosedError,
    ConfigError,
    ConfigurationError,
    ConflictError,
    DatasetFailed,
    DatasetValidationError,
    InsufficientBalanceError,
    JobFailed,
    MachineFailed,
    NotFoundError,
    OperationFailed,
    PayloadTooLargeError,
    PermissionDeniedError,
    RateLimitError,
    RequestCancelled,
    RequestFailed,
    RunComfyError,
    ServerError,
    TransportError,
    UnexpectedResponseError,
    UploadError,
    ValidationError,
    WaitTimeoutError,
    WrongEventLoopError,
)

__all__ = [
    "APIError",
    "APITimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "ClientClosedError",
    "ClientState",
    "ConfigError",
    "ConfigurationError",
    "ConflictError",
    "DatasetFailed",
    "DatasetValidationError",
    "InsufficientBalanceError",
    "JobFailed",
    "Limiter",
    "MachineFailed",
    "NotFoundError",
    "OperationFailed",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "PollPolicy",
    "Priority",
    "RateLimitError",
    "RequestCancelled",
    "RequestFailed",
    "RetryPolicy",
    "RunComfy",
    "RunComfyError",
    "ServerError",
    "Timeouts",
    "TokenBucket",
    "TransportError",
    "UnexpectedResponseError",
    "UploadError",
    "ValidationError",
    "WaitTimeoutError",
    "WrongEventLoopError",
    "__version__",
]
