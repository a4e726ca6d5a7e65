"""The model catalog, schemas, validate=True, the account balance and 402, over real sockets."""

from __future__ import annotations

import io
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import aiohttp
import pytest
import pytest_asyncio

from runcomfy_async import (
    BadRequestError,
    Balance,
    ConfigurationError,
    InsufficientBalanceError,
    ModelInfo,
    ModelInputError,
    PollPolicy,
    RunComfy,
    ValidationError,
)
from runcomfy_async.testing import Emulator
from runcomfy_async.testing._cli import announce, argparser, emulator_from_options
from tests.test_downloads import CONFIG_TEXT

FLUX = "blackforestlabs/flux-1-kontext/pro/edit"
FLASH = "blackforestlabs/flux-2/flash/text-to-image"
FAST = PollPolicy(initial=0.02, factor=1.5, max_interval=0.1)
EXTRA = [
    {"model_id": f"acme/extra-{i}/v1", "categories": ["upscale"], "base_price_usd": 0.01}
    for i in range(7)
]


@pytest_asyncio.fixture
async def emu() -> AsyncIterator[Emulator]:
    """An emulator with seven extra models (fifteen in all), a $1 balance, fast time."""
    async with Emulator(rate_limit=None, speed=1000.0, models=EXTRA, balance=1.0) as emulator:
        yield emulator


@pytest_asyncio.fixture
async def rc(emu: Emulator) -> AsyncIterator[RunComfy]:
    """A client of the emulator without client-side pacing."""
    async with emu.client(rate=500.0, burst=50) as client:
        yield client


def _catalog_queries(emu: Emulator) -> list[dict[str, list[str]]]:
    """The query of every catalog list request the emulator received."""
    return [parse_qs(r.query) for r in emu.log if r.path == "/v1/models"]


# -- the catalog ---------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_catalog_pages_through_every_model(emu: Emulator, rc: RunComfy) -> None:
    """Fifteen models at four a page take four list calls, each at the next offset."""
    models = [m async for m in rc.models.catalog(page_size=4)]
    assert len(models) == len({m.model_id for m in models}) == 15
    assert all(isinstance(m, ModelInfo) for m in models)
    queries = _catalog_queries(emu)
    assert [q["offset"] for q in queries] == [["0"], ["4"], ["8"], ["12"]]
    assert all(q["limit"] == ["4"] for q in queries)
    flux = next(m for m in models if m.model_id == FLUX)
    assert (flux.price, flux.categories) == ("$0.04/output", ("image-to-image",))
    assert flux.input_schema is None  # only with include_schema


@pytest.mark.asyncio
async def test_catalog_filters_and_stops_early(emu: Emulator, rc: RunComfy) -> None:
    """search, category and kind narrow the list; breaking out asks for no further page."""
    emu.add_model("acme/my-lora/v1", kind="lora", display_name="My FLUX LoRA")
    flux = [m.model_id async for m in rc.models.catalog(search="FLUX")]
    assert FLUX in flux and "acme/my-lora/v1" in flux
    assert all("flux" in m or m == "acme/my-lora/v1" for m in flux)  # the LoRA by its name
    upscale = [m.model_id async for m in rc.models.catalog(category="upscale")]
    assert upscale == [e["model_id"] for e in EXTRA]
    loras = [m async for m in rc.models.catalog(kind="lora", include_schema=True)]
    assert [m.model_id for m in loras] == ["acme/my-lora/v1"]
    assert loras[0].input_schema == {"type": "object", "properties": {}}
    emu.clear_log()
    async for _ in rc.models.catalog(page_size=2):
        break
    assert len(_catalog_queries(emu)) == 1


@pytest.mark.asyncio
async def test_catalog_refuses_bad_arguments_before_sending(emu: Emulator, rc: RunComfy) -> None:
    """A blank filter or an out-of-range page size fails at the call, with nothing sent."""
    with pytest.raises(ValidationError, match="search must be a non-blank string"):
        rc.models.catalog(search="  ")
    with pytest.raises(ValidationError, match="page_size must be an int from 1 to 100"):
        rc.models.catalog(page_size=0)
    assert emu.log == []


# -- one model's schema and price ----------------------------------------------------------------


@pytest.mark.asyncio
async def test_schema_gives_inputs_and_price(rc: RunComfy) -> None:
    """schema() returns the input schema, the required inputs and the price."""
    info = await rc.models.schema(FLUX)
    assert info.model_id == FLUX
    assert info.required_inputs == ("prompt", "image_url")
    assert set(info.inputs) == {"prompt", "image_url", "seed", "aspect_ratio"}
    assert (info.base_price_usd, info.price_unit, info.price) == (0.04, "output", "$0.04/output")


