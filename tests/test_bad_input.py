"""The bad-input catalogue (docs/reliability.md): each mistake is refused before anything is sent.

Every case raises its specific exception, whose message names the problem and the fix; the
emulator's log shows no API request after the mistake (look-ups that detect it excepted), and a
dataset uploaded earlier still holds every file.
"""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import attrs
import pytest
import pytest_asyncio

from runcomfy_async import Deployment, DeploymentInfo, DeploymentPayload, errors
from runcomfy_async._client import RunComfy
from runcomfy_async.resources.datasets import Dataset
from runcomfy_async.testing import Emulator
from runcomfy_async.testing._deployments import serverless_workflow
from runcomfy_async.types.uploads import FailureReason, FileStarted, UploadEvent

API_HOSTS = ("trainer", "model", "server")
DOCS = Path(__file__).resolve().parent.parent / "docs" / "reliability.md"

CONFIG: dict[str, Any] = {
    "job": "extension",
    "config": {
        "name": "bad_input",
        "process": [
            {
                "type": "sd_trainer",
                "training_folder": "/app/ai-toolkit/output",
                "datasets": [{"folder_path": "/app/ai-toolkit/datasets/kept"}],
                "train": {"steps": 10},
            }
        ],
    },
}


def config_with(**changes: Any) -> dict[str, Any]:
    """CONFIG with the first process's keys changed (``None`` removes a key)."""
    process = dict(CONFIG["config"]["process"][0])
    for key, value in changes.items():
        if value is None:
            process.pop(key, None)
        else:
            process[key] = value
    return {"job": "extension", "config": {"name": "bad_input", "process": [process]}}


@attrs.frozen
class Ctx:
    """What a case may use: the emulator, an open client, a scratch folder, a kept dataset."""

    emu: Emulator
    rc: RunComfy
    tmp: Path
    kept: Dataset
    monkeypatch: pytest.MonkeyPatch


Action = Callable[[Ctx], Awaitable[Any]]


@attrs.frozen
class Case:
    """One catalogue row: the mistake, the exception, what the message must say."""

    kind: str
    example: str
    error: type[Exception]
    says: tuple[str, ...]
    act: Action
    #: API requests that may follow the mistake because they are how it is detected
    allowed: tuple[str, ...] = ()


CASES: list[Case] = []


def case(
    kind: str,
    example: str,
    error: type[Exception],
    *says: str,
    allowed: tuple[str, ...] = (),
) -> Callable[[Action], Action]:
    """Register an action as a catalogue case."""

    def register(act: Action) -> Action:
        CASES.append(Case(kind, example, error, says, act, allowed))
        return act

    return register


def files(root: Path, **content: bytes | str) -> Path:
    """A folder holding the named files (``dot_`` prefix -> a leading dot)."""
    root.mkdir(parents=True, exist_ok=True)
    for name, data in content.items():
        path = root / name.replace("dot_", ".").replace("__", ".")
        if isinstance(data, str):
            path.write_text(data)
        else:
            path.write_bytes(data)
    return root


# -- client set-up -----------------------------------------------------------------------------


@case("missing token", "RunComfy() without RUNCOMFY_API_TOKEN", errors.ConfigurationError,
      "no API token", "RUNCOMFY_API_TOKEN")
async def _missing_token(ctx: Ctx) -> None:
    ctx.monkeypatch.delenv("RUNCOMFY_API_TOKEN", raising=False)
    RunComfy(trainer_url=ctx.emu.url)


@case("token with whitespace or newline", "RunComfy(token=token + '\\n')",
      errors.ConfigurationError, "whitespace or a newline", "strip it")
async def _token_newline(ctx: Ctx) -> None:
    RunComfy(token=ctx.emu.token + "\n", trainer_url=ctx.emu.url)


@case("plain http base URL for a non-loopback host",
      "RunComfy(trainer_url='http://trainer-api.runcomfy.net')", errors.ConfigurationError,
      "plain http", "use https")
async def _plain_http(ctx: Ctx) -> None:
    RunComfy(token=ctx.emu.token, trainer_url="http://trainer-api.runcomfy.net")


@case("credentials in a base URL", "RunComfy(model_url='https://me:pw@model-api.runcomfy.net')",
      errors.ConfigurationError, "must not contain credentials", "scheme://host")
