"""Fidelity check: does the hooked model compute what the original model computes?

``verify`` runs fixed prompts through the hooked model and through an independent reference and
compares their next-token distributions at every position and their greedy continuations:

- ``reference="transformers"`` (default): a fresh transformers model loaded straight from the same
  GGUF file or directory, never wrapped by TransformerLens. In float32 the two agree to ~5e-5 in
  log-probability; a larger gap means the conversion, the cache or the hooks changed the model.
- ``reference="llamacpp"``: llama.cpp itself on the same GGUF file and token ids
  (``mechlab.models.references.llamacpp``). It quantizes activations, so the criterion is a mean KL
  of at most 0.01 nats per position and top-1 agreement of at least 90%; greedy continuations are
  reported (a near-tie may go either way). With ``layers=True`` it also compares llama.cpp's
  intermediate tensors with the hook points, layer by layer (``LayerAgreement``), so a disagreement
  shows where it starts.
"""

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from mechlab.errors import InputError
from mechlab.hooks import hooked, recorder
from mechlab.models import decoding
from mechlab.models.gguf import check_supported, load_causal_lm, read_header, strip_quantization
from mechlab.models.hf import quiet_transformers
from mechlab.models.load import LoadedModel, load_model, resolve_source
from mechlab.models.references import llamacpp
from mechlab.sites import Site

DEFAULT_PROMPTS: tuple[str, ...] = (
    "The Eiffel Tower is located in the city of",
    "When Mary and John went to the store, John gave a drink to",
    "def fibonacci(n):\n    if n < 2:\n        return",
    "Water boils at a temperature of",
)
DEFAULT_TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-6}
LOW_PRECISION_TOLERANCE = 0.1
# Relative error against llama.cpp beyond which a layer counts as diverging. llama.cpp's activation
# quantization alone stays under 8% on SmolLM2 Q4_1 (residual stream ≤ 3.1%, attention and MLP outputs
# ≤ 7.6%); one block's attention output off by half gives 50% there.
LAYER_TOLERANCE = 0.15
LAYER_KINDS: tuple[str, ...] = tuple(llamacpp.LAYER_TENSORS)


@dataclasses.dataclass(frozen=True)
class LayerAgreement:
    """One block's relative error against llama.cpp per kind (``attn_out``, ``resid_mid``,
    ``mlp_out``, ``resid_post``): ``‖ours − theirs‖ / ‖theirs‖`` at each position, averaged over the
    positions of every prompt (so the first token's large residual norm does not hide the rest);
    ``None`` where llama.cpp names no such tensor for this architecture."""

    layer: int
    errors: dict[str, float | None]

    @property
    def diverges(self) -> bool:
        """A tensor beyond ``LAYER_TOLERANCE``, or not finite (NaN compares false with everything)."""
        return any(error is not None and not error <= LAYER_TOLERANCE for error in self.errors.values())


@dataclasses.dataclass(frozen=True)
class GenerationPair:
    prompt: str
    hooked: str
    reference: str

    @property
    def agree(self) -> bool:
        return self.hooked == self.reference


