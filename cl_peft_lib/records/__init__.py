"""Results files that travel with the library (package data), so that a chapter can load them instead of
training, also from a ``pip install`` without the repository (Colab):

* ``offline_protocol.json``: the offline track's comparison protocol (selections + every head-to-head run),
  made on the H200 with ``cl-peft protocol --profile offline`` and written by ``cl-peft protocol --export``;
  ``cl-peft protocol --import`` (:func:`cl_peft_lib.protocol.import_bundle`) puts it in a run store.

Chapters: ``notebooks/05_head_to_head.ipynb``, ``notebooks/08_after_the_swap.ipynb``.
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path


def record_path(name: str) -> Path:
    """Path of the packaged results file ``name`` (e.g. ``"offline_protocol.json"``).

    Raises:
        FileNotFoundError: no such file; the message lists the ones there are.
    """
    root = resources.files(__name__)
    p = root / name
    if not p.is_file():
        have = sorted(x.name for x in root.iterdir() if x.name.endswith(".json"))
        raise FileNotFoundError(f"no packaged results file '{name}'; there are: {', '.join(have)}")
    return Path(str(p))
