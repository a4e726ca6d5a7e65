"""All emulator state hangs off one EmulatorState: no module-level stores or registries."""

from __future__ import annotations

import ast
import importlib
import inspect
import itertools
import pkgutil
import weakref
from collections.abc import AsyncIterator

import aiohttp
import pytest
import pytest_asyncio

import runcomfy_async.testing as testing_package
from runcomfy_async.testing import Emulator
from runcomfy_async.testing.trainer_jobs import PREFIX as JOBS

CONFIG = """\
config:
  name: state-test
  process:
    - training_folder: /app/ai-toolkit/output
      datasets: []
      train: {steps: 4}
"""
_MUTABLE = (dict, list, set, bytearray, weakref.WeakKeyDictionary, weakref.WeakValueDictionary)


@pytest_asyncio.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A plain aiohttp session."""
    async with aiohttp.ClientSession() as session:
        yield session


def _emulator_modules() -> list[str]:
    """Every module of ``runcomfy_async.testing`` (the ``-m`` entry point included)."""
    names = [testing_package.__name__]
    for info in pkgutil.iter_modules(testing_package.__path__, testing_package.__name__ + "."):
        names.append(info.name)
    return names


def _assigned_at_module_level(node: ast.AST) -> set[str]:
    """Names bound by assignment outside any function or class (imports are not assignments)."""
    names: set[str] = set()
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | ast.Lambda):
            continue  # their bindings are locals or attributes, not module state
        if isinstance(child, ast.Assign | ast.AnnAssign | ast.AugAssign):
            targets = child.targets if isinstance(child, ast.Assign) else [child.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
        names |= _assigned_at_module_level(child)
    return names


@pytest.mark.parametrize("module_name", _emulator_modules())
def test_no_module_level_mutable_state(module_name: str) -> None:
    """No emulator module holds a mutable dict, list, set, registry or counter at module level."""
    module = importlib.import_module(module_name)
    assigned = _assigned_at_module_level(ast.parse(inspect.getsource(module)))
    offenders = sorted(
        name
        for name in assigned - {"__all__"}
        if isinstance(getattr(module, name, None), (*_MUTABLE, itertools.count))
    )
    assert offenders == [], f"{module_name} keeps state outside EmulatorState: {offenders}"


@pytest.mark.asyncio
async def test_each_emulator_has_its_own_stores(http: aiohttp.ClientSession) -> None:
    """Two emulators in one process share no store: a job sent to one exists only in it."""
    async with Emulator(rate_limit=None) as first, Emulator(rate_limit=None) as second:
        for attr in ("storage", "datasets", "jobs", "model_requests", "machines", "comfy"):
            assert getattr(first.state, attr) is not getattr(second.state, attr), attr
        body = {"config_file": CONFIG, "config_file_format": "yaml", "gpu_type": "ADA_80_PLUS"}
        headers = {"Authorization": f"Bearer {first.token}"}
        async with http.post(first.url + JOBS, json=body, headers=headers) as resp:
            assert resp.status == 200
            job_id = (await resp.json())["id"]
        assert first.state.jobs.get(job_id).id == job_id
        with pytest.raises(KeyError):
            second.state.jobs.get(job_id)


@pytest.mark.asyncio
async def test_stores_learn_the_url_when_listening(http: aiohttp.ClientSession) -> None:
    """Storage URLs and a machine's main_service_url use the port the emulator listens on."""
    async with Emulator(rate_limit=None) as emu:
        assert emu.state.base_url == emu.state.storage.base_url == emu.url
        assert emu.state.machines.base_url == emu.url
        assert emu.state.storage.sign_get("k").startswith(emu.url + "/storage/artifacts/k?")
