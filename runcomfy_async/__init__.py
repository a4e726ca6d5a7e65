"""runcomfy-async: the asyncio-native client for RunComfy's cloud APIs.

``async with RunComfy() as rc:`` opens a client; its collections (``rc.datasets``, ...) return
awaitable handles. ``runcomfy_async.testing.Emulator`` serves the same APIs locally for tests.
"""

from ._client import ClientState, RunComfy
from ._converter import to_jsonable
from ._limiter import Limiter, Priority, TokenBucket
from ._polling import PollPolicy
from ._redis_limiter import LimiterHealth, RedisTokenBucket, SharedLimitState
from ._retry import RetryPolicy
from ._rules import DATASETS_ROOT, TRAINING_FOLDER
from ._transport import Timeouts
from ._version import __version__
from .errors import (
    APIError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ClientClosedError,
    ComfyUIError,
    ConfigError,
    ConfigurationError,
    ConflictError,
    DatasetFailed,
    DatasetValidationError,
    DownloadError,
    InsufficientBalanceError,
    JobFailed,
    MachineFailed,
    ModelInputError,
    NotFoundError,
    OperationFailed,
    OutcomeUnknownError,
    PayloadTooLargeError,
    PermissionDeniedError,
    RateLimitError,
    RequestCancelled,
    RequestFailed,
    RunComfyError,
    ServerError,
    TransportError,
    UnexpectedResponseError,
    UnsentTimeoutError,
    UnsentTransportError,
    UploadError,
    ValidationError,
    WaitTimeoutError,
    WrongEventLoopError,
)
from .resources.account import Account
from .resources.comfyui import ComfyUI
from .resources.datasets import Dataset, Datasets
from .resources.jobs import Jobs, TrainingJob
from .resources.machines import Machine, Machines
from .resources.model_requests import ModelRequest, Models
from .types.account import Balance
from .types.catalog import ModelInfo
from .types.datasets import DatasetFile, DatasetInfo, DatasetStatus
from .types.downloads import DownloadReport, FailedDownload
from .types.jobs import ARTIFACT_KINDS, Artifact, GPUType, JobResult, JobState, JobStatus, Progress
from .types.machines import ComfyEvent, ComfyFile, MachineInfo, MachineStatus, ServerType, Workflow
from .types.models import (
    CancelOutcome,
    Lora,
    RequestResult,
    RequestState,
    RequestStatus,
    ResultStatus,
)
from .types.progress import DownloadProgress, ProgressCallback
from .types.uploads import (
    BytesSent,
    FailureReason,
    FileDone,
    FileFailed,
    FileResult,
    FileRetrying,
    FileStarted,
    UploadEvent,
    UploadMethod,
    UploadPlanned,
    UploadReport,
)

__all__ = [
    "ARTIFACT_KINDS",
    "DATASETS_ROOT",
    "TRAINING_FOLDER",
    "APIError",
    "APITimeoutError",
    "Account",
    "Artifact",
    "AuthenticationError",
    "BadRequestError",
    "Balance",
    "BytesSent",
    "CancelOutcome",
    "ClientClosedError",
    "ClientState",
    "ComfyEvent",
    "ComfyFile",
    "ComfyUI",
    "ComfyUIError",
    "ConfigError",
    "ConfigurationError",
    "ConflictError",
    "Dataset",
    "DatasetFailed",
    "DatasetFile",
    "DatasetInfo",
    "DatasetStatus",
    "DatasetValidationError",
    "Datasets",
    "DownloadError",
    "DownloadProgress",
    "DownloadReport",
    "FailedDownload",
    "FailureReason",
    "FileDone",
    "FileFailed",
    "FileResult",
    "FileRetrying",
    "FileStarted",
    "GPUType",
    "InsufficientBalanceError",
    "JobFailed",
    "JobResult",
    "JobState",
    "JobStatus",
    "Jobs",
    "Limiter",
    "LimiterHealth",
    "Lora",
    "Machine",
    "MachineFailed",
    "MachineInfo",
    "MachineStatus",
    "Machines",
    "ModelInfo",
    "ModelInputError",
    "ModelRequest",
    "Models",
    "NotFoundError",
    "OperationFailed",
    "OutcomeUnknownError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "PollPolicy",
    "Priority",
    "Progress",
    "ProgressCallback",
    "RateLimitError",
    "RedisTokenBucket",
    "RequestCancelled",
    "RequestFailed",
    "RequestResult",
    "RequestState",
    "RequestStatus",
    "ResultStatus",
    "RetryPolicy",
    "RunComfy",
    "RunComfyError",
    "ServerError",
    "ServerType",
    "SharedLimitState",
    "Timeouts",
    "TokenBucket",
    "TrainingJob",
    "TransportError",
    "UnexpectedResponseError",
    "UnsentTimeoutError",
    "UnsentTransportError",
    "UploadError",
    "UploadEvent",
    "UploadMethod",
    "UploadPlanned",
    "UploadReport",
    "ValidationError",
    "WaitTimeoutError",
    "Workflow",
    "WrongEventLoopError",
    "__version__",
    "to_jsonable",
]
