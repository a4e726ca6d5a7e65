"""``runcomfy models list``, ``runcomfy models schema`` and ``runcomfy balance`` on an emulator."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import pytest
from click.testing import CliRunner, Result

from runcomfy_async.cli import cli
from tests.test_cli import ThreadedEmulator

FLUX = "blackforestlabs/flux-1-kontext/pro/edit"


@pytest.fixture(scope="module")
def server() -> Iterator[ThreadedEmulator]:
    """One fast emulator with a $12.50 balance, shared by this module's tests."""
    threaded = ThreadedEmulator(rate_limit=None, speed=1000.0, balance=12.5)
    try:
        yield threaded
    finally:
        threaded.close()


@pytest.fixture
def invoke(server: ThreadedEmulator) -> Callable[..., Result]:
    """Run ``runcomfy ARGS`` in-process against the emulator; check the exit code."""
    runner = CliRunner()

    def run(*args: str, code: int = 0) -> Result:
        result = runner.invoke(cli, list(args), env={"COLUMNS": "200", **server.env()})
        assert result.exit_code == code, (result.exit_code, result.output, result.exception)
        return result

    return run


def test_models_list_shows_ids_names_and_prices(invoke: Callable[..., Result]) -> None:
    """`models list --search` prints a table of matches with their price (brackets kept)."""
    out = invoke("models", "list", "--search", "kontext").stdout
    assert FLUX in out
    assert "FLUX.1 Kontext [pro] Edit" in out
    assert "$0.04/output" in out
    assert "wan-ai/wan-3.0/image-to-video" not in out


def test_models_list_json_and_limit(invoke: Callable[..., Result]) -> None:
    """`--json models list --limit 2` prints two entries named like ModelInfo's fields."""
    models = json.loads(invoke("--json", "models", "list", "--limit", "2").stdout)
    assert len(models) == 2
    assert models[0]["model_id"] == FLUX
    assert {"display_name", "categories", "base_price_usd", "price_unit"} <= set(models[0])
    videos = json.loads(invoke("models", "list", "--category", "text-to-video", "--json").stdout)
    assert [m["model_id"] for m in videos] == ["bytedance/seedance-2.5/text-to-video/1080p"]


def test_models_schema_lists_inputs(invoke: Callable[..., Result]) -> None:
    """`models schema ID` shows each input's type, whether required, and allowed values."""
    out = invoke("models", "schema", FLUX).stdout
    assert "image_url" in out and "required" in out and "16:9" in out and "$0.04/output" in out
    info = json.loads(invoke("--json", "models", "schema", FLUX).stdout)
    assert info["input_schema"]["required"] == ["prompt", "image_url"]


def test_unknown_model_errors_point_at_the_catalog(invoke: Callable[..., Result]) -> None:
    """A typo'd id exits 3 with one line naming the close match and `runcomfy models list`."""
    result = invoke("models", "schema", "blackforestlabs/flux-1-kontxt/pro/edit", code=3)
    line = result.stderr.strip()
    assert FLUX in line
    assert "runcomfy models list --search" in line


def test_balance_prints_what_is_left(invoke: Callable[..., Result]) -> None:
    """`balance` prints the account's balance; `--json` prints the Balance fields."""
    assert invoke("balance").stdout.strip() == "balance: $12.50 USD"
    assert json.loads(invoke("balance", "--json").stdout) == {
        "balance_usd": 12.5,
        "currency": "USD",
    }


def test_models_run_validate_refuses_bad_inputs(invoke: Callable[..., Result]) -> None:
    """`models run --validate` exits 1 naming the bad input and the valid ones; nothing runs."""
    result = invoke("models", "run", FLUX, "-i", "promt=a cat", "--validate", code=1)
    line = result.stderr.strip()
    assert line.startswith("runcomfy: error: models run failed:")
    assert "promt: not an input of this model (did you mean 'prompt'?)" in line
    assert "Valid inputs: image_url (string, required); prompt (string, required)" in line
    assert "drop --validate" in line and "validate=False" not in line