async def _url_credentials(ctx: Ctx) -> None:
    RunComfy(token=ctx.emu.token, model_url="https://me:pw@model-api.runcomfy.net")


@case("missing user id", "rc.machines.workflows() without RUNCOMFY_USER_ID",
      errors.ConfigurationError, "needs your user id", "RUNCOMFY_USER_ID")
async def _missing_user_id(ctx: Ctx) -> None:
    ctx.monkeypatch.delenv("RUNCOMFY_USER_ID", raising=False)
    async with ctx.emu.client(user_id=None) as rc:
        await rc.machines.workflows()


@case("awaiting a closed client", "rc.datasets.list() after the async with block",
      errors.ClientClosedError, "is closed", "create a new one")
async def _closed_client(ctx: Ctx) -> None:
    async with ctx.emu.client() as rc:
        pass
    await rc.datasets.list()


@case("awaiting a handle of a closed client", "await rc.models.get(id) after closing",
      errors.ClientClosedError, "is closed", "create a new one")
async def _closed_handle(ctx: Ctx) -> None:
    async with ctx.emu.client() as rc:
        request = rc.models.get("req-1")
    await request


@case("using a client never opened", "RunComfy(...).datasets.list() without async with",
      errors.ClientClosedError, "not open", "async with RunComfy()")
async def _unopened(ctx: Ctx) -> None:
    await ctx.emu.client().datasets.list()


@case("wrong token", "RunComfy(token='rc_wrong')", errors.AuthenticationError,
      "HTTP 401", "RunComfy(token=...)", "RUNCOMFY_API_TOKEN",
      allowed=("GET /prod/v1/trainers/datasets",))
async def _wrong_token(ctx: Ctx) -> None:
    async with ctx.emu.client(token="rc_wrong") as rc:
        await rc.datasets.list()


@case("unreachable host", "RUNCOMFY_TRAINER_URL pointing where nothing listens",
      errors.UnsentTransportError, "could not connect", "trainer_url=", "RUNCOMFY_TRAINER_URL")
async def _unreachable(ctx: Ctx) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}"
    ctx.monkeypatch.setenv("RUNCOMFY_TRAINER_URL", closed)
    async with ctx.emu.client(trainer_url=None, max_retries=0) as rc:
        await rc.datasets.list()


@case("sync with", "with RunComfy() as rc:", errors.AsyncUsageError,
      "use `async with RunComfy() as rc:`", "asyncio.run")
async def _sync_with(ctx: Ctx) -> None:
    with ctx.emu.client():
        pass


@case("forgotten await", "ds = rc.datasets.create('dogs'); ds.upload_folder(...)",
      errors.AsyncUsageError, "asked for .upload_folder without `await`",
      "write `await rc.datasets.create(...)`")
async def _forgotten_await(ctx: Ctx) -> None:
    ds = ctx.rc.datasets.create("dogs")
    await ds.upload_folder(ctx.tmp)  # type: ignore[attr-defined]


@case("iterating an un-awaited list", "for info in rc.datasets.list():", errors.AsyncUsageError,
      "iterated without `await`", "`await rc.datasets.list()`")
async def _iterate_unawaited(ctx: Ctx) -> None:
    for _ in ctx.rc.datasets.list():  # type: ignore[attr-defined]
        pass


@case("async with an un-awaited launch", "async with rc.machines.launch(v) as machine:",
      errors.AsyncUsageError, "entered with `async with` without `await`",
      "`await rc.machines.launch(...)`")
async def _enter_unawaited(ctx: Ctx) -> None:
    async with ctx.rc.machines.launch("v-1"):  # type: ignore[attr-defined]
        pass


@case("an un-awaited result tested for truth", "if rc.datasets.find('dogs'):",
      errors.AsyncUsageError, "tested for truth", "`await rc.datasets.find(...)`")
async def _truth_unawaited(ctx: Ctx) -> None:
    assert not ctx.rc.datasets.find("dogs")


# -- dataset files -----------------------------------------------------------------------------


@case("nonexistent path", "ds.upload_folder('./dogz')", errors.DatasetValidationError,
      "is not a folder", "pass the folder")
async def _no_folder(ctx: Ctx) -> None:
    await ctx.kept.upload_folder(ctx.tmp / "dogz")


@case("nonexistent file", "ds.upload('dog.jpg') for a missing file",
      errors.DatasetValidationError, "missing.jpg", "cannot read it", "remove it")
