"""Tiny random-weight models of every architecture mechlab loads, made into GGUF by llama.cpp's tools.

Operators' GGUF files come from llama.cpp's converter (``convert_hf_to_gguf.py``) and quantizer, so
the conformance matrix (``test_conformance.py``) makes its files the same way: a tiny seeded
transformers checkpoint is saved with ``save_pretrained``, converted to F16 (or Q8_0, gguf-py's
quantizer) by the converter llama-cpp-python's source distribution ships (``make install-llamacpp``
unpacks it to ``.venv/llama.cpp``), and quantized to K-quants by llama.cpp's quantizer
(``mechlab.models.references.llamacpp.quantize``, its ``llama_model_quantize``).

The checkpoints carry a 2,048-token slice of SmolLM2's byte-level BPE vocabulary (Gemma 2's converter
insists on SentencePiece, so it gets a small SentencePiece model trained here instead). The converter
recognises a pre-tokenizer by hashing the token ids of a test text, a hash a sliced vocabulary
cannot match, so ``python -m tests.integration.llamacpp_files`` runs the converter with the
pre-tokenizer's name given instead (the one the checkpoint's tokenizer really applies). Tokenization
plays no part in the comparison: mechlab tokenizes, and llama.cpp runs the same token ids.
"""

import dataclasses
import json
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

VOCAB = 2048  # the first tokens of SmolLM2's vocabulary, with the merges among them
SPM_VOCAB = 1024
# K-quants pack rows in blocks of 256 values, so every matrix's input width is a multiple of 256.
HIDDEN, FFN = 256, 512
CONVERTER_ENV = "MECHLAB_LLAMACPP_CONVERTER"
TOKEN_SCALE_SPREAD = 0.75  # the log-normal spread of the output rows' norms (see _randomize)


def converter_path() -> Path:
    """Where ``make install-llamacpp`` unpacks llama.cpp's ``convert_hf_to_gguf.py`` (or
    ``$MECHLAB_LLAMACPP_CONVERTER``)."""
    override = os.environ.get(CONVERTER_ENV)
    return Path(override) if override else Path(sys.prefix) / "llama.cpp" / "convert_hf_to_gguf.py"


@dataclasses.dataclass(frozen=True)
class Arch:
    """One row of the matrix: an architecture, how its tiny checkpoint is built, and its quantized type."""

    name: str  # the matrix row, and the files' stem
    build: Callable[[], Any]
    quant: str  # "Q8_0" (the converter, gguf-py) or a llama.cpp file type such as "Q4_K_M"
    gguf_arch: str = ""  # the general.architecture the converter writes, when not ``name``
    pre_tokenizer: str = "smollm"
    sentencepiece: bool = False

    @property
    def architecture(self) -> str:
        return self.gguf_arch or self.name


def _randomize(model: Any) -> Any:
    """Norm weights moved away from their initial values, so a mishandled norm shows; the rows of
    the output matrix scaled by log-normal factors, as trained models' are. A freshly initialized
    model's logits are Gaussian, so its top two candidates are often near-ties that llama.cpp's
    activation quantization reorders; with heavier-tailed logits top-1 agreement measures the
    conversion rather than rounding (on the quantized files here: 93-100% instead of 89-100%)."""
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "norm" in name or ".ln_" in name:
                parameter.add_(torch.randn_like(parameter) * 0.2)
        unembed = model.get_output_embeddings().weight
        unembed.mul_(torch.exp(torch.randn(unembed.shape[0], 1) * TOKEN_SCALE_SPREAD))
    return model.eval()


def _common(**overrides: Any) -> dict[str, Any]:
    return {
        "hidden_size": HIDDEN,
        "intermediate_size": FFN,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 256,
        "vocab_size": VOCAB,
        "rms_norm_eps": 1e-6,
        **overrides,
    }


def _llama() -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(LlamaConfig(**_common(tie_word_embeddings=False, rope_theta=50000.0)))


def _llama3_rope() -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    # Llama 3's RoPE scaling, which llama.cpp's converter stores as a rope_freqs tensor; an original
    # context of 16 positions puts the scaled frequencies within reach of short prompts.
    rope = {
        "rope_type": "llama3",
        "rope_theta": 10000.0,
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 16,
    }
    return LlamaForCausalLM(LlamaConfig(**_common(tie_word_embeddings=True), rope_parameters=rope))


