"""Careless and hostile inputs get a MechlabError (or an argparse usage error), never a traceback."""

import os
import time
from pathlib import Path

import pytest
import torch

import mechlab
from mechlab import InputError, ModelNotFoundError, Sweep, UnsupportedArchitectureError
from mechlab.cli import main
from mechlab.files import atomic_dir_sibling, remove_stale
from mechlab.models import gguf
from tests.unit.models.test_sources import write_gguf


@pytest.mark.parametrize(
    "argv",
    [
        ["generate", "toy:tiny", "\udcff"],  # the bytes b"\xff" as Python keeps them from argv
        ["generate", "toy:tiny", "x", "--top-k", "-5"],
        ["generate", "toy:tiny", "x", "--temperature", "-1"],
        ["generate", "toy:tiny", "x", "--max-new-tokens", "0"],
        ["probe", "toy:tiny", "sentiment", "--layers", ","],
        ["attention", "toy:tiny", "x", "--html", "a.html", "--heads", "1,x"],
    ],
    ids=["invalid-utf8", "top-k", "temperature", "max-new-tokens", "empty-layers", "bad-heads"],
)
def test_bad_arguments_are_usage_errors(argv: list[str], capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    assert "error:" in capsys.readouterr().err


@pytest.mark.parametrize(("device", "message"), [("bogus", "is not a device"), ("cuda", "no CUDA device")])
def test_a_device_the_machine_lacks_is_an_input_error(device: str, message: str) -> None:
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(InputError, match=message):
        mechlab.load_model("toy:tiny", device=device)


def test_token_ids_outside_the_vocabulary_and_empty_batches_are_refused(tiny) -> None:
    model, metric = tiny.model, mechlab.LogitDiff(1, 2)
    good = torch.tensor([[1, 2, 3]])
    for bad in (torch.tensor([[1, 2, 999]]), torch.tensor([[-1, 2, 3]])):
        with pytest.raises(InputError, match=r"must lie in 0\.\.49"):
            mechlab.patch(model, good, bad, "z", metric)
    with pytest.raises(InputError, match="at least one prompt"):
        mechlab.patch(model, torch.zeros((0, 3), dtype=torch.long), good, "z", metric)
    with pytest.raises(InputError, match=r"selects nothing"):
        Sweep("z", layers=[])


def test_explain_refuses_an_unknown_detector_before_loading(capsys, tmp_path: Path) -> None:
    assert main(["explain", "toy:tiny", "x", "--detectors", "nope", "--out", str(tmp_path / "r.html")]) == 2
    assert "No detector named 'nope'" in " ".join(capsys.readouterr().err.split())


def test_unreadable_fifo_and_absurd_files_are_named_for_what_they_are(tmp_path: Path, monkeypatch) -> None:
    fifo = tmp_path / "model.gguf"
    os.mkfifo(fifo)
    for source in (str(fifo), f"gguf:{fifo}"):
        with pytest.raises(ModelNotFoundError, match=r"is a FIFO \(named pipe\), not a file"):
            mechlab.load_model(source)
    real = write_gguf(tmp_path / "real.gguf")
    original = Path.open

    def denied(self: Path, *args: object, **kwargs: object):  # type: ignore[no-untyped-def]
        if self == real:
            raise PermissionError(13, "Permission denied")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", denied)
    with pytest.raises(ModelNotFoundError, match="cannot be read: Permission denied"):
        mechlab.load_model(str(real))
    monkeypatch.undo()
    header = gguf.read_header(real)
    long = gguf.GGUFHeader(**{**header.__dict__, "architecture": "x" * 4096})
    with pytest.raises(UnsupportedArchitectureError) as caught:
        gguf.check_supported(long)
    assert "4,096 characters" in str(caught.value) and "x" * 65 not in str(caught.value)


def test_two_builders_of_one_directory_both_succeed(tmp_path: Path) -> None:
    final = tmp_path / "entry"
    with atomic_dir_sibling(final) as mine:
        mine.mkdir()
        (mine / "a").write_text("mine")
        final.mkdir()  # another process renames its complete copy first
        (final / "a").write_text("theirs")
    assert (final / "a").read_text() == "theirs"
    assert [p.name for p in tmp_path.iterdir()] == ["entry"]  # no temporary sibling left


def test_leftovers_of_killed_runs_are_removed_by_name_and_age(tiny, tmp_path: Path) -> None:
    old, new = tmp_path / ".report.html.abc", tmp_path / ".report.html.def"
    old.write_text("left by a killed run")
    new.write_text("another run, still writing")
    (tmp_path / "report.html").write_text("the report")
    day_ago = time.time() - 86_400
    os.utime(old, (day_ago, day_ago))
    assert remove_stale(tmp_path, ".report.html.") == [old]
    assert new.exists() and (tmp_path / "report.html").exists()
    # A capture removes the temporary shards a killed run left; a conversion, its temporary entries.
    shards = tmp_path / "capture"
    shards.mkdir()
    leftover = shards / ".shard-000003.safetensors.x1y2"
    leftover.write_bytes(b"half a shard")
    os.utime(leftover, (day_ago, day_ago))
    mechlab.capture_dataset(tiny.model, torch.tensor([[1, 2, 3]]), ["resid_post.0"], shards)
    assert not leftover.exists()
    entry = tmp_path / "cache" / "abc123"
    stale = tmp_path / "cache" / ".abc123.k3j2"
    stale.mkdir(parents=True)
    os.utime(stale, (day_ago, day_ago))
    with atomic_dir_sibling(entry) as building:
        building.mkdir()
    assert entry.is_dir() and not stale.exists()