async def _no_file(ctx: Ctx) -> None:
    await ctx.kept.upload(ctx.tmp / "missing.jpg")


@case("a folder with no media", "a folder holding only .DS_Store", errors.DatasetValidationError,
      "holds no files to upload", "put the images")
async def _empty_folder(ctx: Ctx) -> None:
    await ctx.kept.upload_folder(files(ctx.tmp / "empty", dot_DS_Store=b"\0"))


@case("image without caption", "dog_02.jpg with no dog_02.txt", errors.DatasetValidationError,
      "b.jpg: no caption b.txt", "write one")
async def _no_caption(ctx: Ctx) -> None:
    await ctx.kept.upload_folder(files(ctx.tmp / "d", a__jpg=b"1", a__txt="a", b__jpg=b"2"))


@case("orphan caption", "dog_03.txt with no dog_03 image", errors.DatasetValidationError,
      "c.txt: caption without an image or video", "add the media or remove it")
async def _orphan_caption(ctx: Ctx) -> None:
    await ctx.kept.upload_folder(files(ctx.tmp / "d", a__jpg=b"1", a__txt="a", c__txt="c"))


@case("unsupported extension", "dog.psd", errors.DatasetValidationError,
      "x.psd: unsupported file type", "remove or convert it")
async def _bad_extension(ctx: Ctx) -> None:
    await ctx.kept.upload_folder(files(ctx.tmp / "d", x__psd=b"8BPS", x__txt="x"))


@case("zero-byte file", "an empty dog.jpg", errors.DatasetValidationError,
      "a.jpg: the file is empty", "remove it or write its content")
async def _empty_file(ctx: Ctx) -> None:
    await ctx.kept.upload_folder(files(ctx.tmp / "d", a__jpg=b"", a__txt="a"))


@case("duplicate names differing in case", "Dog.jpg and dog.jpg", errors.DatasetValidationError,
      "differ only in case", "rename one")
async def _case_clash(ctx: Ctx) -> None:
    folder = files(ctx.tmp / "d", Dog__jpg=b"1", Dog__txt="D", dog__jpg=b"2", dog__txt="d")
    await ctx.kept.upload_folder(folder)


@case("a subfolder in a dataset folder", "dogs/extra/", errors.DatasetValidationError,
      "is a subfolder", "move its files up or remove it")
async def _subfolder(ctx: Ctx) -> None:
    folder = files(ctx.tmp / "d", a__jpg=b"1", a__txt="a")
    (folder / "extra").mkdir()
    await ctx.kept.upload_folder(folder)


@case("concurrency below one", "upload_folder(..., concurrency=0)", errors.ValidationError,
      "concurrency must be an int >= 1", "files in flight")
async def _zero_concurrency(ctx: Ctx) -> None:
    await ctx.kept.upload_folder(files(ctx.tmp / "d", a__jpg=b"1", a__txt="a"), concurrency=0)


@case("dataset name already taken", "rc.datasets.create('kept') a second time",
      errors.ConflictError, "already exists", "exist_ok=True", "rc.datasets.find('kept')",
      allowed=("POST /prod/v1/trainers/datasets",))
async def _name_taken(ctx: Ctx) -> None:
    await ctx.rc.datasets.create("kept")


@case("dataset name with surrounding whitespace", "rc.datasets.create(' dogs ')",
      errors.ValidationError, "surrounding whitespace", "pass a plain name")
async def _padded_name(ctx: Ctx) -> None:
    await ctx.rc.datasets.create(" dogs ")


# -- training configs --------------------------------------------------------------------------


@case("config not YAML", "rc.jobs.submit('job: [extension')", errors.ConfigError,
      "not valid YAML at line", "fix the YAML there")
async def _not_yaml(ctx: Ctx) -> None:
    await ctx.rc.jobs.submit("job: extension\nconfig: [unclosed\n")


@case("config missing training_folder", "a process without training_folder", errors.ConfigError,
      "training_folder is None", "set it to '/app/ai-toolkit/output'")
async def _no_training_folder(ctx: Ctx) -> None:
    await ctx.rc.jobs.submit(config_with(training_folder=None))


@case("wrong folder_path", "folder_path: /data/dogs", errors.ConfigError,
      "folder_path is '/data/dogs'", "set it to '/app/ai-toolkit/datasets/<dataset name>'")
