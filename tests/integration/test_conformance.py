"""The conformance matrix: every architecture mechlab loads, against llama.cpp running the same file.

Each architecture's tiny random-weight model is written as GGUF by llama.cpp's own converter (F16 and
Q8_0) and quantizer (K-quants), as operators' files are (``llamacpp_files``), loaded by mechlab and
run by llama.cpp on the same token ids. An F16 file must agree to a mean KL of 1e-3 nats per
position, a quantized one to 0.01 (llama.cpp quantizes activations too), both with top-1 agreement of
at least 90%, and no layer may diverge. The prompts are longer than the Gemma models' sliding window
(4 positions), so windowed and global layers both matter.

``python -m tests.integration.test_conformance`` prints the README's matrix from a fresh run.
"""

import importlib.util
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

import mechlab
from mechlab.models.bundled import bundled_gguf_path
from tests.integration.llamacpp_files import (
    ARCHITECTURES,
    Arch,
    Job,
    convert,
    converter_path,
    save_checkpoint,
)
from tests.integration.llamacpp_files import save_smollm2_tokenizer as save_tokenizer

PROMPTS = (
    "The Eiffel Tower is located in the city of Paris, France.",
    "def fibonacci(n):\n    if n < 2:\n        return n",
)
MAX_KL = {"F16": 1e-3, "quantized": 0.01}
MIN_TOP1 = 0.9

pytestmark = [
    pytest.mark.llamacpp,
    pytest.mark.skipif(
        importlib.util.find_spec("llama_cpp") is None, reason="needs llama-cpp-python (make install-llamacpp)"
    ),
    pytest.mark.skipif(
        not converter_path().is_file(),
        reason=f"needs llama.cpp's converter at {converter_path()} (make install-llamacpp unpacks it)",
    ),
]


def build_matrix(root: Path) -> dict[tuple[str, str], Path]:
    """Every architecture's files under ``root``: ``(name, "F16" | quantized type) → path``.

    The checkpoints are converted in one run of llama.cpp's converter (one torch import for all).
    """
    from mechlab.models.references import llamacpp

    tokenizer = root / "tokenizer"
    tokenizer.mkdir(parents=True)
    save_tokenizer(tokenizer, bundled_gguf_path())
    files: dict[tuple[str, str], Path] = {}
    jobs = []
    for arch in ARCHITECTURES:
        checkpoint = root / arch.name
        save_checkpoint(arch, checkpoint, tokenizer_dir=tokenizer)
        for kind, outtype in (("F16", "f16"), ("Q8_0", "q8_0")):
            if kind == "F16" or arch.quant == kind:
                files[arch.name, kind] = root / f"{arch.name}-{kind}.gguf"
                jobs.append(Job(checkpoint, files[arch.name, kind], outtype, arch.pre_tokenizer))
    convert(jobs)
    for arch in ARCHITECTURES:
        if arch.quant != "Q8_0":
            files[arch.name, arch.quant] = llamacpp.quantize(
                files[arch.name, "F16"], root / f"{arch.name}-{arch.quant}.gguf", arch.quant, threads=2
            )
    return files


@pytest.fixture(scope="session")
def matrix(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Path]:
    return build_matrix(tmp_path_factory.mktemp("conformance"))


def compare(arch: Arch, path: Path) -> mechlab.VerifyReport:
    report = mechlab.verify(str(path), reference="llamacpp", prompts=PROMPTS, max_new_tokens=2, layers=True)
    assert report.n_positions >= 40
    return report


@pytest.mark.parametrize("precision", ["F16", "quantized"])
@pytest.mark.parametrize("arch", ARCHITECTURES, ids=[a.name for a in ARCHITECTURES])
def test_agrees_with_llama_cpp(
    arch: Arch, precision: str, matrix: dict[tuple[str, str], Path], tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setenv("MECHLAB_CACHE_DIR", str(tmp_path / "cache"))
    kind = "F16" if precision == "F16" else arch.quant
    path = matrix[arch.name, kind]
    report = compare(arch, path)
    assert report.mean_kl <= MAX_KL[precision] and report.top1_agreement >= MIN_TOP1, report.summary()
    assert report.first_divergence is None, report.summary()
    info = mechlab.load_model(str(path)).info
    assert info.original_architecture == arch.architecture
    assert kind.removesuffix("_M") in info.quantization  # Q4_K_M: mostly Q4_K tensors


def test_a_gemma3_query_scale_other_than_the_head_size_follows_llama_cpp(
    matrix: dict[tuple[str, str], Path], tmp_path: Path, monkeypatch
) -> None:
    """The Gemma 3 checkpoint scales queries by 48^-0.5 with 32-wide heads; llama.cpp's converter
    writes no key for the scale and llama.cpp uses the head size, and so does the conversion (where
    transformers' loader would take its default, 256)."""
    monkeypatch.setenv("MECHLAB_CACHE_DIR", str(tmp_path / "cache"))
    config = mechlab.load_model(str(matrix["gemma3", "F16"])).model.original_model.config
    assert (config.head_dim, config.query_pre_attn_scalar) == (32, 32)
    assert config.rope_parameters["sliding_attention"]["rope_theta"] == 5000.0
    assert config.layer_types == ["sliding_attention"] * 5 + ["full_attention"]


def main() -> None:
    """Print the README's matrix (markdown) from a fresh build and comparison."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    root = Path(tempfile.mkdtemp(prefix="mechlab-conformance-"))
    os.environ["MECHLAB_CACHE_DIR"] = str(root / "cache")
    try:
        files = build_matrix(root)
        print("| architecture | F16 mean KL | F16 top-1 | quantized | mean KL | top-1 |")
        print("| --- | ---: | ---: | --- | ---: | ---: |")
        for arch in ARCHITECTURES:
            f16, quantized = (compare(arch, files[arch.name, kind]) for kind in ("F16", arch.quant))
            print(
                f"| {arch.name} | {f16.mean_kl:.1e} | {f16.top1_agreement:.0%} | {arch.quant} "
                f"| {quantized.mean_kl:.1e} | {quantized.top1_agreement:.0%} |",
                flush=True,
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
