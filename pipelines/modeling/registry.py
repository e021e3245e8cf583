"""Model versions: one id that ties a trained encoder to its dataset lineage, index and service.

A version is a directory workspace/models/<version>/ holding an HF model (Encoder.save) and
model.json (version, base, created, lineage: feature service, dataset hash, training config).
The off-the-shelf all-MiniLM-L6-v2 is the version BASE_VERSION and lives in its package, not in
the workspace, so everything that takes `--model VERSION` works before any training has run.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from pipelines.atomic import atomic_path
from pipelines.modeling.encoder import Encoder, minilm_dir

BASE_VERSION = "minilm-l6-v2"  # the off-the-shelf encoder, served until a trained one exists
MANIFEST = "model.json"


class UnknownModel(LookupError):
    """A model version that is neither BASE_VERSION nor a directory under workspace/models."""


@dataclass(frozen=True)
class ModelRef:
    """Where a model version lives and what it was trained from (empty lineage for the base)."""

    version: str
    path: Path
    lineage: dict = field(default_factory=dict)

    def load(self, threads: int | None = None) -> Encoder:
        return Encoder.load(self.path, threads=threads)


def version_id(lineage: dict, fingerprint: str) -> str:
    """Deterministic id from the lineage and the trained weights: same inputs, same id."""
    blob = json.dumps(lineage, sort_keys=True, default=str) + "|" + fingerprint
    return "bienc-" + hashlib.sha256(blob.encode()).hexdigest()[:12]


def register(models_dir: Path, encoder: Encoder, lineage: dict, name: str | None = None,
             stats: dict | None = None) -> ModelRef:
    """Save a trained encoder as a new version (id from lineage + weights unless `name` is given).

    `stats` (timings, throughput) are recorded but not hashed: they vary run to run."""
    version = name or version_id(lineage, encoder.fingerprint())
    path = Path(models_dir) / version
    manifest = {"version": version, "created": pd.Timestamp.now(tz="UTC").isoformat(), "lineage": lineage,
                "stats": stats or {}}
    with atomic_path(path) as tmp:
        encoder.save(tmp)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str))
    return ModelRef(version, path, lineage)


def available(models_dir: Path) -> list[str]:
    """Trained versions in the workspace, newest first, then BASE_VERSION."""
    root = Path(models_dir)
    found = sorted(root.glob(f"[!.]*/{MANIFEST}"), key=lambda p: p.stat().st_mtime, reverse=True) \
        if root.exists() else []
    return [p.parent.name for p in found] + [BASE_VERSION]


def resolve(models_dir: Path, version: str | None = None) -> ModelRef:
    """The model for `version`; None means the newest trained version, or BASE_VERSION if none."""
    if version is None:
        version = available(models_dir)[0]
    if version == BASE_VERSION:
        return ModelRef(BASE_VERSION, minilm_dir())
    path = Path(models_dir) / version
    if not (path / MANIFEST).exists():
        raise UnknownModel(f"model {version!r} not found in {models_dir}; available: "
                           f"{', '.join(available(models_dir))}")
    lineage = json.loads((path / MANIFEST).read_text()).get("lineage", {})
    return ModelRef(version, path, lineage)
