"""The public surface: `__all__` is explicit, complete and importable."""

from __future__ import annotations

import inspect

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
    """The names DESIGN.md promises are exported from the top level."""
    contract = {
        "RunComfy", "GPUType", "Dataset", "TrainingJob", "ModelRequest", "Machine",
        "DatasetInfo", "JobStatus", "JobResult", "Artifact", "RequestStatus", "RequestResult",
        "MachineInfo", "Workflow", "RunComfyError", "APIError", "DatasetFailed", "JobFailed",
        "RequestFailed", "MachineFailed", "TokenBucket", "Limiter", "ServerType", "Lora",
        "__version__",
    }
    assert contract <= set(runcomfy_async.__all__)


def test_package_is_typed() -> None:
    """py.typed ships with the package."""
    from importlib.resources import files

    assert files("runcomfy_async").joinpath("py.typed").is_file()