def _mistral() -> Any:
    from transformers import MistralConfig, MistralForCausalLM

    return MistralForCausalLM(MistralConfig(**_common(tie_word_embeddings=False, sliding_window=None)))


def _qwen2() -> Any:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    model = Qwen2ForCausalLM(Qwen2Config(**_common(tie_word_embeddings=True)))
    for layer in model.model.layers:  # Qwen2's q/k/v biases, large enough to matter
        for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
            torch.nn.init.normal_(proj.bias, std=0.5)
    return model


def _qwen3() -> Any:
    from transformers import Qwen3Config, Qwen3ForCausalLM

    # A head size other than hidden / heads, as in Qwen3-0.6B (1024 / 16 = 64, head_dim 128).
    return Qwen3ForCausalLM(
        Qwen3Config(**_common(num_attention_heads=8, tie_word_embeddings=True), head_dim=64)
    )


def _gemma2() -> Any:
    from transformers import Gemma2Config, Gemma2ForCausalLM

    config = Gemma2Config(
        **_common(vocab_size=SPM_VOCAB),
        head_dim=64,
        query_pre_attn_scalar=64,
        sliding_window=4,  # shorter than the prompts, so the first layer's window cuts
        attn_logit_softcapping=5.0,
        final_logit_softcapping=3.0,
    )
    return Gemma2ForCausalLM(config)


def _gemma3() -> Any:
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    config = Gemma3TextConfig(
        # six layers: five sliding-window layers, then a global one (llama.cpp's default pattern)
        **_common(num_hidden_layers=6, num_attention_heads=8),
        head_dim=32,
        query_pre_attn_scalar=48,
        sliding_window=4,
        rope_parameters={
            "sliding_attention": {"rope_type": "default", "rope_theta": 5000.0},
            "full_attention": {"rope_type": "default", "rope_theta": 50000.0},
        },
    )
    return Gemma3ForCausalLM(config)


def _phi3() -> Any:
    from transformers import Phi3Config, Phi3ForCausalLM

    return Phi3ForCausalLM(Phi3Config(**_common(tie_word_embeddings=False), pad_token_id=0))


def _gpt2() -> Any:
    from transformers import GPT2Config, GPT2LMHeadModel

    # llama.cpp's converter reads the context length from n_ctx and takes the MLP width to be 4 × n_embd.
    config = GPT2Config(vocab_size=VOCAB, n_embd=HIDDEN, n_layer=2, n_head=4, n_positions=256, n_ctx=256)
    return GPT2LMHeadModel(config)


ARCHITECTURES = (
    Arch("llama", _llama, "Q4_K_M"),
    Arch("llama3-rope", _llama3_rope, "Q6_K", gguf_arch="llama"),
    Arch("mistral", _mistral, "Q8_0", gguf_arch="llama"),  # llama.cpp has no "mistral" architecture
    # transformers gives a qwen2 checkpoint its Qwen2Tokenizer, which splits text with Qwen2's regex.
    Arch("qwen2", _qwen2, "Q6_K", pre_tokenizer="qwen2"),
    Arch("qwen3", _qwen3, "Q4_K_M"),
    Arch("gemma2", _gemma2, "Q8_0", sentencepiece=True),
    Arch("gemma3", _gemma3, "Q4_K_M"),
    Arch("phi3", _phi3, "Q5_K_M"),
    Arch("gpt2", _gpt2, "Q8_0"),
)


def tiny_model(arch: Arch, seed: int = 0) -> Any:
    """The tiny seeded transformers model of ``arch`` (see ``_randomize``)."""
    torch.manual_seed(seed)
    return _randomize(arch.build())


def save_smollm2_tokenizer(out: Path, source: Path) -> None:
    """A byte-level BPE tokenizer of SmolLM2's first ``VOCAB`` tokens (and the merges among them)."""
    import gguf
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    reader = gguf.GGUFReader(str(source))
    tokens = reader.fields["tokenizer.ggml.tokens"].contents()[:VOCAB]
    token_types = reader.fields["tokenizer.ggml.token_type"].contents()[:VOCAB]
    known = set(tokens)
    merges = []
    for merge in reader.fields["tokenizer.ggml.merges"].contents():
        left, _, right = merge.partition(" ")
        if left in known and right in known and left + right in known:
            merges.append((left, right))
    tokenizer = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    control = [t for t, kind in zip(tokens, token_types, strict=True) if kind == gguf.TokenType.CONTROL]
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        unk_token="<|endoftext|>",
        additional_special_tokens=[
            t for t in control if t not in ("<|im_start|>", "<|im_end|>", "<|endoftext|>")
        ],
    )
    fast.save_pretrained(str(out))
    config_file = out / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    config["tokenizer_class"] = "GPT2Tokenizer"  # Phi-3's converter takes the BPE path only for this
    config_file.write_text(json.dumps(config, indent=2))