async def _wrong_folder_path(ctx: Ctx) -> None:
    await ctx.rc.jobs.submit(config_with(datasets=[{"folder_path": "/data/dogs"}]))


@case("dataset not READY", "a config mounting a DRAFT dataset", errors.ConfigError,
      "'drafty' is DRAFT, not READY", "wait for it", allowed=("GET /prod/v1/trainers/datasets",))
async def _not_ready(ctx: Ctx) -> None:
    config = config_with(datasets=[{"folder_path": "/app/ai-toolkit/datasets/drafty"}])
    await ctx.rc.jobs.submit(config)


@case("dataset that does not exist", "a config mounting 'catz'", errors.ConfigError,
      "no dataset named 'catz'", "create and upload it",
      allowed=("GET /prod/v1/trainers/datasets",))
async def _unknown_dataset(ctx: Ctx) -> None:
    config = config_with(datasets=[{"folder_path": "/app/ai-toolkit/datasets/catz"}])
    await ctx.rc.jobs.submit(config)


@case("unknown gpu_type", "rc.jobs.submit(config, gpu_type='h100-80gb')", errors.ValidationError,
      "unknown gpu_type 'h100-80gb'", "GPUType.H100")
async def _bad_gpu(ctx: Ctx) -> None:
    await ctx.rc.jobs.submit(CONFIG, gpu_type="h100-80gb")


# -- model requests ----------------------------------------------------------------------------


@case("empty model id", "rc.models.submit('', inputs)", errors.ValidationError,
      "model_id must be a non-empty string", "copy it from the model's API page")
async def _empty_model(ctx: Ctx) -> None:
    await ctx.rc.models.submit("", {"prompt": "a dog"})


@case("malformed model id", "rc.models.submit('acme//flux/', inputs)", errors.ValidationError,
      "is malformed", "joined by single slashes")
async def _bad_model(ctx: Ctx) -> None:
    await ctx.rc.models.submit("acme//flux/", {"prompt": "a dog"})


@case("inputs JSON cannot carry", "{'seed': float('nan')}", errors.ValidationError,
      "input 'seed' cannot be sent as JSON", "pass strings, numbers")
async def _nan_inputs(ctx: Ctx) -> None:
    await ctx.rc.models.submit("acme/flux/dev", {"seed": float("nan")})


@case("model inputs failing their schema", "submit(id, {'promt': 'a dog'}, validate=True)",
      errors.ModelInputError, "promt: not an input of this model (did you mean 'prompt'?)",
      "prompt: required input missing", "valid inputs: image_url (string, required)",
      allowed=("GET /v1/models/blackforestlabs/flux-1-kontext/pro/edit",))
async def _schema_inputs(ctx: Ctx) -> None:
    flux = "blackforestlabs/flux-1-kontext/pro/edit"
    await ctx.rc.models.submit(flux, {"promt": "a dog"}, validate=True)


@case("blank catalog filter", "rc.models.catalog(search='')", errors.ValidationError,
      "search must be a non-blank string or None")
async def _blank_search(ctx: Ctx) -> None:
    ctx.rc.models.catalog(search="")


@case("blank gpu_id", "rc.jobs.submit(config, gpu_id=' ')", errors.ValidationError,
      "gpu_id must be a non-blank string", "or None")
async def _blank_gpu_id(ctx: Ctx) -> None:
    await ctx.rc.jobs.submit(CONFIG, gpu_id=" ")


# -- machines ----------------------------------------------------------------------------------


@case("negative estimated_duration", "launch(v, estimated_duration=-60)", errors.ValidationError,
      "estimated_duration must be a positive whole number of seconds", "3600")
async def _negative_duration(ctx: Ctx) -> None:
    await ctx.rc.machines.launch("v-1", estimated_duration=-60)


@case("zero estimated_duration", "launch(v, estimated_duration=0)", errors.ValidationError,
      "estimated_duration must be a positive whole number of seconds", "got 0")
async def _zero_duration(ctx: Ctx) -> None:
    await ctx.rc.machines.launch("v-1", estimated_duration=0)


@case("unknown server_type", "launch(v, server_type='huge')", errors.ValidationError,
      "unknown server_type 'huge'", "use one of 'medium'")
async def _bad_server_type(ctx: Ctx) -> None:
    await ctx.rc.machines.launch("v-1", server_type="huge")


# -- serverless deployments ----------------------------------------------------------------------


