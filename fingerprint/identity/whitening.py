"""The search transform of one model version: centring, rotation onto principal axes, fewer dimensions.

A model's fingerprints sit in a narrow cone (two different people are about 0.96 cosine apart): nearly all of a
fingerprint's length is the shared mean direction, and what tells people apart lives in a few hundred directions of
very unequal spread. The transform is FAISS's ``PCAMatrix`` fitted on the model's own fingerprints: it subtracts the
model's mean fingerprint, rotates onto the principal axes and keeps the leading ``d_out`` of them. Centring and
rotation leave L2 distances as they were, and on unit vectors L2 distance orders neighbours exactly as cosine does,
so the approximate index built on the transformed vectors (L2) looks for the same neighbours as the raw cosine, in a
quarter of the dimensions: graphs build and search faster, and the dropped axes carry little of the spread.
``eigen_power=-0.5`` (whitening: every axis scaled to unit variance) is available, but it changes which fingerprints
are nearest, so fewer of the raw nearest neighbours are found (``bench/results/index.md``); 0 (no scaling) is the
default.

It is a property of the model, not of an archive: fitted once per model version on that model's own fingerprints of
data the project calibrates with (never on a benchmark's test data), and stored beside the model's weights as
``search_transform-<model_version>.faiss`` with a JSON sidecar (what it was fitted on, and the file's SHA-256). The
transform only chooses search candidates: the verdict's similarities are re-ranked exactly in the raw space its
thresholds were calibrated on (``fingerprint.identity.index``).

Fit a model's transform with (a slices cohort of people the benchmarks never test; even-numbered people)::

    .venv/bin/python -m fingerprint.identity.whitening --cohort cohorts/<cohort> --d-out 128 [--model <weights>]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from fingerprint.locations import SHIPPED_WEIGHTS_DIR

#: Each principal axis scaled by its eigenvalue to this power (0: rotation only; -0.5: whitening, measured worse).
EIGEN_POWER = 0.0


@dataclass
class SearchTransform:
    """A fitted transform and where it came from."""

    model_version: str
    pca: faiss.PCAMatrix
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def d_out(self) -> int:
        return int(self.pca.d_out)

    def apply(self, vectors: np.ndarray) -> np.ndarray:
        """The transformed vectors (what the approximate index stores), for benchmarks and tests."""
        return self.pca.apply(np.ascontiguousarray(vectors, dtype=np.float32))


def transform_file_names(model_version: str) -> tuple[str, str]:
    """The transform file and its JSON sidecar, named by model version so one folder can hold several."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", model_version)
    return f"search_transform-{safe}.faiss", f"search_transform-{safe}.json"


def fit_search_transform(
    vectors: np.ndarray, model_version: str, d_out: int, eigen_power: float = EIGEN_POWER, source: str = ""
) -> SearchTransform:
    """Fit centring + PCA to ``d_out`` dimensions (scaled by eigenvalue**``eigen_power``) on a model's fingerprints."""
    data = np.ascontiguousarray(vectors, dtype=np.float32)
    if d_out > min(data.shape):
        raise ValueError(f"{len(data)} fingerprints cannot fit {d_out} axes")
    pca = faiss.PCAMatrix(data.shape[1], d_out, eigen_power, False)
    pca.train(data)
    meta = {
        "model_version": model_version,
        "d_in": int(data.shape[1]),
        "d_out": int(d_out),
        "eigen_power": float(eigen_power),
        "fitted_on": source,
        "fingerprints": int(len(data)),
    }
    return SearchTransform(model_version, pca, meta)


