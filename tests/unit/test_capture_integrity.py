"""A capture on disk is checked, not trusted: resume re-verifies the shards it skips and rewrites a
damaged one; reading back checks every shard and its tokens; a full disk keeps what was written."""

import errno
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

import mechlab
from mechlab import CaptureStoreError, capture_dataset, read_capture
from mechlab.errors import CorruptCaptureError
from mechlab.files import atomic_write
from mechlab.shards import shard_problem

SITES = ["resid_post.0", "z.1.0"]


def _inputs() -> torch.Tensor:
    return torch.randint(0, 50, (8, 6), generator=torch.Generator().manual_seed(5))


def _damage(path: Path, how: str, other: Path) -> None:
    stat = path.stat()
    if how == "deleted":
        path.unlink()
    elif how == "truncated":
        path.write_bytes(path.read_bytes()[:-100])
    elif how == "emptied":
        path.write_bytes(b"")
    elif how == "byte-flipped":  # same size and modification time: only the full hash sees it
        data = bytearray(path.read_bytes())
        data[-5] ^= 0xFF
        path.write_bytes(bytes(data))
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    elif how == "swapped":
        shutil.copyfile(other, path)


@pytest.mark.parametrize("how", ["deleted", "truncated", "emptied", "byte-flipped", "swapped"])
def test_reading_a_damaged_shard_names_it(tiny, tmp_path: Path, how: str) -> None:
    dataset = capture_dataset(tiny.model, _inputs(), SITES, tmp_path, batch_size=2)
    _damage(tmp_path / "shard-000001.safetensors", how, tmp_path / "shard-000002.safetensors")
    with pytest.raises(CorruptCaptureError, match=r"shard-000001\.safetensors"):
        read_capture(tmp_path).stack("resid_post.0")
    assert dataset.complete  # the object in hand is unchanged; the files are what is checked


@pytest.mark.parametrize("how", ["deleted", "truncated", "emptied", "byte-flipped", "swapped"])
def test_resume_rewrites_a_damaged_shard(tiny, tmp_path: Path, how: str) -> None:
    reference = capture_dataset(tiny.model, _inputs(), SITES, tmp_path / "ref", batch_size=2)
    run = tmp_path / "run"
    capture_dataset(tiny.model, _inputs(), SITES, run, batch_size=2)
    _damage(run / "shard-000001.safetensors", how, run / "shard-000002.safetensors")
    manifest = json.loads((run / "manifest.json").read_text())
    found = shard_problem(run, manifest["shards"][1], full=True)
    assert found is not None
    verify = how == "byte-flipped"  # size and modification time unchanged: needs the full hash
    resumed = capture_dataset(tiny.model, _inputs(), SITES, run, batch_size=2, verify_shards=verify)
    for site in ("resid_post.0", "z.1.0", "tokens"):
        assert torch.equal(read_capture(run).stack(site), reference.stack(site))
    assert all(shard_problem(run, s, full=True) is None for s in resumed.manifest["shards"])


def test_a_manifest_that_is_not_json_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(CorruptCaptureError, match="is not a readable capture manifest"):
        read_capture(tmp_path)


def test_a_full_disk_keeps_what_was_written_and_the_run_resumes(tiny, tmp_path: Path, monkeypatch) -> None:
    import mechlab.shards as shards

    writes = {"n": 0}

    def full_after_two(path: Path, data: str | bytes) -> Path:
        if str(path).endswith(".safetensors"):
            writes["n"] += 1
            if writes["n"] == 3:
                raise OSError(errno.ENOSPC, "No space left on device")
        return atomic_write(path, data)

    monkeypatch.setattr(shards, "atomic_write", full_after_two)
    with pytest.raises(CaptureStoreError, match=r"writing shard 2 failed .*No space left.*resume"):
        capture_dataset(tiny.model, _inputs(), SITES, tmp_path, batch_size=2)
    assert len(json.loads((tmp_path / "manifest.json").read_text())["shards"]) == 2
    monkeypatch.undo()
    done = capture_dataset(tiny.model, _inputs(), SITES, tmp_path, batch_size=2)
    assert done.complete and len(done) == 8 and isinstance(done, mechlab.CaptureDataset)