def _known_deployment(ctx: Ctx) -> Deployment:
    """A deployment handle whose deployed workflow is known (as after fetch(includes=payload))."""
    info = DeploymentInfo(
        id="dep-1", payload=DeploymentPayload(workflow_api_json=serverless_workflow())
    )
    return Deployment(ctx.rc, "dep-1", info=info)


@case("override naming an unknown node", "dep.submit({'99': {'inputs': {'text': 'x'}}})",
      errors.ValidationError, "node 99 is not in the deployment's workflow",
      "6 (CLIPTextEncode)")
async def _unknown_node(ctx: Ctx) -> None:
    await _known_deployment(ctx).submit({"99": {"inputs": {"text": "x"}}})


@case("override naming an unknown input", "dep.submit({'6': {'inputs': {'prompt': 'x'}}})",
      errors.ValidationError, "has no input 'prompt'", "its inputs are clip, text")
async def _unknown_input(ctx: Ctx) -> None:
    await _known_deployment(ctx).submit({"6": {"inputs": {"prompt": "x"}}})


@case("inline media file too large", "dep.submit({'10': {'inputs': {'image': Path('big.png')}}})",
      errors.ValidationError, "too large to send inline", "pass its https URL")
async def _media_too_large(ctx: Ctx) -> None:
    big = ctx.tmp / "big.png"
    with big.open("wb") as handle:
        handle.truncate(21 * 1024 * 1024)
    await ctx.rc.deployments.get("dep-1").submit({"10": {"inputs": {"image": big}}})


@case("more than one hardware SKU", "deployments.create(..., hardware=['AMPERE_48', 'AMPERE_24'])",
      errors.ValidationError, "exactly one SKU", "hardware='AMPERE_48'")
async def _two_skus(ctx: Ctx) -> None:
    await ctx.rc.deployments.create(
        name="d", workflow_id="w", workflow_version="v1", hardware=["AMPERE_48", "AMPERE_24"]
    )


@case("min_instances above max_instances", "deployments.create(..., min_instances=3, "
      "max_instances=2)", errors.ValidationError, "is above max_instances",
      "raise max_instances")
async def _min_above_max(ctx: Ctx) -> None:
    await ctx.rc.deployments.create(
        name="d", workflow_id="w", workflow_version="v1", hardware="AMPERE_48",
        min_instances=3, max_instances=2,
    )


@case("negative keep-warm", "deployments.update(id, keep_warm_duration_in_seconds=-1)",
      errors.ValidationError, "keep_warm_duration_in_seconds must be an integer from 0",
      "0 shuts an idle instance down")
async def _negative_keep_warm(ctx: Ctx) -> None:
    await ctx.rc.deployments.update("dep-1", keep_warm_duration_in_seconds=-1)


# -- the runner --------------------------------------------------------------------------------


@pytest_asyncio.fixture
async def emu() -> AsyncIterator[Emulator]:
    """A fast emulator without the rate limit."""
    async with Emulator(rate_limit=None, speed=1000.0, dataset_processing_seconds=0) as emulator:
        yield emulator


@pytest_asyncio.fixture
async def ctx(emu: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Ctx]:
    """An open client, a READY dataset 'kept' with two files, and a DRAFT dataset 'drafty'."""
    async with emu.client(rate=1000.0, burst=100) as rc:
        kept = await rc.datasets.create("kept")
        await kept.upload_folder(files(tmp_path / "kept", k__jpg=b"jpeg", k__txt="kept"))
        await rc.datasets.create("drafty")
        yield Ctx(emu=emu, rc=rc, tmp=tmp_path, kept=kept, monkeypatch=monkeypatch)


def api_requests(emu: Emulator, since: int) -> list[str]:
    """``"METHOD path"`` of every API request logged after position ``since``."""
    return [f"{r.method} {r.path}" for r in emu.log[since:] if r.api in API_HOSTS]


@pytest.mark.asyncio
@pytest.mark.parametrize("mistake", CASES, ids=[c.kind for c in CASES])
async def test_mistake_is_refused_before_sending(ctx: Ctx, mistake: Case) -> None:
    """The mistake raises its own error naming problem and fix; nothing sent, nothing lost."""
    before = ctx.emu.stored_files(ctx.kept.id)
    mark = len(ctx.emu.log)
    with pytest.raises(mistake.error) as caught:
        await mistake.act(ctx)
    message = str(caught.value)
    for fragment in mistake.says:
        assert fragment in message, (fragment, message)
    assert ctx.emu.token not in message and ctx.emu.token not in repr(caught.value)
    assert [r for r in api_requests(ctx.emu, mark) if r not in mistake.allowed] == []
    assert ctx.emu.stored_files(ctx.kept.id) == before


