"""AI Toolkit configs: read (YAML text, file or mapping) and check before a job is submitted.

The service accepts a job with a wrong fixed path or a dataset that is not READY and only fails
it later, after the queue wait (docs/wire.md, training jobs), so these checks run on
the client, before anything is sent. Pure apart from reading a config file.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeAlias

import aiofiles
import yaml

from . import errors
from ._rules import DATASETS_ROOT, TRAINING_FOLDER

__all__ = [
    "DATASETS_ROOT",
    "TRAINING_FOLDER",
    "JobConfig",
    "check_config",
    "load_config",
    "parse_config",
    "with_fixed_paths",
]

#: A config: YAML text, a path to a YAML file, or the parsed mapping.
JobConfig: TypeAlias = "str | os.PathLike[str] | Mapping[str, Any]"


def parse_config(text: str, *, source: str = "config") -> dict[str, Any]:
    """Parse AI Toolkit YAML text into a mapping.

    Raises:
        ConfigError: the YAML is invalid (the message names the line) or is not a mapping.
    """
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise errors.ConfigError(
            f"{source} is not valid YAML{where}: {problem}; fix the YAML there"
        ) from exc
    if not isinstance(doc, dict):
        hint = (
            " (to read a file, pass a pathlib.Path, not a str)"
            if isinstance(doc, str) and "\n" not in text.strip()
            else ""
        )
        raise errors.ConfigError(
            f"{source} must be a YAML mapping with 'job' and 'config' keys, "
            f"got {type(doc).__name__}{hint}"
        )
    return doc


def _processes(doc: Mapping[str, Any]) -> list[Any]:
    """``config.process``, or a ConfigError saying where the AI Toolkit expects it."""
    config = doc.get("config")
    if not isinstance(config, Mapping):
        raise errors.ConfigError(
            "the config has no 'config' mapping; an AI Toolkit config looks like "
            "'job: extension' / 'config: {name: ..., process: [...]}'"
        )
    process = config.get("process")
    if not isinstance(process, list) or not process:
        raise errors.ConfigError(
            "config.process must be a non-empty list of training processes "
            "(each with training_folder, datasets, train, ...)"
        )
    return process


def check_config(doc: Mapping[str, Any]) -> list[str]:
    """Check the fixed paths the service requires; return the dataset names the config mounts.

    Every ``config.process[i].training_folder`` must be ``/app/ai-toolkit/output`` and every
    ``config.process[i].datasets[j].folder_path`` must be ``/app/ai-toolkit/datasets/<name>``
    (docs/wire.md). Every problem is reported at once.

    Raises:
        ConfigError: the config breaks a rule; the message says what to change.
    """
    problems: list[str] = []
    names: list[str] = []
    for i, process in enumerate(_processes(doc)):
        where = f"config.process[{i}]"
        if not isinstance(process, Mapping):
            problems.append(f"{where} must be a mapping")
            continue
        folder = process.get("training_folder")
        if folder != TRAINING_FOLDER:
            problems.append(
                f"{where}.training_folder is {folder!r}; set it to {TRAINING_FOLDER!r} "
                "(fixed by the service)"
            )
        datasets = process.get("datasets", [])
        if not isinstance(datasets, list):
            problems.append(f"{where}.datasets must be a list of {{folder_path: ...}} entries")
            continue
        for j, entry in enumerate(datasets):
            at = f"{where}.datasets[{j}].folder_path"
            path = entry.get("folder_path") if isinstance(entry, Mapping) else None
            name = path[len(DATASETS_ROOT):] if isinstance(path, str) else ""
            if (
                not isinstance(path, str)
                or not path.startswith(DATASETS_ROOT)
                or not name
                or "/" in name.rstrip("/")
                or name.strip() != name
            ):
                problems.append(f"{at} is {path!r}; set it to '{DATASETS_ROOT}<dataset name>'")
                continue
            names.append(name.rstrip("/"))
    if problems:
        raise errors.ConfigError(
            "the training config would be rejected by the service:\n  - "
            + "\n  - ".join(problems),
            fix="rc.jobs.config_for(dataset, template) fills in the fixed paths for a dataset",
        )
    return names


def _dump(doc: Mapping[str, Any]) -> str:
    """YAML text of a mapping, keys in the user's order."""
    return yaml.safe_dump(dict(doc), sort_keys=False, allow_unicode=True)


async def load_config(config: JobConfig) -> tuple[dict[str, Any], str]:
    """``(parsed mapping, YAML text to send)`` of a str / path / mapping config.

    YAML given as text or a file is sent as written (comments and layout kept); a mapping is
    dumped with PyYAML.
    """
    if isinstance(config, os.PathLike):
        path = Path(config)
        try:
            async with aiofiles.open(path, encoding="utf-8") as fh:
                text = await fh.read()
        except OSError as exc:
            raise errors.ConfigError(f"cannot read the config file {path}: {exc}") from exc
        return parse_config(text, source=str(path)), text
    if isinstance(config, str):
        return parse_config(config), config
    if isinstance(config, Mapping):
        try:
            text = _dump(config)
        except yaml.YAMLError as exc:
            raise errors.ConfigError(
                f"the config mapping cannot be written as YAML: {exc}; use plain str, int, "
                "float, bool, list and dict values"
            ) from exc
        return copy.deepcopy(dict(config)), text
    raise errors.ConfigError(
        f"config must be YAML text (str), a pathlib.Path to a YAML file, or a dict; "
        f"got {type(config).__name__}"
    )


def with_fixed_paths(doc: Mapping[str, Any], dataset_name: str) -> dict[str, Any]:
    """A copy of ``doc`` whose processes use the fixed training folder and dataset mount.

    Every ``training_folder`` becomes :data:`TRAINING_FOLDER`, every ``datasets[*].folder_path``
    ``DATASETS_ROOT + dataset_name``; a process without ``datasets`` gets one entry.

    Raises:
        ConfigError: the document is not an AI Toolkit config.
    """
    filled = copy.deepcopy(dict(doc))
    for i, process in enumerate(_processes(filled)):
        if not isinstance(process, dict):
            raise errors.ConfigError(f"config.process[{i}] must be a mapping")
        process["training_folder"] = TRAINING_FOLDER
        entries = process.get("datasets")
        if not isinstance(entries, list) or not entries:
            process["datasets"] = [{"folder_path": DATASETS_ROOT + dataset_name}]
            continue
        for j, entry in enumerate(entries):
            if not isinstance(entry, dict):
                raise errors.ConfigError(f"config.process[{i}].datasets[{j}] must be a mapping")
            entry["folder_path"] = DATASETS_ROOT + dataset_name
    return filled
