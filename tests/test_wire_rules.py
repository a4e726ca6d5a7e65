"""The wire rules client and emulator share (``_rules.py``, ``_media.py``): pure, table-tested."""

from __future__ import annotations

import pytest

from runcomfy_async import ValidationError
from runcomfy_async._media import Unpaired, unpaired_files
from runcomfy_async._rules import DATASETS_ROOT, TRAINING_FOLDER, is_model_id
from runcomfy_async.resources.model_requests import model_path
from runcomfy_async.testing import _datasets as emulated_datasets
from runcomfy_async.testing import model_api, trainer_jobs

MODEL_IDS = {
    "blackforestlabs/flux-1-kontext/pro/edit": True,
    "acme/model": True,
    "a.b_c-d/v1.0": True,
    "single": True,
    "": False,
    "/acme/model": False,
    "acme/model/": False,
    "acme//model": False,
    "acme/../model": False,
    "acme/..x/model": False,
    "acme/./model": False,
    ".": False,
    "acme/mo del": False,
    "acme/mödel": False,
    "acme/model?x=1": False,
}


@pytest.mark.parametrize(("model_id", "ok"), MODEL_IDS.items())
def test_model_id_rule(model_id: str, ok: bool) -> None:
    """is_model_id accepts slash-joined safe segments and nothing that could bend the path."""
    assert is_model_id(model_id) is ok


@pytest.mark.parametrize(("model_id", "ok"), MODEL_IDS.items())
def test_client_and_emulator_agree_on_model_ids(model_id: str, ok: bool) -> None:
    """The client refuses exactly the model ids the emulator answers 400 for."""
    assert (model_api.model_id_problem(model_id) is None) is ok
    if ok:
        assert model_path(model_id).startswith("/v1/models/")
    else:
        with pytest.raises(ValidationError):
            model_path(model_id)


@pytest.mark.parametrize(
    ("names", "expected"),
    [
        ([], Unpaired((), ())),
        (["a.jpg", "a.txt", "b.MP4", "b.txt"], Unpaired((), ())),
        (["a.jpg", "b.png", "b.txt"], Unpaired(("a.jpg",), ())),
        (["a.txt", "b.png", "b.txt"], Unpaired((), ("a.txt",))),
        (["x.tar.jpg", "x.tar.txt"], Unpaired((), ())),
        (["z.jpg", "y.jpg", "y.txt", "w.txt"], Unpaired(("z.jpg",), ("w.txt",))),
        (["a.jpg", "a.webp", "a.txt"], Unpaired((), ())),
        (["notes.pdf", "notes.txt"], Unpaired((), ("notes.txt",))),
        (["noext", "README"], Unpaired((), ())),
    ],
)
def test_caption_pairing_rule(names: list[str], expected: Unpaired) -> None:
    """unpaired_files names media without a caption and captions without media, in order."""
    assert unpaired_files(names) == expected


def test_emulator_fails_datasets_by_the_shared_caption_rule() -> None:
    """The emulator's FAILED message lists exactly what unpaired_files reports, sorted."""
    names = ["b.jpg", "a.jpg", "a.txt", "c.txt"]
    problem = emulated_datasets.caption_problem(names)
    assert problem is not None
    assert "missing captions for b.jpg" in problem
    assert "captions without a matching image or video: c.txt" in problem
    assert emulated_datasets.caption_problem(["a.jpg", "a.txt"]) is None


def test_emulator_uses_the_clients_fixed_paths_and_gpu_types() -> None:
    """The emulator enforces the same AI Toolkit paths and GPU wire values the client sends."""
    assert trainer_jobs.TRAINING_FOLDER == TRAINING_FOLDER == "/app/ai-toolkit/output"
    assert trainer_jobs.DATASETS_ROOT == DATASETS_ROOT == "/app/ai-toolkit/datasets/"
    assert sorted(trainer_jobs.GPU_TYPES) == ["ADA_80_PLUS", "HOPPER_141"]
