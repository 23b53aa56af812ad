"""Quantization forensics: one model in two files (two quantizations), compared from the output down.

``compare_models(a, b)`` runs the same prompts through both and reports, with ``a`` as the reference:

- the output: KL(a ‖ b) of the next-token distributions (mean and max over positions) and top-1
  agreement;
- each layer: the relative error ``‖b − a‖ / ‖a‖`` of the attention output, MLP output and residual
  stream, averaged over positions (where the files start to differ, and how it grows);
- each head: the total-variation distance between the two attention patterns, averaged over query
  positions (which heads attend elsewhere);
- the circuits: the detectors' verdicts per head in each file, and which heads gain or lose one
  (does the induction circuit survive a 2-bit quantization?).

``requantized(path, kind)`` makes the second file from the first with llama.cpp's own quantizer
(``Q8_0``, ``Q4_K_M``, ``Q2_K``…; the result is cached by the source's sha256 and the type).
"""

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from mechlab.activations import capture
from mechlab.detectors.result import DetectorReport
from mechlab.detectors.run import run_detectors
from mechlab.errors import InputError
from mechlab.files import sha256_of
from mechlab.models.cache import cache_dir
from mechlab.models.load import LoadedModel
from mechlab.models.references import llamacpp
from mechlab.models.verify import DEFAULT_PROMPTS, kl_divergence, relative_error
from mechlab.render.figures import heatmap, lines
from mechlab.render.page import Page

KINDS: tuple[str, ...] = ("attn_out", "mlp_out", "resid_post")
DEFAULT_DETECTORS: tuple[str, ...] = ("induction", "previous-token")


@dataclasses.dataclass(frozen=True)
class VerdictChange:
    """A head whose verdict differs between the two files for one detector."""

    detector: str
    label: str
    verdict_a: str
    verdict_b: str
    score_a: float
    score_b: float


@dataclasses.dataclass(frozen=True)
class Comparison:
    """Two files of one model compared (see the module docstring); ``a`` is the reference."""

    a: str
    b: str
    quantization_a: str
    quantization_b: str
    n_prompts: int
    n_positions: int
    mean_kl: float
    max_kl: float
    top1_agreement: float
    layers: dict[str, list[float]]
    heads: Float[Tensor, "layer head"]
    detected_a: dict[str, list[str]]
    detected_b: dict[str, list[str]]
    changes: tuple[VerdictChange, ...]

    def most_changed_heads(self, k: int = 5) -> list[tuple[str, float]]:
        """The ``k`` heads whose attention moved most, as ``("layer.head", distance)``."""
        flat = self.heads.flatten()
        top = flat.topk(min(k, flat.numel())).indices.tolist()
        n_heads = int(self.heads.shape[1])
        return [(f"{i // n_heads}.{i % n_heads}", float(flat[i])) for i in top]

    def summary(self) -> str:
        lines_ = [
            f"{self.b} ({self.quantization_b}) against {self.a} ({self.quantization_a}) on "
            f"{self.n_prompts} prompts ({self.n_positions} positions): KL mean {self.mean_kl:.2e} / max "
            f"{self.max_kl:.2e} nats, top-1 agreement {self.top1_agreement:.1%}.",
        ]
        resid = self.layers["resid_post"]
        if resid:
            lines_.append(
                f"Residual stream: {resid[0]:.1%} off after block 0, {max(resid):.1%} at most (block "
                f"{resid.index(max(resid))}), {resid[-1]:.1%} after the last."
            )
        heads = ", ".join(f"{label} ({value:.2f})" for label, value in self.most_changed_heads(3))
        lines_.append(f"Attention patterns moved most (total variation): {heads}.")
        for name in self.detected_a:
            kept = [h for h in self.detected_a[name] if h in self.detected_b.get(name, [])]
            lost = [h for h in self.detected_a[name] if h not in kept]
            gained = [h for h in self.detected_b.get(name, []) if h not in self.detected_a[name]]
            lines_.append(
                f"{name}: {len(kept)} of {len(self.detected_a[name])} detected heads kept"
                + (f"; lost {', '.join(lost)}" if lost else "")
                + (f"; gained {', '.join(gained)}" if gained else "")
                + "."
            )
        return "\n".join(lines_)

    def page(self) -> Page:
        """Tables and plots as an offline page (``mechlab.Page``)."""
        page = Page("mechlab compare", subtitle=f"{self.a} → {self.b}")
        summary = page.section(
            "Summary", f"a: {self.a} ({self.quantization_a}); b: {self.b} ({self.quantization_b})."
        )
        for line in self.summary().splitlines():
            summary.text(line)
        per_layer = page.section("Where the files diverge, layer by layer")
        per_layer.figure(
            lines(
                {kind: self.layers[kind] for kind in KINDS},
                title=f"‖b − a‖ / ‖a‖ per layer (a: {self.a}, b: {self.b})",
                xlabel="layer",
                ylabel="relative error (mean over positions)",
            ),
            alt="relative error per layer",
        )
        rows = [
            [layer, *(f"{self.layers[k][layer]:.2%}" for k in KINDS)]
            for layer in range(len(self.layers["resid_post"]))
        ]
        per_layer.table(["layer", *KINDS], rows)
        page.section("Which heads attend elsewhere").figure(
            heatmap(
                self.heads,
                title="total-variation distance of attention patterns",
                xlabel="head",
                ylabel="layer",
                diverging=False,
                colorbar_label="0 = same pattern, 1 = disjoint",
            ),
            alt="attention-pattern distance per head",
        )
        circuits = page.section("Which detector verdicts change")
        circuits.table(
            ["detector", "head", "verdict in a", "verdict in b", "score in a", "score in b"],
            [
                [c.detector, c.label, c.verdict_a, c.verdict_b, f"{c.score_a:.2f}", f"{c.score_b:.2f}"]
                for c in self.changes
            ],
            caption="heads detected in either file whose verdict differs",
        )
        return page

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["heads"] = self.heads.tolist()
        return data