@dataclasses.dataclass(frozen=True)
class VerifyReport:
    """Agreement between the hooked model and its reference over ``n_positions`` positions."""

    source: str
    reference: str
    n_prompts: int
    n_positions: int
    max_abs_dlogprob: float
    mean_kl: float
    max_kl: float
    top1_agreement: float
    generations: tuple[GenerationPair, ...]
    tolerance: float
    seconds: float
    runtime: bool = False  # compared with llama.cpp: judged by mean KL and top-1, not exactness
    layers: tuple[LayerAgreement, ...] = ()

    @property
    def first_divergence(self) -> int | None:
        """The first layer with a tensor that differs from llama.cpp's by more than
        ``LAYER_TOLERANCE`` (``None``: none does, or layers were not compared)."""
        return next((row.layer for row in self.layers if row.diverges), None)

    @property
    def generation_agreement(self) -> float:
        return sum(g.agree for g in self.generations) / max(len(self.generations), 1)

    @property
    def passed(self) -> bool:
        if self.runtime:
            return self.mean_kl <= self.tolerance and self.top1_agreement >= llamacpp.MIN_TOP1
        return (
            self.max_abs_dlogprob <= self.tolerance
            and self.top1_agreement == 1.0
            and self.generation_agreement == 1.0
        )

    def summary(self) -> str:
        verdict = "PASS" if self.passed else "FAIL"
        if self.runtime:
            measured = (
                f"KL mean {self.mean_kl:.2e} (tolerance {self.tolerance:.0e}) / max {self.max_kl:.2e} "
                f"nats, top-1 agreement {self.top1_agreement:.1%} (at least {llamacpp.MIN_TOP1:.0%}), "
                f"max |Δ log-prob| {self.max_abs_dlogprob:.2e}"
            )
        else:
            measured = (
                f"max |Δ log-prob| {self.max_abs_dlogprob:.2e} (tolerance {self.tolerance:.0e}), KL mean "
                f"{self.mean_kl:.2e} / max {self.max_kl:.2e} nats, top-1 agreement {self.top1_agreement:.1%}"
            )
        text = (
            f"{verdict}: hooked model vs {self.reference} on {self.n_prompts} prompts "
            f"({self.n_positions} positions): {measured}, greedy generations identical "
            f"{self.generation_agreement:.0%}"
        )
        if self.layers:
            worst = max(error for row in self.layers for error in row.errors.values() if error is not None)
            first = self.first_divergence
            text += (
                f"; every layer's tensors within {worst:.1%} of llama.cpp's"
                if first is None
                else f"; the tensors first differ beyond {LAYER_TOLERANCE:.0%} at layer {first}"
            )
        return text

    def page(self) -> Any:
        """The layer-by-layer comparison as an offline page (``mechlab.Page``): a table and a plot."""
        from mechlab.render.figures import lines
        from mechlab.render.page import Page

        page = Page("mechlab verify", subtitle=self.source)
        section = page.section("Agreement", self.summary())
        if not self.layers:
            return page
        kinds = [k for k in LAYER_KINDS if any(row.errors.get(k) is not None for row in self.layers)]
        series: dict[str, Sequence[float]] = {
            k: [float("nan") if (e := row.errors.get(k)) is None else e for row in self.layers] for k in kinds
        }
        fig = lines(
            series,
            title=f"Relative error against {self.reference}, per layer",
            xlabel="layer",
            ylabel="‖ours − llama.cpp‖ / ‖llama.cpp‖",
        )
        fig.axes[0].set_yscale("log")
        fig.axes[0].axhline(LAYER_TOLERANCE, color="red", linestyle="--", linewidth=1)
        section.figure(fig, alt="relative error per layer and kind")
        rows = [
            [row.layer, *(_percent(row.errors.get(k)) for k in kinds), "diverges" if row.diverges else ""]
            for row in self.layers
        ]
        section.table(["layer", *kinds, ""], rows, caption=f"dashed line: {LAYER_TOLERANCE:.0%}")
        return page

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data.update(
            passed=self.passed,
            generation_agreement=self.generation_agreement,
            first_divergence=self.first_divergence,
        )
        return data


