"""A FastAPI backend on one RunComfy account: the recipe for several workers sharing one limit.

Each worker process opens one :class:`~runcomfy_async.RunComfy` in the app's lifespan and hands
it to the endpoints through a dependency (never a client per request, never one at import time:
a client belongs to the event loop it was opened in). With ``RUNCOMFY_REDIS_URL`` set, every
worker takes its rate-limit tokens from one :class:`~runcomfy_async.RedisTokenBucket`, so
``uvicorn --workers 4`` (or several machines) together stay within the account's 1 request/s;
without it each worker uses the in-process default, which is right for a single worker only.

Environment:
    RUNCOMFY_API_TOKEN, RUNCOMFY_USER_ID, RUNCOMFY_TRAINER_URL / _MODEL_URL / _SERVER_URL: read
        by ``RunComfy()`` itself.
    RUNCOMFY_REDIS_URL: e.g. ``redis://localhost:6379/0``; switches on the shared bucket.
    RUNCOMFY_REDIS_KEY: the bucket's key, one per account (default ``runcomfy:ratelimit:default``).
    RUNCOMFY_RATE, RUNCOMFY_BURST: the account's requests/s and the bucket's burst (1 and 2).
    RUNCOMFY_REDIS_ON_UNAVAILABLE: ``fallback`` (default: fail open, each worker keeps going at
        its share of the rate while Redis is away) or ``raise`` (fail closed: 502 until it is back).
    RUNCOMFY_WORKERS: how many workers share the account (default 4); a worker's share is
        RUNCOMFY_RATE / RUNCOMFY_WORKERS while Redis is away.
    RUNCOMFY_REDIS_RETRY_FOR: seconds to hold callers while Redis is retried (default 5).
    RUNCOMFY_UPLOAD_ROOT: the only server-side directory ``POST /datasets`` may upload folders
        from (default: the working directory).
    RUNCOMFY_WEBHOOK_URL, RUNCOMFY_WEBHOOK_SECRET, RUNCOMFY_WEBHOOK_POLL_AFTER: serverless runs
        answered by webhook (``POST /runs``, ``POST /runcomfy/webhook``); see serverless_runs.py.

Run: ``uvicorn examples.fastapi_app.main:app --workers 4`` (see README.md beside this file).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

import attrs
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from pydantic import ValidationError as PydanticValidationError
from starlette.datastructures import UploadFile

from runcomfy_async import (
    APIError,
    APITimeoutError,
    BadRequestError,
    ConflictError,
    Dataset,
    DatasetValidationError,
    Limiter,
    NotFoundError,
    OperationFailed,
    PayloadTooLargeError,
    RateLimitError,
    RedisTokenBucket,
    RequestCancelled,
    RunComfy,
    RunComfyError,
    TokenBucket,
    TransportError,
    UploadError,
    UploadReport,
    ValidationError,
    WaitTimeoutError,
)
from runcomfy_async.webhooks.fastapi import webhook_router

from .serverless_runs import open_runs
from .serverless_runs import router as runs_router

__all__ = ["app"]


def _limiter_from_env() -> Limiter:
    """The shared Redis bucket when ``RUNCOMFY_REDIS_URL`` is set, else an in-process one."""
    rate = float(os.environ.get("RUNCOMFY_RATE", "1"))
    burst = int(os.environ.get("RUNCOMFY_BURST", "2"))
    url = os.environ.get("RUNCOMFY_REDIS_URL")
    if not url:
        return TokenBucket(rate, burst)
    key = os.environ.get("RUNCOMFY_REDIS_KEY", "runcomfy:ratelimit:default")
    on_unavailable = os.environ.get("RUNCOMFY_REDIS_ON_UNAVAILABLE", "fallback")
    if on_unavailable not in ("fallback", "raise"):
        raise RuntimeError("RUNCOMFY_REDIS_ON_UNAVAILABLE must be 'fallback' or 'raise'")
    return RedisTokenBucket(
        url,
        key=key,
        rate=rate,
        burst=burst,
        on_unavailable="raise" if on_unavailable == "raise" else "fallback",
        workers=int(os.environ.get("RUNCOMFY_WORKERS", "4")),
        retry_for=float(os.environ.get("RUNCOMFY_REDIS_RETRY_FOR", "5")),
    )


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Open this worker's client, shared limiter and webhook receiver; close them at shutdown."""
    limiter = _limiter_from_env()
    try:
        async with RunComfy(limiter=limiter) as client, open_runs(client) as runs:
            app.state.runcomfy = client
            app.state.runs = runs
            yield
    finally:
        await limiter.aclose()  # passed in, so the client leaves closing it to us


