"""Rules of the RunComfy wire that both sides need: one home for client and emulator.

The client checks these before it sends anything; the emulator enforces them as the service
does. Pure data and predicates (no I/O, no imports from the client), so the two cannot drift
apart. What a dataset accepts file by file (types, captions) lives in ``_media.py``.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = [
    "DATASETS_ROOT",
    "DEPLOYMENT_MAX_INSTANCES",
    "DEPLOYMENT_MIN_INSTANCES",
    "DIRECT_UPLOAD_LIMIT",
    "MAX_UPLOAD_URLS_PER_REQUEST",
    "TRAINING_FOLDER",
    "is_model_id",
]

#: The fixed ``training_folder`` every AI Toolkit process must use (docs/wire.md).
TRAINING_FOLDER: Final = "/app/ai-toolkit/output"
#: Datasets are mounted at ``DATASETS_ROOT + dataset name`` (docs/wire.md).
DATASETS_ROOT: Final = "/app/ai-toolkit/datasets/"

#: Largest file the direct (multipart) dataset upload takes: decimal 150 MB (docs/wire.md).
DIRECT_UPLOAD_LIMIT: Final = 150_000_000
#: Most files one signed-upload-URL request may name (docs/wire.md).
MAX_UPLOAD_URLS_PER_REQUEST: Final = 1000

#: The widest documented bounds of a deployment's ``min_instances`` / ``max_instances``: one
#: vendor page says 0-3 and 1-10, the vendor's own tool schema 0-30 and 1-60. The client checks
#: these looser ones and leaves the rest to the service; the emulator enforces the page's.
DEPLOYMENT_MIN_INSTANCES: Final = range(31)
DEPLOYMENT_MAX_INSTANCES: Final = range(1, 61)

#: One segment of a model id such as ``blackforestlabs/flux-1-kontext/pro/edit`` (docs/wire.md).
_MODEL_ID_SEGMENT: Final = re.compile(r"[A-Za-z0-9._-]+")


def is_model_id(model_id: str) -> bool:
    """Whether ``model_id`` is well formed: segments of ``A-Z a-z 0-9 . _ -`` joined by single
    slashes, no empty, ``.`` or ``..`` segment and no ``..`` anywhere (docs/wire.md).

    The id becomes part of the URL path, so anything else could point the request elsewhere.
    """
    if not model_id or ".." in model_id:
        return False
    return all(_MODEL_ID_SEGMENT.fullmatch(s) and s != "." for s in model_id.split("/"))
