"""The public surface: `__all__` is explicit, complete and importable."""

from __future__ import annotations

import ast
import enum
import inspect
import json
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

import pytest

import runcomfy_async
from runcomfy_async import errors


def test_all_names_import() -> None:
    """Every name in __all__ exists on the package."""
    missing = [n for n in runcomfy_async.__all__ if not hasattr(runcomfy_async, n)]
    assert missing == []


def test_every_error_is_exported() -> None:
    """Every exception class in errors.py is exported and derives from RunComfyError."""
    classes = [
        obj for _, obj in inspect.getmembers(errors, inspect.isclass)
        if obj.__module__ == errors.__name__
    ]
    assert classes
    for cls in classes:
        assert cls.__name__ in runcomfy_async.__all__, cls
        assert issubclass(cls, errors.RunComfyError)


def test_error_tree_is_documented() -> None:
    """The errors module docstring draws every exception class of the tree."""
    doc = errors.__doc__ or ""
    for name in errors.__all__:
        assert name in doc, name


def test_contract_names_exported() -> None:
    """The public names the design promises are exported from the top level."""
    contract = {
        "RunComfy", "GPUType", "Dataset", "TrainingJob", "ModelRequest", "Machine",
        "DatasetInfo", "JobStatus", "JobResult", "Artifact", "RequestStatus", "RequestResult",
        "MachineInfo", "Workflow", "RunComfyError", "APIError", "DatasetFailed", "JobFailed",
        "RequestFailed", "MachineFailed", "TokenBucket", "Limiter", "ServerType", "Lora",
        "Deployment", "Deployments", "DeploymentInfo", "ServerlessRequest", "Hardware",
        "DeploymentDisabledError", "DeploymentDeletedError", "__version__",
    }
    assert contract <= set(runcomfy_async.__all__)


def test_package_is_typed() -> None:
    """py.typed ships with the package."""
    from importlib.resources import files

    assert files("runcomfy_async").joinpath("py.typed").is_file()


def test_names_the_cli_relies_on_are_exported() -> None:
    """The helpers and constants added for the CLI are public top-level names."""
    assert {"ARTIFACT_KINDS", "DATASETS_ROOT", "TRAINING_FOLDER", "to_jsonable"} <= set(
        runcomfy_async.__all__
    )
    assert runcomfy_async.ARTIFACT_KINDS == ("checkpoints", "samples", "config")
    for method in (
        runcomfy_async.Datasets.find,
        runcomfy_async.Models.download_outputs,
        runcomfy_async.TrainingJob.wait,
        runcomfy_async.to_jsonable,
    ):
        assert "Args:" in (method.__doc__ or ""), method
    assert "on_status" in inspect.signature(runcomfy_async.TrainingJob.wait).parameters


def _runcomfy_imports(path: Path) -> list[tuple[str, list[str]]]:
    """``(module, names)`` of every import of the package in one CLI file, made absolute."""
    found: list[tuple[str, list[str]]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(a.name, []) for a in node.names if a.name.startswith("runcomfy_async")]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level == 1:
                module = f"runcomfy_async.cli.{module}".rstrip(".")
            elif node.level > 1:
                module = "runcomfy_async." + module if module else "runcomfy_async"
            if module.startswith("runcomfy_async"):
                found.append((module, [a.name for a in node.names]))
    return found


def test_cli_uses_only_the_public_library() -> None:
    """The CLI imports the library's top-level names and the emulator, never private modules."""
    allowed = {
        "runcomfy_async": set(runcomfy_async.__all__) | {"errors"},
        "runcomfy_async.testing": {"Emulator"},
        # The emulator's one command line, shared with `python -m runcomfy_async.testing`.
        "runcomfy_async.testing._cli": None,
        # The rich bars, shared with the public `progress_bars` (they need rich, an extra, so
        # the package imports them only when asked).
        "runcomfy_async._bars": None,
    }
    cli_dir = Path(runcomfy_async.__file__).parent / "cli"
    problems = []
    for path in sorted(cli_dir.glob("*.py")):
        for module, names in _runcomfy_imports(path):
            if module.startswith("runcomfy_async.cli"):
                continue
            if module not in allowed:
                problems.append(f"{path.name}: imports {module}")
                continue
            public = allowed[module]
            problems += [
                f"{path.name}: {module}.{n} is not public"
                for n in names
                if public is not None and n not in public
            ]
    assert problems == []


class _Colour(enum.Enum):
    RED = "red"


def test_to_jsonable_turns_data_into_plain_json() -> None:
    """Data classes, enums, datetimes, paths and containers become values json.dumps takes."""
    when = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    status = runcomfy_async.JobStatus(
        id="j1",
        status=runcomfy_async.JobState.RUNNING,
        progress=runcomfy_async.Progress(current_step=3, total_steps=10),
        created_at=when,
    )
    plain = runcomfy_async.to_jsonable(
        {"job": status, 1: (_Colour.RED, PurePosixPath("/a/b")), "set": frozenset({None})}
    )
    assert plain == {
        "job": {
            "id": "j1",
            "name": None,
            "status": "RUNNING",
            "progress": {"percent": None, "current_step": 3, "total_steps": 10},
            "error": None,
            "created_at": "2025-01-02T03:04:05+00:00",
            "started_at": None,
            "finished_at": None,
            "result_url": None,
        },
        "1": ["red", "/a/b"],
        "set": [None],
    }
    assert json.loads(json.dumps(plain)) == plain
    assert runcomfy_async.to_jsonable("text") == "text"


def test_to_jsonable_refuses_what_has_no_json_form() -> None:
    """A handle or any other object is a TypeError, not a silently unserialisable value."""
    with pytest.raises(TypeError, match="no JSON form"):
        runcomfy_async.to_jsonable({"client": object()})


def test_examples_import_only_public_names() -> None:
    """examples/ imports from public modules only, and only names in their ``__all__``."""
    import importlib

    root = Path(__file__).resolve().parent.parent / "examples"
    private = []
    modules: list[tuple[str, str | None]]
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                modules = [(alias.name, None) for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                modules = [(node.module, alias.name) for alias in node.names]
            else:
                continue
            for module, name in modules:
                if module.split(".")[0] != "runcomfy_async":
                    continue
                where = f"{path.relative_to(root)}:{node.lineno}"
                if any(part.startswith("_") for part in module.split(".")):
                    private.append(f"{where} imports private module {module}")
                elif name is not None and name not in importlib.import_module(module).__all__:
                    private.append(f"{where} imports {name}, not in {module}.__all__")
    assert private == []