def save_sentencepiece_tokenizer(out: Path, text: Sequence[str]) -> None:
    """A small SentencePiece BPE model trained on ``text`` (byte fallback, so it encodes anything)."""
    import io

    import sentencepiece

    buffer = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(text),
        model_writer=buffer,
        vocab_size=SPM_VOCAB,
        model_type="bpe",
        byte_fallback=True,
        num_threads=1,
        pad_id=0,
        eos_id=1,
        bos_id=2,
        unk_id=3,
        minloglevel=2,
    )
    (out / "tokenizer.model").write_bytes(buffer.getvalue())


def _vocabulary_text(tokenizer_dir: Path) -> list[str]:
    """The BPE vocabulary's tokens as plain text, 16 to a line: a fixed corpus for SentencePiece."""
    vocab = json.loads((tokenizer_dir / "tokenizer.json").read_text())["model"]["vocab"]
    words = [token.replace("Ġ", " ").replace("Ċ", "\n") for token in sorted(vocab, key=vocab.get)]
    return ["".join(words[i : i + 16]) for i in range(0, len(words), 16)]


def save_checkpoint(arch: Arch, out: Path, *, tokenizer_dir: Path) -> Any:
    """Save ``arch``'s tiny model and a tokenizer the converter accepts into ``out``; return the model.

    ``tokenizer_dir`` holds the BPE tokenizer (``save_smollm2_tokenizer``); a SentencePiece model is
    trained on its vocabulary where the converter needs one.
    """
    import shutil

    model = tiny_model(arch)
    model.save_pretrained(str(out))
    if arch.sentencepiece:
        save_sentencepiece_tokenizer(out, _vocabulary_text(tokenizer_dir))
    else:
        for file in tokenizer_dir.iterdir():
            shutil.copy(file, out / file.name)
    return model


@dataclasses.dataclass(frozen=True)
class Job:
    """One run of llama.cpp's converter."""

    checkpoint: Path
    out: Path
    outtype: str  # f16, f32, q8_0
    pre_tokenizer: str


def convert(jobs: Sequence[Job], *, timeout: float = 300) -> None:
    """Run llama.cpp's converter on each job, in one subprocess (one torch import for all).

    Raises:
        RuntimeError: the converter failed; the message holds the end of its output.
    """
    spec = [
        {**dataclasses.asdict(job), "checkpoint": str(job.checkpoint), "out": str(job.out)} for job in jobs
    ]
    result = subprocess.run(
        [sys.executable, "-m", "tests.integration.llamacpp_files", str(converter_path()), json.dumps(spec)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=Path(__file__).resolve().parents[2],
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"llama.cpp's converter failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}")


def _run_converter(converter: Path, jobs: list[dict[str, str]]) -> None:
    """Import llama.cpp's converter and run its ``main`` on each job, naming the pre-tokenizer."""
    import importlib

    sys.path.insert(0, str(converter.parent))
    module = importlib.import_module(converter.stem)
    from conversion.base import TextModel  # llama.cpp's converter package, beside the script

    for job in jobs:
        TextModel.get_vocab_base_pre = lambda self, tokenizer, name=job["pre_tokenizer"]: name  # type: ignore[method-assign]
        # general.name stays neutral: llama.cpp gives a model named like "phi3" Phi-3's special-token
        # attributes, which look up tokens ("</s>", "<unk>") the sliced vocabulary does not have.
        sys.argv = [str(converter), job["checkpoint"], "--outfile", job["out"], "--outtype", job["outtype"]]
        sys.argv += ["--model-name", "tiny-random"]
        module.main()


if __name__ == "__main__":
    _run_converter(Path(sys.argv[1]), json.loads(sys.argv[2]))