def relative_error(ours: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """``‖ours − reference‖ / ‖reference‖`` at each position (over the last axis)."""
    return (ours - reference).norm(dim=-1) / reference.norm(dim=-1).clamp_min(1e-30)


def kl_divergence(reference: torch.Tensor, ours: torch.Tensor) -> torch.Tensor:
    """KL(reference ‖ ours) at each position, from log-probabilities over the last axis."""
    return (reference.exp() * (reference - ours)).sum(-1)


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{value:.2%}"


@dataclasses.dataclass
class _Tally:
    """Per-prompt agreement of the hooked model's log-probabilities ``[pos, d_vocab]`` with a
    reference's, and the greedy continuations, gathered into a ``VerifyReport``."""

    dlogprob: list[float] = dataclasses.field(default_factory=list)
    kls: list[torch.Tensor] = dataclasses.field(default_factory=list)
    top1: list[torch.Tensor] = dataclasses.field(default_factory=list)
    generations: list[GenerationPair] = dataclasses.field(default_factory=list)
    # (kind, layer) → [Σ relative error over positions, number of positions] over prompts
    layer_sums: dict[tuple[str, int], list[float]] = dataclasses.field(default_factory=dict)

    def add_layers(
        self, ours: dict[tuple[str, int], torch.Tensor], theirs: dict[tuple[str, int], Any]
    ) -> None:
        for key, ref in theirs.items():
            if key in ours:
                ref_t = torch.as_tensor(ref, dtype=torch.float64)
                if ref_t.shape != ours[key].shape:
                    raise InputError(
                        f"llama.cpp's {key[0]} at layer {key[1]} has shape {tuple(ref_t.shape)}, the hook's "
                        f"{tuple(ours[key].shape)}: they cannot be compared. Compare logits only "
                        "(drop --layers)."
                    )
                per_position = relative_error(ours[key], ref_t)
                sums = self.layer_sums.setdefault(key, [0.0, 0.0])
                sums[0] += float(per_position.sum())
                sums[1] += per_position.numel()

    def layer_rows(self, n_layers: int) -> tuple[LayerAgreement, ...]:
        def error(kind: str, layer: int) -> float | None:
            sums = self.layer_sums.get((kind, layer))
            return None if sums is None else sums[0] / sums[1]

        return tuple(
            LayerAgreement(layer, {kind: error(kind, layer) for kind in LAYER_KINDS})
            for layer in range(n_layers)
            if any((kind, layer) in self.layer_sums for kind in LAYER_KINDS)
        )

    def add(self, ours: torch.Tensor, ref: torch.Tensor) -> None:
        self.dlogprob.append((ours - ref).abs().amax().item())
        self.kls.append(kl_divergence(ref, ours))
        self.top1.append((ours.argmax(-1) == ref.argmax(-1)).float())

    def report(
        self, loaded: LoadedModel, reference: str, *, tolerance: float, start: float, runtime: bool = False
    ) -> "VerifyReport":
        all_kl = torch.cat(self.kls)
        return VerifyReport(
            source=loaded.info.source,
            reference=reference,
            n_prompts=len(self.dlogprob),
            n_positions=int(all_kl.numel()),
            max_abs_dlogprob=max(self.dlogprob),
            mean_kl=all_kl.mean().item(),
            max_kl=all_kl.max().item(),
            top1_agreement=torch.cat(self.top1).mean().item(),
            generations=tuple(self.generations),
            tolerance=tolerance,
            seconds=round(time.perf_counter() - start, 2),
            runtime=runtime,
            layers=self.layer_rows(int(loaded.model.cfg.n_layers)),
        )


def load_reference(source: str) -> tuple[Any, str]:
    """An independent transformers model for ``source`` (float32, CPU) and a description of it."""
    from transformers import AutoModelForCausalLM

    kind, target = resolve_source(source)
    if kind == "toy":
        raise InputError(
            "Toy models are TransformerLens-native: there is no independent implementation to verify "
            "them against. verify works on GGUF files, Ollama models and Hugging Face checkpoints."
        )
    with quiet_transformers():
        if kind == "gguf":
            path = Path(target).expanduser()
            header = read_header(path)
            check_supported(header)
            # The loader's config, completed from the metadata as the conversion does (gguf_config).
            model = load_causal_lm(path, header)
            strip_quantization(model)
            description = f"transformers loading {path.name} directly"
        else:
            model = AutoModelForCausalLM.from_pretrained(
                target, dtype=torch.float32, local_files_only=kind == "hf"
            )
            description = f"transformers loading {target}"
    return model.eval(), description


@torch.no_grad()
def compare(
    loaded: LoadedModel,
    reference: Any,
    description: str,
    *,
    prompts: tuple[str, ...] = DEFAULT_PROMPTS,
    max_new_tokens: int = 12,
    tolerance: float | None = None,
) -> VerifyReport:
    """Compare a loaded hooked model with a reference transformers model on ``prompts``."""
    start = time.perf_counter()
    model = loaded.model
    if tolerance is None:
        tolerance = DEFAULT_TOLERANCE.get(loaded.model.cfg.dtype, LOW_PRECISION_TOLERANCE)
    tally = _Tally()
    for prompt in prompts:
        tokens = model.to_tokens(prompt)
        hooked = torch.log_softmax(model(tokens).double().cpu(), dim=-1)[0]
        tally.add(hooked, torch.log_softmax(reference(tokens.cpu()).logits.double(), dim=-1)[0])
        ours = decoding.decode(
            model,
            tokens,
            max_new_tokens=max_new_tokens,
            stop_ids=decoding.stop_ids(model),
            through_hooks=True,
        ).token_ids
        theirs = reference.generate(
            tokens.cpu(),
            attention_mask=torch.ones_like(tokens.cpu()),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=loaded.tokenizer.eos_token_id,
        )
        n = tokens.shape[-1]
        tally.generations.append(
            GenerationPair(
                prompt,
                loaded.tokenizer.decode(list(ours)),
                loaded.tokenizer.decode(theirs[0, n:].tolist()),
            )
        )
    return tally.report(loaded, description, tolerance=tolerance, start=start)


def verify(
    source: str = "smollm2",
    *,
    loaded: LoadedModel | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    prompts: tuple[str, ...] = DEFAULT_PROMPTS,
    max_new_tokens: int = 12,
    tolerance: float | None = None,
    reference: str = "transformers",
    layers: bool = False,
) -> VerifyReport:
    """Load ``source`` (unless ``loaded`` is given) and compare it with an independent reference.

    Args:
        reference: ``"transformers"`` (the same file loaded by transformers) or ``"llamacpp"``
            (llama.cpp itself; GGUF sources only; needs ``mechlab[llamacpp]``).
        tolerance: max |Δ log-prob| (transformers) or max mean KL in nats (llama.cpp); default
            1e-4 in float32, 0.01 against llama.cpp.
        layers: also compare llama.cpp's intermediate tensors with the hook points, layer by layer
            (``report.layers``, ``report.first_divergence``; llama.cpp only).

    Returns:
        A ``VerifyReport``; ``report.passed`` is False when any prompt disagrees beyond tolerance.

    Raises:
        InputError: an unknown reference, llama.cpp for a source that is not a GGUF file, or
            llama-cpp-python not installed (saying how to install it).
    """
    if reference not in ("transformers", "llamacpp"):
        raise InputError(f"Unknown reference {reference!r}: use 'transformers' or 'llamacpp'.")
    if layers and reference != "llamacpp":
        raise InputError(
            "layers=True compares llama.cpp's intermediate tensors with the hook points; use "
            "reference='llamacpp' (command line: --reference llamacpp --layers)."
        )
    if reference == "llamacpp" and llamacpp.available() is None:
        raise InputError(llamacpp.INSTALL)
    loaded = loaded or load_model(source, device=device, dtype=dtype)
    if reference == "llamacpp":
        return compare_llamacpp(
            loaded, prompts=prompts, max_new_tokens=max_new_tokens, tolerance=tolerance, layers=layers
        )
    reference_model, description = load_reference(loaded.info.source)
    return compare(
        loaded,
        reference_model,
        description,
        prompts=prompts,
        max_new_tokens=max_new_tokens,
        tolerance=tolerance,
    )


@torch.no_grad()
def compare_llamacpp(
    loaded: LoadedModel,
    *,
    prompts: tuple[str, ...] = DEFAULT_PROMPTS,
    max_new_tokens: int = 12,
    tolerance: float | None = None,
    layers: bool = False,
) -> VerifyReport:
    """Compare a hooked model loaded from a GGUF file with llama.cpp running that file (with
    ``layers``, also its intermediate tensors with the hook points)."""
    if loaded.info.kind != "gguf" or loaded.info.path is None:
        raise InputError(
            f"llama.cpp runs GGUF files; {loaded.info.source!r} is a {loaded.info.kind} source. Verify it "
            "with --reference transformers, or pass the .gguf file."
        )
    start = time.perf_counter()
    model, path = loaded.model, Path(loaded.info.path).expanduser()
    stops = decoding.stop_ids(model)
    tokenized = [model.to_tokens(prompt)[0].tolist() for prompt in prompts]
    n_ctx = max(len(t) for t in tokenized) + max_new_tokens + 1
    tally = _Tally()
    keys = [(kind, layer) for kind in LAYER_KINDS for layer in range(model.cfg.n_layers)] if layers else []
    sites = {key: Site(*key) for key in keys}
    with llamacpp.LlamaCpp(path, n_ctx=n_ctx) as runtime:
        for prompt, tokens in zip(prompts, tokenized, strict=True):
            ids = torch.tensor([tokens], device=model.cfg.device)
            acts: dict[Site, torch.Tensor] = {}
            with hooked(model, [(site, recorder(acts)) for site in sites.values()]):
                logits = model(ids)
            ours = torch.log_softmax(logits.double().cpu(), dim=-1)[0]
            tally.add(ours, torch.log_softmax(torch.from_numpy(runtime.logits(tokens)), dim=-1))
            if layers:
                mine = {key: acts[site][0].double().cpu() for key, site in sites.items()}
                tally.add_layers(mine, runtime.intermediates(tokens))
            continued = decoding.decode(
                model, ids, max_new_tokens=max_new_tokens, stop_ids=stops, through_hooks=True
            )
            theirs = runtime.greedy(tokens, max_new_tokens, stops)
            decode_text = loaded.tokenizer.decode
            tally.generations.append(
                GenerationPair(prompt, decode_text(list(continued.token_ids)), decode_text(theirs))
            )
    tolerance = llamacpp.MAX_MEAN_KL if tolerance is None else tolerance
    return tally.report(
        loaded, f"llama.cpp running {path.name}", tolerance=tolerance, start=start, runtime=True
    )