@pytest.mark.asyncio
async def test_unknown_model_id_is_rejected_as_the_service_does(
    emu: Emulator, rc: RunComfy
) -> None:
    """A typo'd id is HTTP 400 with code 400001 (close matches named); nothing is queued."""
    typo = "blackforestlabs/flux-1-kontxt/pro/edit"
    headers = {"Authorization": f"Bearer {emu.token}"}
    async with aiohttp.ClientSession() as http, http.post(
        f"{emu.url}/v1/models/{typo}", json={"prompt": "x"}, headers=headers
    ) as resp:
        body = await resp.json()
    assert resp.status == 400
    assert body["error_code"] == 400001
    assert FLUX in body["error_message"]
    with pytest.raises(BadRequestError) as refused:
        await rc.models.submit(typo, {"prompt": "x"})
    assert refused.value.code == 400001
    assert any("rc.models.catalog" in note for note in refused.value.__notes__)
    with pytest.raises(BadRequestError, match="no such model"):
        await rc.models.schema("acme/nothing/here")
    assert emu.state.model_requests._records == {}
    assert emu.balance == 1.0


@pytest.mark.asyncio
async def test_the_catalog_is_extended_from_a_file(tmp_path: Path) -> None:
    """Emulator(models=path) adds the file's models; a malformed entry is refused up front."""
    path = tmp_path / "models.json"
    path.write_text(json.dumps({"models": [{"model_id": "me/custom/v2"}]}), encoding="utf-8")
    async with Emulator(rate_limit=None, speed=1000.0, models=path) as emu, emu.client() as rc:
        assert (await rc.models.schema("me/custom/v2")).price == "$0.04/output"
        output = await rc.models.run("me/custom/v2", {"anything": 1}, poll=FAST)
        assert set(output) == {"image"}
    path.write_text(json.dumps([{"model_id": "bad//id"}]), encoding="utf-8")
    with pytest.raises(ValueError, match="is not a model id"):
        Emulator(models=path)


# -- validate=True -------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_validate_refuses_bad_inputs_before_any_submit(emu: Emulator, rc: RunComfy) -> None:
    """Bad inputs fail with every problem and every valid input listed; only the schema is read."""
    bad = {"promt": "a cat", "seed": "abc", "aspect_ratio": "5:5"}
    with pytest.raises(ModelInputError) as refused:
        await rc.models.submit(FLUX, bad, validate=True)
    error = refused.value
    assert error.model_id == FLUX
    assert "promt: not an input of this model (did you mean 'prompt'?)" in error.problems
    assert "prompt: required input missing" in error.problems
    assert "image_url: required input missing" in error.problems
    assert any(p.startswith("seed: 'abc' is not of type 'integer'") for p in error.problems)
    assert any(p.startswith("aspect_ratio: '5:5' is not one of") for p in error.problems)
    assert error.valid[:2] == ["image_url (string, required)", "prompt (string, required)"]
    assert "nothing was sent" in str(error) and "validate=False" in str(error)
    with pytest.raises(ModelInputError):
        await rc.models.run(FLUX, {"prompt": "x"}, validate=True)
    assert [(r.method, r.path) for r in emu.log] == [("GET", f"/v1/models/{FLUX}")]


@pytest.mark.asyncio
async def test_validate_passes_good_inputs_and_tolerates_loose_types(
    emu: Emulator, rc: RunComfy
) -> None:
    """Inputs that match are submitted; a schema typing a number "float" still validates."""
    output = await rc.models.run(FLASH, {"prompt": "x", "guidance_scale": 3.5}, validate=True)
    assert set(output) == {"image"}
    with pytest.raises(ModelInputError, match="guidance_scale: 'high' is not of type 'number'"):
        await rc.models.submit(FLASH, {"prompt": "x", "guidance_scale": "high"}, validate=True)
    posts = [r for r in emu.log if r.method == "POST" and r.path.startswith("/v1/models/")]
    assert len(posts) == 1