app = FastAPI(title="runcomfy-async FastAPI example", lifespan=lifespan)
app.include_router(runs_router)
app.include_router(webhook_router(lambda request: request.app.state.runs.receiver))


def get_runcomfy(request: Request) -> RunComfy:
    """The worker's one client, opened in the lifespan."""
    client: RunComfy = request.app.state.runcomfy
    return client


Client = Annotated[RunComfy, Depends(get_runcomfy)]


def _plain(snapshot: Any) -> Any:
    """An attrs snapshot (enums, datetimes, tuples) as JSON-ready data."""
    return jsonable_encoder(attrs.asdict(snapshot))


# -- errors: every RunComfyError becomes an HTTP answer naming the problem ------------------

# Most specific class first wins (looked up along the exception's MRO).
_HTTP_STATUS: dict[type[RunComfyError], int] = {
    DatasetValidationError: 422,
    ValidationError: 422,  # bad input, refused before anything was sent
    BadRequestError: 422,  # the service refused the caller's input
    NotFoundError: 404,
    ConflictError: 409,
    PayloadTooLargeError: 413,
    RateLimitError: 503,  # the account limit, after the client's own retries
    APITimeoutError: 504,
    WaitTimeoutError: 504,
    RequestCancelled: 409,
    OperationFailed: 422,  # the dataset / job / model run itself failed
    UploadError: 502,
    TransportError: 502,
    APIError: 502,  # auth, balance, 5xx: the upstream's problem, not the caller's
}


@app.exception_handler(RunComfyError)
async def runcomfy_error(request: Request, exc: RunComfyError) -> JSONResponse:
    """Map the library's exception tree to HTTP statuses (500 for anything unforeseen)."""
    status = next((_HTTP_STATUS[c] for c in type(exc).__mro__ if c in _HTTP_STATUS), 500)
    # `problem`, not str(exc): the error's `fix` is advice for the Python code of this app,
    # not for its HTTP callers.
    body: dict[str, Any] = {"error": type(exc).__name__, "detail": exc.problem}
    if isinstance(exc, DatasetValidationError):
        body["problems"] = exc.problems
    headers = None
    if isinstance(exc, RateLimitError) and exc.retry_after is not None:
        headers = {"Retry-After": str(max(1, round(exc.retry_after)))}
    return JSONResponse(body, status_code=status, headers=headers)


# -- endpoints ------------------------------------------------------------------------------


@app.get("/healthz", response_model=None)
async def healthz(rc: Client) -> dict[str, Any] | JSONResponse:
    """Readiness probe: 503 only while the shared limit fails closed; makes no API call."""
    if not isinstance(rc.limiter, RedisTokenBucket):
        return {"ready": True, "limiter": "local"}
    health = await rc.limiter.health()
    body = {
        "ready": health.ready,
        "limiter": health.state.value,
        "redis_reachable": health.redis_reachable,
        "down_for": health.down_for,
    }
    return body if health.ready else JSONResponse(body, status_code=503)


@app.get("/ping-api")
async def ping_api(rc: Client) -> dict[str, int]:
    """Exactly one API call (list datasets): a cheap probe of the shared rate limit."""
    return {"datasets": len(await rc.datasets.list())}


class FolderUpload(BaseModel):
    """``POST /datasets`` as JSON: a dataset made from a folder on this server."""

    name: str
    folder: str = Field(description="a directory under RUNCOMFY_UPLOAD_ROOT")


def _inside_upload_root(folder: str) -> Path:
    """The folder, resolved, refused unless it lies under RUNCOMFY_UPLOAD_ROOT."""
    root = Path(os.environ.get("RUNCOMFY_UPLOAD_ROOT", ".")).resolve()
    path = (root / folder).resolve()
    if not path.is_relative_to(root) or not path.is_dir():
        raise HTTPException(422, f"folder {folder!r} is not a directory under the upload root")
    return path


def _save_uploads(files: list[UploadFile], directory: Path) -> list[Path]:
    """Copy uploaded form files into ``directory`` (blocking: run in a thread)."""
    paths = []
    for upload in files:
        name = Path(upload.filename or "").name
        if not name or name.startswith("."):
            raise HTTPException(422, f"bad file name {upload.filename!r}")
        path = directory / name
        with path.open("wb") as out:
            shutil.copyfileobj(upload.file, out, 1 << 20)
        paths.append(path)
    return paths