def requantized(path: Path, kind: str) -> Path:
    """``path`` re-quantized to ``kind`` by llama.cpp, cached under ``<cache>/requantized/``."""
    target = cache_dir() / "requantized" / f"{sha256_of(path)[:16]}-{kind.upper()}-{path.name}"
    return target if target.is_file() else llamacpp.quantize(path, target, kind)


def _check_same_model(a: LoadedModel, b: LoadedModel) -> None:
    shape = ("n_layers", "n_heads", "d_model", "d_vocab")
    differ = [
        f"{k} {getattr(a.info, k)} vs {getattr(b.info, k)}"
        for k in shape
        if getattr(a.info, k) != getattr(b.info, k)
    ]
    if differ:
        raise InputError(
            f"compare needs two files of one model (e.g. two quantizations); {a.info.source} and "
            f"{b.info.source} differ in {', '.join(differ)}."
        )


@torch.no_grad()
def compare_models(
    a: LoadedModel,
    b: LoadedModel,
    *,
    prompts: Sequence[str | Tensor] = DEFAULT_PROMPTS,
    detectors: Sequence[str] = DEFAULT_DETECTORS,
    n_samples: int = 8,
    seed: int = 0,
) -> Comparison:
    """Compare two files of one model (``a`` is the reference); see the module docstring.

    ``prompts`` are texts, or token ids ``[1, pos]`` for models without a tokenizer.

    Raises:
        InputError: the models differ in shape or tokenize a prompt differently.
    """
    _check_same_model(a, b)
    n_layers, n_heads = int(a.model.cfg.n_layers), int(a.model.cfg.n_heads)
    kls, top1 = [], []
    errors: dict[str, list[list[float]]] = {kind: [[] for _ in range(n_layers)] for kind in KINDS}
    moved = torch.zeros(n_layers, n_heads, dtype=torch.float64)
    sites = [*KINDS, "pattern"]
    for prompt in prompts:
        if isinstance(prompt, Tensor):
            tokens = prompt.to(a.model.cfg.device)
        else:
            tokens = a.model.to_tokens(prompt)
            if not torch.equal(tokens.cpu(), b.model.to_tokens(prompt).cpu()):
                raise InputError(f"The two models tokenize {prompt!r} differently; they are not one model.")
        acts_a = capture(a.model, tokens, sites, max_bytes=None)
        acts_b = capture(b.model, tokens.to(b.model.cfg.device), sites, max_bytes=None)
        assert acts_a.logits is not None and acts_b.logits is not None
        logp_a = torch.log_softmax(acts_a.logits[0].double().cpu(), -1)
        logp_b = torch.log_softmax(acts_b.logits[0].double().cpu(), -1)
        kls.append(kl_divergence(logp_a, logp_b))
        top1.append((logp_a.argmax(-1) == logp_b.argmax(-1)).double())
        for layer in range(n_layers):
            for kind in KINDS:
                site = f"{kind}.{layer}"
                errors[kind][layer].append(
                    float(
                        relative_error(acts_b[site][0].double().cpu(), acts_a[site][0].double().cpu()).mean()
                    )
                )
            pa, pb = (
                acts_a[f"pattern.{layer}"][0].double().cpu(),
                acts_b[f"pattern.{layer}"][0].double().cpu(),
            )
            moved[layer] += 0.5 * (pa - pb).abs().sum(-1).mean(-1)  # [head]: mean over query positions
    report_a = run_detectors(a.model, list(detectors), n_samples=n_samples, seed=seed) if detectors else None
    report_b = run_detectors(b.model, list(detectors), n_samples=n_samples, seed=seed) if detectors else None
    all_kl = torch.cat(kls)
    return Comparison(
        a=Path(a.info.path or a.info.source).name,
        b=Path(b.info.path or b.info.source).name,
        quantization_a=a.info.quantization_summary,
        quantization_b=b.info.quantization_summary,
        n_prompts=len(prompts),
        n_positions=int(all_kl.numel()),
        mean_kl=float(all_kl.mean()),
        max_kl=float(all_kl.max()),
        top1_agreement=float(torch.cat(top1).mean()),
        layers={kind: [sum(v) / len(v) for v in errors[kind]] for kind in KINDS},
        heads=(moved / len(prompts)).float(),
        detected_a=_detected(report_a),
        detected_b=_detected(report_b),
        changes=_changes(report_a, report_b),
    )


def _detected(report: DetectorReport | None) -> dict[str, list[str]]:
    if report is None:
        return {}
    return {name: [row.label for row in result.detected()] for name, result in report.results.items()}


def _changes(a: DetectorReport | None, b: DetectorReport | None) -> tuple[VerdictChange, ...]:
    if a is None or b is None:
        return ()
    changes = []
    for name, result in a.results.items():
        if name not in b.results:  # the detector failed on one model: nothing to compare
            continue
        other = {row.label: row for row in b.results[name].rows()}
        for row in result.rows():
            theirs = other[row.label]
            if row.verdict != theirs.verdict and "detected" in (row.verdict, theirs.verdict):
                changes.append(
                    VerdictChange(name, row.label, row.verdict, theirs.verdict, row.score, theirs.score)
                )
    return tuple(changes)