# -- mistakes found while uploading ------------------------------------------------------------


async def _upload_with_hook(
    ctx: Ctx, hook: Callable[[Path], None], victim: str
) -> errors.UploadError:
    """Upload 20 pairs, calling ``hook(path)`` on ``victim`` once the upload is under way (at
    the first file's start, well before ``victim``'s turn); return the UploadError.

    Progress callbacks run beside the transfer, not inside it, so the hook cannot wait for the
    victim's own start: a 100-byte file may be sent whole before its callback runs.
    """
    folder = ctx.tmp / "live"
    folder.mkdir()
    for i in range(20):
        (folder / f"f{i:02}.jpg").write_bytes(b"x" * (100 + i))
        (folder / f"f{i:02}.txt").write_text(f"caption {i}")
    hooked: list[str] = []

    def on_event(event: UploadEvent) -> None:
        if isinstance(event, FileStarted) and not hooked:
            hooked.append(event.filename)
            hook(folder / victim)

    ds = await ctx.rc.datasets.create("live")
    with pytest.raises(errors.UploadError) as caught:
        await ds.upload_folder(folder, concurrency=4, progress=on_event)
    stored = ctx.emu.stored_files(ds.id)
    assert victim not in stored
    assert len(stored) == 39  # every other file arrived
    return caught.value


@pytest.mark.asyncio
async def test_file_that_changes_during_upload_is_not_stored_cut(ctx: Ctx) -> None:
    """A file that grows while it is sent fails as FILE_CHANGED; storage keeps no cut copy."""
    before = ctx.emu.stored_files(ctx.kept.id)

    def grow(path: Path) -> None:
        with path.open("ab") as fh:
            fh.write(b"more")

    error = await _upload_with_hook(ctx, grow, "f07.jpg")
    (failed,) = error.report.failed
    assert failed.filename == "f07.jpg"
    assert failed.reason is FailureReason.FILE_CHANGED
    assert "changed while uploading" in str(error)
    assert "re-run" in str(error)
    assert ctx.emu.stored_files(ctx.kept.id) == before


@pytest.mark.asyncio
async def test_file_that_disappears_during_upload_is_reported(ctx: Ctx) -> None:
    """A file deleted while the upload runs fails clearly; every other file is stored."""
    error = await _upload_with_hook(ctx, lambda path: path.unlink(missing_ok=True), "f11.jpg")
    (failed,) = error.report.failed
    assert failed.filename == "f11.jpg"
    assert failed.reason is FailureReason.FILE_CHANGED
    assert "can no longer be read" in str(error)
    assert "restore it and re-run" in str(error)


def test_client_from_another_event_loop_is_refused() -> None:
    """A client opened in one event loop raises WrongEventLoopError in another, sending nothing."""
    home = asyncio.Runner()
    emu = Emulator(rate_limit=None)
    home.run(emu.start())
    rc = emu.client()
    home.run(rc.open())
    try:
        with asyncio.Runner() as other, pytest.raises(errors.WrongEventLoopError) as caught:
            other.run(rc.datasets.list())
        assert "opened in another event loop" in str(caught.value)
        assert "one client per event loop" in str(caught.value)
        assert emu.log == []
    finally:
        home.run(rc.aclose())
        home.run(emu.close())
        home.close()


# -- the catalogue in the docs -----------------------------------------------------------------

OTHER_KINDS = (
    "file that changes during upload",
    "file that disappears during upload",
    "using a client from another event loop",
)


def test_docs_catalogue_lists_every_case() -> None:
    """docs/reliability.md has a catalogue row for every case tested here (at least 20)."""
    text = DOCS.read_text()
    rows = {
        m.group(1).strip().lower()
        for m in re.finditer(r"^\| ([^|]+) \|", text, flags=re.MULTILINE)
    }
    kinds = [c.kind for c in CASES] + list(OTHER_KINDS)
    assert len(kinds) >= 20
    missing = [k for k in kinds if k.lower() not in rows]
    assert missing == []