async def _new_dataset(
    rc: RunComfy, name: str, upload: Callable[[Dataset], Awaitable[UploadReport]]
) -> dict[str, Any]:
    """Create a dataset and upload into it; one refused by validation is deleted again.

    ``upload`` passes ``check=False``: files that could not be stored are answered in
    ``failed`` (the client may send them again) instead of failing the whole request.
    """
    dataset = await rc.datasets.create(name)
    try:
        report = await upload(dataset)
    except DatasetValidationError:
        await dataset.delete()  # nothing was sent: don't leave an empty DRAFT behind
        raise
    return {
        "id": dataset.id,
        "name": dataset.name,
        "uploaded": [f.filename for f in report.uploaded],
        "failed": {f.filename: f.message for f in report.failed},
    }


@app.post("/datasets", status_code=201)
async def create_dataset(request: Request, rc: Client) -> dict[str, Any]:
    """Create a dataset and upload to it.

    Either ``multipart/form-data`` with a ``name`` field and one or more ``files`` (image and
    caption files), or JSON ``{"name": ..., "folder": ...}`` naming a directory on this server.
    Answers once the files are stored; ``GET /datasets/{id}`` follows its processing to READY.
    """
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        async with request.form() as form:
            name = form.get("name")
            files = [f for f in form.getlist("files") if isinstance(f, UploadFile)]
            if not isinstance(name, str) or not files:
                raise HTTPException(422, "send a 'name' field and at least one 'files' part")
            with tempfile.TemporaryDirectory(prefix="runcomfy-upload-") as tmp:
                paths = await asyncio.to_thread(_save_uploads, files, Path(tmp))
                return await _new_dataset(rc, name, lambda ds: ds.upload(*paths, check=False))
    try:
        body = FolderUpload.model_validate_json(await request.body())
    except PydanticValidationError as exc:
        raise RequestValidationError(exc.errors()) from exc
    folder = _inside_upload_root(body.folder)
    return await _new_dataset(
        rc, body.name, lambda ds: ds.upload_folder(folder, verify=False, check=False)
    )


@app.get("/datasets/{dataset_id}")
async def get_dataset(dataset_id: str, rc: Client) -> Any:
    """The dataset's current status and files."""
    return _plain(await rc.datasets.get(dataset_id).status())


class JobSubmission(BaseModel):
    """``POST /jobs``: an AI Toolkit config (YAML text or the parsed mapping)."""

    config: str | dict[str, Any]
    gpu_type: str = "H100"


@app.post("/jobs", status_code=201)
async def submit_job(body: JobSubmission, rc: Client) -> dict[str, Any]:
    """Check the config (mounted datasets must be READY) and submit a training job."""
    job = await rc.jobs.submit(body.config, gpu_type=body.gpu_type)
    return {"id": job.id, "name": job.name}


@app.get("/jobs/{job_id}")
async def get_job(job_id: str, rc: Client) -> Any:
    """The job's current status and progress."""
    return _plain(await rc.jobs.get(job_id).status())


class Generation(BaseModel):
    """``POST /generate``: a model request, awaited for at most ``timeout`` seconds."""

    model_id: str
    inputs: dict[str, Any]
    timeout: float = Field(default=60.0, gt=0, le=600)


@app.post("/generate", response_model=None)
async def generate(body: Generation, rc: Client) -> dict[str, Any] | JSONResponse:
    """Submit a model request and wait for its output; 504 (with the request id) on timeout.

    The request keeps running after a 504: ``GET /generate/{request_id}`` reports it later.
    """
    request = await rc.models.submit(body.model_id, body.inputs)
    try:
        result = await request.wait(timeout=body.timeout)
    except WaitTimeoutError:
        return JSONResponse(
            {
                "error": "WaitTimeoutError",
                "detail": f"no result within {body.timeout:g} s; the request is still running",
                "request_id": request.id,
            },
            status_code=504,
        )
    return {"request_id": request.id, "output": result.output}


@app.get("/generate/{request_id}")
async def get_generation(request_id: str, rc: Client) -> Any:
    """Where a model request is (queued, running, finished)."""
    return _plain(await rc.models.get(request_id).status())
