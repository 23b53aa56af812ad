import dataclasses
import json
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch

import mechlab
from mechlab import (
    CorruptModelError,
    ModelNotFoundError,
    OllamaModelNotFoundError,
    SourceError,
    UnsupportedArchitectureError,
)
from mechlab.models import ollama
from mechlab.models.load import resolve_source


def write_gguf(path: Path, arch: str = "llama") -> Path:
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.ones((8, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_unknown_scheme_lists_the_sources() -> None:
    with pytest.raises(
        SourceError, match=r"(?s)Unknown scheme 'bogus': known schemes are .*gguf:.*ollama:NAME\[:TAG\]"
    ):
        mechlab.load_model("bogus:thing")


def test_empty_source() -> None:
    with pytest.raises(SourceError, match="The source is empty"):
        mechlab.load_model("  ")


def test_missing_gguf_path(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        mechlab.load_model(str(tmp_path / "model.gguf"))
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        mechlab.load_model(f"gguf:{tmp_path / 'other.gguf'}")


def test_not_a_gguf_file(tmp_path: Path) -> None:
    path = tmp_path / "notes.gguf"
    path.write_text("just some text, not a model")
    with pytest.raises(CorruptModelError, match=r"is not a GGUF file: its first four bytes are b'just'"):
        mechlab.load_model(str(path))


def test_truncated_gguf(tmp_path: Path) -> None:
    whole = write_gguf(tmp_path / "whole.gguf").read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(whole[: len(whole) - 40])
    with pytest.raises(CorruptModelError, match=r"probably truncated or damaged \(size"):
        mechlab.load_model(str(cut))


def test_unsupported_gguf_architecture_names_it_and_the_supported_ones(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MECHLAB_CACHE_DIR", str(tmp_path / "cache"))
    path = write_gguf(tmp_path / "m.gguf", arch="rwkv6")
    with pytest.raises(UnsupportedArchitectureError, match=r"(?s)holds a 'rwkv6' model.*llama.*qwen2"):
        mechlab.load_model(str(path))


@pytest.fixture
def no_conversion(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh cache directory, returned, and a ``gguf.convert`` that fails the test if called."""
    from mechlab.models import gguf as gguf_module

    def convert(*args: object, **kwargs: object) -> None:
        raise AssertionError("the architecture check must run before the conversion")

    monkeypatch.setenv("MECHLAB_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(gguf_module, "convert", convert)
    return tmp_path / "cache"


def converted_entries(cache: Path) -> list[Path]:
    models = cache / "models"
    return sorted(models.iterdir()) if models.is_dir() else []


@pytest.mark.parametrize("arch", ["t5", "t5encoder"])
def test_encoder_decoder_gguf_is_refused_before_conversion(
    tmp_path: Path, no_conversion: Path, arch: str
) -> None:
    path = write_gguf(tmp_path / "m.gguf", arch=arch)
    with pytest.raises(
        UnsupportedArchitectureError,
        match=rf"(?s)holds a '{arch}' model \(transformers model type 't5'\), and transformers has no causal "
        r"language model class.*GGUF architectures mechlab can load: .*llama.*qwen2",
    ):
        mechlab.load_model(str(path))
    assert converted_entries(no_conversion) == []


def test_gguf_transformer_lens_cannot_hook_is_refused_before_conversion(
    tmp_path: Path, no_conversion: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from transformer_lens.factories.architecture_adapter_factory import SUPPORTED_ARCHITECTURES

    monkeypatch.delitem(SUPPORTED_ARCHITECTURES, "LlamaForCausalLM")
    path = write_gguf(tmp_path / "m.gguf", arch="llama")
    with pytest.raises(
        UnsupportedArchitectureError,
        match=r"(?s)holds a 'llama' model, which transformers loads as LlamaForCausalLM, and TransformerLens "
        r"\S+ has no adapter for LlamaForCausalLM.*can load: .*qwen2",
    ) as info:
        mechlab.load_model(str(path))
    assert "'llama'," not in str(info.value).rpartition("can load:")[2]
    assert converted_entries(no_conversion) == []


def test_llama_cpp_names_are_checked_as_transformers_renames_them(tmp_path: Path) -> None:
    from mechlab.models import gguf as gguf_module

    for arch in ("qwen2moe", "qwen3moe", "gpt-oss", "gemma3", "llama"):
        gguf_module.check_supported(gguf_module.read_header(write_gguf(tmp_path / f"{arch}.gguf", arch=arch)))
    assert {"qwen2moe", "gpt-oss", "llama"} <= set(gguf_module.supported_architectures())
    assert "t5" not in gguf_module.supported_architectures()


@pytest.mark.parametrize(
    "arch",
    ["llama", "qwen2", "qwen2moe", "qwen3moe", "gpt-oss", "minimax-m2", "gemma3", "gemma4", "t5", "phi3"],
)
def test_model_type_agrees_with_transformers_gguf_loader(tmp_path: Path, arch: str) -> None:
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    from mechlab.models.gguf import model_type
    from mechlab.models.hf import quiet_transformers

    path = write_gguf(tmp_path / f"{arch}.gguf", arch=arch)
    with quiet_transformers():
        parsed = load_gguf_checkpoint(str(path), return_tensors=False)
    assert model_type(arch) == parsed["config"]["model_type"]


def test_a_converted_copy_that_fails_to_load_is_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mechlab.models import gguf as gguf_module

    def convert_without_weights(
        path: Path, header: gguf_module.GGUFHeader, out: Path, **kwargs: object
    ) -> None:
        out.mkdir()
        (out / "config.json").write_text(json.dumps({"model_type": "llama"}))
        (out / gguf_module.HEADER_FILE).write_text(json.dumps(dataclasses.asdict(header)))

    monkeypatch.setenv("MECHLAB_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(gguf_module, "convert", convert_without_weights)
    path = write_gguf(tmp_path / "m.gguf", arch="llama")
    with pytest.raises(CorruptModelError, match="no weights"):
        mechlab.load_model(str(path))
    assert converted_entries(tmp_path / "cache") == []


def test_hf_dir_without_weights(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(CorruptModelError, match=r"has config\.json but no weights"):
        mechlab.load_model(str(tmp_path))


def test_directory_that_is_no_model(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match=r"expected .*config\.json"):
        mechlab.load_model(str(tmp_path))


def test_resolve_classifies_sources(tmp_path: Path) -> None:
    assert resolve_source("toy:tiny") == ("toy", "tiny")
    assert resolve_source("hf:org/name") == ("hub", "org/name")
    assert resolve_source("gpt2") == ("hub", "gpt2")
    assert resolve_source(str(tmp_path)) == ("hf", str(tmp_path))


def make_store(root: Path, blob_bytes: bytes, name: str = "smollm2", tag: str = "135m") -> Path:
    """An Ollama model store laid out as `ollama pull` leaves it."""
    import hashlib

    digest = hashlib.sha256(blob_bytes).hexdigest()
    (root / "blobs").mkdir(parents=True)
    (root / "blobs" / f"sha256-{digest}").write_bytes(blob_bytes)
    (root / "blobs" / "sha256-0000").write_text("{}")
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": "sha256:0000"},
        "layers": [
            {
                "mediaType": "application/vnd.ollama.image.model",
                "digest": f"sha256:{digest}",
                "size": len(blob_bytes),
            },
            {"mediaType": "application/vnd.ollama.image.template", "digest": "sha256:0000", "size": 2},
        ],
    }
    path = root / "manifests" / "registry.ollama.ai" / "library" / name / tag
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(manifest))
    return root / "blobs" / f"sha256-{digest}"


def test_ollama_resolution(tmp_path: Path, monkeypatch) -> None:
    blob = make_store(tmp_path, b"GGUF-bytes")
    monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path))
    assert ollama.resolve("smollm2:135m") == blob
    assert ollama.list_models() == ["smollm2:135m"]
    with pytest.raises(
        OllamaModelNotFoundError, match=r"(?s)llama3:latest not found.*Models in .*: smollm2:135m"
    ):
        mechlab.load_model("ollama:llama3")


def test_ollama_names() -> None:
    assert ollama.parse_name("smollm2") == ("registry.ollama.ai", "library", "smollm2", "latest")
    assert ollama.parse_name("user/model:q4") == ("registry.ollama.ai", "user", "model", "q4")
    with pytest.raises(SourceError, match="Malformed Ollama model name"):
        ollama.parse_name("a/b/c/d")


def test_toy_presets_and_overrides() -> None:
    model, tokenizer, info = mechlab.load_model("toy:attn-only-2l,seed=1,d_vocab=32")
    assert tokenizer is None
    assert (info.n_layers, info.n_heads, info.d_vocab, info.kind) == (2, 4, 32, "toy")
    assert model(torch.tensor([[1, 2, 3]])).shape == (1, 3, 32)


def test_toy_seed_determines_weights() -> None:
    tokens = torch.tensor([[1, 2, 3, 4]])
    a = mechlab.load_model("toy:tiny,seed=3").model(tokens)
    b = mechlab.load_model("toy:tiny,seed=3").model(tokens)
    c = mechlab.load_model("toy:tiny,seed=4").model(tokens)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_toy_unknown_preset() -> None:
    with pytest.raises(SourceError, match=r"Unknown toy preset .*'nope'.*attn-only-2l"):
        mechlab.load_model("toy:nope")


def test_toy_checkpoint_round_trip(tmp_path: Path) -> None:
    from mechlab.toy.model import parse_spec

    config = parse_spec("tiny,seed=5")
    original = mechlab.load_model("toy:tiny,seed=5").model
    mechlab.save_toy(original, config, tmp_path / "ckpt")
    loaded = mechlab.load_model(f"toy:{tmp_path / 'ckpt'}")
    tokens = torch.tensor([[5, 4, 3, 2, 1]])
    assert torch.equal(loaded.model(tokens), original(tokens))
    assert loaded.info.path == str(tmp_path / "ckpt")


def test_a_symlink_loop_is_refused_with_an_error_not_a_traceback(tmp_path: Path) -> None:
    (tmp_path / "b.gguf").symlink_to(tmp_path / "a.gguf")
    (tmp_path / "a.gguf").symlink_to(tmp_path / "b.gguf")
    with pytest.raises(ModelNotFoundError, match=r"symbolic link that never reaches a file"):
        mechlab.load_model(str(tmp_path / "a.gguf"))
    with pytest.raises(ModelNotFoundError, match=r"does not exist"):
        mechlab.load_model(f"gguf:{tmp_path / 'a.gguf'}")