@pytest.mark.asyncio
async def test_validate_without_jsonschema_names_the_extra(
    emu: Emulator, rc: RunComfy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without jsonschema, validate=True says which extra to install, before anything is sent."""
    monkeypatch.setitem(sys.modules, "jsonschema", None)
    with pytest.raises(ConfigurationError, match=r"runcomfy-async\[schema\]"):
        await rc.models.submit(FLUX, {"prompt": "x"}, validate=True)
    assert emu.log == []


# -- the account ---------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_paid_runs_draw_the_balance_down(emu: Emulator, rc: RunComfy) -> None:
    """A run costs its price; a failing run and a cancelled queued one cost nothing."""
    assert await rc.account.balance() == Balance(balance_usd=1.0, currency="USD")
    req = await rc.models.submit(FLUX, {"prompt": "x"}, include_cost=True)
    await req
    assert (await req.result()).cost == 0.04
    assert (await rc.account.balance()).balance_usd == pytest.approx(0.96)
    emu.set_model_behavior("acme/broken/v1", fail=True)
    await rc.models.submit("acme/broken/v1", {})
    emu.set_model_behavior("acme/slow/v1", duration=1e6)
    emu.state.model_requests.set_workers(1)
    await rc.models.submit("acme/slow/v1", {})
    queued = await rc.models.submit("acme/slow/v1", {})
    assert emu.balance == pytest.approx(0.88)  # the failing run was free
    await queued.cancel()
    assert (await rc.account.balance()).balance_usd == pytest.approx(0.92)
    balance_calls = [r for r in emu.log if r.path == "/prod/v2/balance"]
    assert balance_calls and all(r.api == "server" and r.status == 200 for r in balance_calls)


@pytest.mark.asyncio
async def test_a_run_the_balance_cannot_cover_is_402_with_the_fix(
    emu: Emulator, rc: RunComfy
) -> None:
    """Out of funds, a submit is refused with 402 / 400002; the error says how to fix it."""
    emu.set_balance(0.03)
    with pytest.raises(InsufficientBalanceError) as refused:
        await rc.models.submit(FLUX, {"prompt": "x"})
    error = refused.value
    assert (error.status, error.code) == (402, 400002)
    assert "add funds on runcomfy.com" in str(error)
    assert "rc.account.balance()" in str(error)
    assert emu.token not in str(error)
    assert emu.balance == 0.03
    assert emu.state.model_requests._records == {}
    submits = [r for r in emu.log if r.method == "POST"]
    assert [r.status for r in submits] == [402]  # refused once, not retried


@pytest.mark.asyncio
async def test_runs_cost_their_units(emu: Emulator, rc: RunComfy) -> None:
    """Images cost per output (the schema's default count too), video per second of duration."""
    multi = "bytedance/seedream-5.0-pro/multi-image"
    images = await rc.models.run(multi, {"prompt": "x"}, poll=FAST)
    assert len(images["images"]) == 2
    assert emu.balance == pytest.approx(1.0 - 2 * 0.03)
    video = "bytedance/seedance-2.5/text-to-video/1080p"
    with pytest.raises(InsufficientBalanceError, match=r"costs \$1\.2000"):
        await rc.models.submit(video, {"prompt": "x", "duration": 10})
    await rc.models.submit(video, {"prompt": "x", "duration": 4})
    assert emu.balance == pytest.approx(1.0 - 0.06 - 4 * 0.12)


@pytest.mark.asyncio
async def test_an_empty_balance_gates_deployments(emu: Emulator, rc: RunComfy) -> None:
    """With nothing left, a deployment's run is refused with 10001 as InsufficientBalanceError."""
    workflow_id = emu.state.machines.workflows[0]["workflow_id"]
    deployment = await rc.deployments.create(
        name="gated", workflow_id=workflow_id, workflow_version="v1", hardware="AMPERE_48"
    )
    emu.set_balance(0)
    with pytest.raises(InsufficientBalanceError) as refused:
        await deployment.submit({})
    assert (refused.value.status, refused.value.code) == (402, 10001)
    assert "add funds on runcomfy.com" in str(refused.value)


@pytest.mark.asyncio
async def test_gpu_id_reaches_the_training_service(emu: Emulator, rc: RunComfy) -> None:
    """jobs.submit(gpu_id=...) sends it; a blank one is refused before sending."""
    job = await rc.jobs.submit(CONFIG_TEXT, gpu_id="gpu-7", check_datasets=False)
    assert emu.state.jobs._jobs[job.id].gpu_id == "gpu-7"
    emu.clear_log()
    with pytest.raises(ValidationError, match="gpu_id must be a non-blank string"):
        await rc.jobs.submit(CONFIG_TEXT, gpu_id=" ", check_datasets=False)
    assert emu.log == []


# -- the standalone emulator's banner and options -------------------------------------------------


@pytest.mark.asyncio
async def test_banner_shows_url_token_user_rate_and_speed() -> None:
    """The banner names URL, token, user id, rate limit and speed; stdout keeps the exports."""
    async with Emulator(token="rc_banner", user_id="u-1", rate_limit=2.0, burst=4, speed=30) as emu:
        out, err = io.StringIO(), io.StringIO()
        announce(emu, out=out, err=err)
        banner = err.getvalue()
        assert f"serving on {emu.url}" in banner
        assert "token:      rc_banner" in banner
        assert "user id:    u-1" in banner
        assert "rate limit: 2 request/s per token (burst 4)" in banner
        assert "speed:      30x" in banner
        exports = out.getvalue().splitlines()
        assert exports[0] == "export RUNCOMFY_API_TOKEN=rc_banner"
        assert len(exports) == 5 and all(line.startswith("export ") for line in exports)
        as_json = io.StringIO()
        announce(emu, as_json=True, out=as_json, err=io.StringIO())
        facts: dict[str, Any] = json.loads(as_json.getvalue())
        assert (facts["rate_limit"], facts["speed"], facts["user_id"]) == (2.0, 30, "u-1")


def test_models_and_balance_options(tmp_path: Path) -> None:
    """--models FILE and --balance reach the Emulator; a bad file is a usage error."""
    path = tmp_path / "models.json"
    path.write_text(json.dumps([{"model_id": "me/thing/v1", "base_price_usd": 0.5}]), "utf-8")
    values = vars(argparser().parse_args(["--models", str(path), "--balance", "2.5"]))
    emu = emulator_from_options(values)
    assert emu.config.balance == 2.5
    assert [m["model_id"] for m in emu.config.models] == ["me/thing/v1"]
    path.write_text("[1]", "utf-8")
    with pytest.raises(SystemExit):
        argparser().parse_args(["--models", str(path)])