def save_search_transform(transform: SearchTransform, folder: Path) -> Path:
    """Write the transform and its sidecar (with the transform file's SHA-256) into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    name, sidecar = transform_file_names(transform.model_version)
    faiss.write_VectorTransform(transform.pca, str(folder / name))
    digest = hashlib.sha256((folder / name).read_bytes()).hexdigest()
    meta = {**transform.meta, "file": name, "sha256": digest}
    (folder / sidecar).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    transform.meta = meta
    return folder / name


def load_search_transform(folder: Path, model_version: str) -> SearchTransform | None:
    """The transform of ``model_version`` stored in ``folder``, or None when there is none.

    A file that does not match its sidecar (torn, replaced, another model's) raises ``ValueError``: an index built with
    the wrong transform would search the wrong space, so it is refused rather than guessed around."""
    name, sidecar = transform_file_names(model_version)
    path, meta_path = Path(folder) / name, Path(folder) / sidecar
    if not path.exists() or not meta_path.exists():
        return None
    meta = json.loads(meta_path.read_text())
    if meta.get("model_version") != model_version:
        raise ValueError(f"{meta_path} is for model {meta.get('model_version')!r}, not {model_version!r}")
    if hashlib.sha256(path.read_bytes()).hexdigest() != meta.get("sha256"):
        raise ValueError(f"{path} does not match the checksum in {meta_path}")
    pca = faiss.read_VectorTransform(str(path))  # already the concrete type, and owning it (no downcast copy)
    if not isinstance(pca, faiss.PCAMatrix) or not pca.is_trained:
        raise ValueError(f"{path} is not a trained PCA matrix")
    return SearchTransform(model_version, pca, meta)


def resolve_search_transform(model_version: str, model_dir: Path | None = None) -> SearchTransform | None:
    """The transform stored beside the model's weights (``model_dir``; None: the shipped weights), else None. An int8
    version uses its float32 model's: the same space, and candidates are re-ranked exactly either way."""
    from fingerprint.model.quantize import base_version

    folder = Path(model_dir) if model_dir is not None else SHIPPED_WEIGHTS_DIR
    if folder.is_file():  # a .safetensors file was given: its folder
        folder = folder.parent
    return load_search_transform(folder, model_version) or load_search_transform(folder, base_version(model_version))


def _cohort_fingerprints(cohort: Path, model_path: Path | None, subjects: str) -> tuple[np.ndarray, str]:
    """Fingerprints of a slices cohort (``cohort generate --format slices``) with the model, for every other subject
    (``even``/``odd``; ``all``) so that a benchmark can draw its own data from the other half."""
    import csv

    from fingerprint.model.fingerprinter import load_model

    rows = list(csv.DictReader((cohort / "cohort.csv").open()))
    subject_ids = sorted({r["subject_id"] for r in rows})
    keep = {s for i, s in enumerate(subject_ids) if subjects == "all" or (i % 2 == 0) == (subjects == "even")}
    chosen = [i for i, r in enumerate(rows) if r["subject_id"] in keep]
    with np.load(cohort / "slices.npz") as npz:
        slices = npz[npz.files[0]][chosen]
    model = load_model(model_path)
    return model.embed(slices), model.model_version


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cohort", type=Path, required=True, help="a slices cohort (cohort generate --kind train)")
    parser.add_argument("--model", type=Path, default=None, help="model weights (default: the shipped ones)")
    parser.add_argument("--out", type=Path, default=None, help="folder to write to (default: beside the weights)")
    parser.add_argument("--d-out", type=int, default=128, help="principal axes kept")
    parser.add_argument("--eigen-power", type=float, default=EIGEN_POWER, help="-0.5: whiten")
    parser.add_argument("--subjects", choices=["even", "odd", "all"], default="even")
    args = parser.parse_args()
    vectors, version = _cohort_fingerprints(args.cohort, args.model, args.subjects)
    params = json.loads((args.cohort / "cohort.json").read_text()).get("parameters", {})
    source = f"{args.cohort} ({args.subjects} subjects, {len(vectors)} fingerprints; {json.dumps(params)})"
    transform = fit_search_transform(vectors, version, args.d_out, args.eigen_power, source=source)
    out = args.out or (args.model.parent if args.model and args.model.is_file() else args.model) or SHIPPED_WEIGHTS_DIR
    print(save_search_transform(transform, out))


if __name__ == "__main__":
    main()
