"""The on-disk cache of detector results.

Detector results depend only on the model's weights, the detector settings and the detector code,
not on the prompt, so they are computed once per model file and reused by later explanations. The
cache key hashes the file's sha256, the settings, and the source of ``mechlab/detectors/*.py``:
editing a detector recomputes its results.
"""

import hashlib
import inspect
import json
from collections.abc import Sequence
from pathlib import Path

from mechlab.detectors import DetectorRegistry, DetectorReport, run_detectors
from mechlab.models.cache import cache_dir
from mechlab.models.load import LoadedModel
from mechlab.types import HookedModel

_DETECTOR_SOURCES = sorted((Path(__file__).resolve().parent.parent / "detectors").glob("*.py"))


def _key(
    sha256: str, names: Sequence[str], n_samples: int, seed: int, registry: DetectorRegistry | None = None
) -> str:
    """The cache key: model, settings, the GGUF conversion's version, mechlab's detector code and each
    requested detector's own source file (a third-party plugin's too), so an edited or upgraded
    detector, or a corrected conversion, is recomputed."""
    from mechlab.models.gguf import CONVERSION_VERSION

    digest = hashlib.sha256(json.dumps([sha256, list(names), n_samples, seed, CONVERSION_VERSION]).encode())
    for path in _DETECTOR_SOURCES:
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    registry = DetectorRegistry.from_entry_points() if registry is None else registry
    for name in names:
        digest.update(name.encode() + b"\0" + _detector_source(registry, name) + b"\0")
    return digest.hexdigest()[:24]


def _detector_source(registry: DetectorRegistry, name: str) -> bytes:
    try:
        entry = registry.entry(name)
        source = inspect.getsourcefile(entry.loader())
    except Exception:  # an unknown or broken plugin: run_detectors reports it, failures are not cached
        return b""
    return str(entry).encode() + b"\0" + (Path(source).read_bytes() if source else b"")


def cached_detectors(
    loaded: LoadedModel | None, model: HookedModel, names: Sequence[str], n_samples: int, seed: int
) -> DetectorReport:
    """``run_detectors`` with the result kept in ``<cache>/detectors/`` for models with a sha256."""
    sha = loaded.info.sha256 if loaded is not None else None
    if sha is None:
        return run_detectors(model, list(names), n_samples=n_samples, seed=seed)
    path = cache_dir() / "detectors" / f"{_key(sha, names, n_samples, seed)}.json"
    if path.is_file():
        try:
            return DetectorReport.load(path)
        except (OSError, ValueError, KeyError):
            path.unlink(missing_ok=True)  # an unreadable entry is recomputed
    report = run_detectors(model, list(names), n_samples=n_samples, seed=seed)
    if not report.failures:
        path.parent.mkdir(parents=True, exist_ok=True)
        report.save(path)
    return report
