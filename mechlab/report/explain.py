"""``explain``: from a prompt to the evidence for why the model said what it said.

One call generates a completion with the hooked model and explains one of its tokens — the
*chosen* token against the *runner-up* the model nearly said instead (or a ``target`` against a
``contrast`` the user names) — with every method mechlab has, all on the same logit difference
``logit[chosen] − logit[runner-up]`` at the same position:

- Integrated Gradients over the prompt's tokens (with its completeness error);
- the logit lens: from which layer on the residual stream already prefers the chosen token;
- direct logit attribution to every layer and head (sums to the logit difference);
- attribution patching: the estimated change of the logit difference if each head's output were
  knocked out (zero-ablated), checked by actually knocking out the highest-ranked heads;
- attention patterns of the heads that matter most, and which known circuits (induction,
  previous-token, …) those heads belong to according to the detectors;
- with ``saes=`` (``mechlab explain --sae DIR``): the sparse-autoencoder latents most active at the
  explained position, their attribution (activation × gradient) and measured knock-out effect, and
  their feature pages (``mechlab.report.latents``);
- a reproducibility manifest.

The result is an ``Explanation``; ``explanation.save("report.html")`` writes a self-contained
offline HTML report (``mechlab.report.page``).
"""

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

from mechlab.attribution.integrated_gradients import integrated_gradients
from mechlab.attribution.result import Attribution
from mechlab.detectors import DetectorReport
from mechlab.dictionaries.sae import SAE
from mechlab.dictionaries.site import attached, default_name, kind_name
from mechlab.errors import InputError, MechlabError
from mechlab.generation import Completion, generate
from mechlab.interventions.attribution_patching import attribution_patch
from mechlab.interventions.inputs import Ablation
from mechlab.interventions.patching import patch
from mechlab.interventions.result import PatchResult
from mechlab.models.info import ModelInfo
from mechlab.models.load import LoadedModel
from mechlab.models.verify import VerifyReport
from mechlab.progress import Progress
from mechlab.readout.attention import AttentionView, attention_view
from mechlab.readout.dla import DirectLogitAttribution, direct_logit_attribution
from mechlab.readout.lens import LogitLens, logit_lens
from mechlab.report.detector_cache import cached_detectors
from mechlab.report.latents import SAEFindings, sae_findings
from mechlab.report.manifest import manifest
from mechlab.report.settings import STAGES, ExplainProgress, ExplainSettings
from mechlab.sites import Site
from mechlab.targets import Target, make_target
from mechlab.tokens import single_token, token_text
from mechlab.types import HookedModel, Tokens


@dataclasses.dataclass(frozen=True)
class HeadFinding:
    """One head that matters for the explained token, with every piece of evidence about it."""

    layer: int
    head: int
    atp: float
    ablation: float
    dla: float
    detectors: tuple[tuple[str, float], ...]

    @property
    def label(self) -> str:
        return f"L{self.layer}H{self.head}"


@dataclasses.dataclass(frozen=True)
class Explanation:
    """Everything ``explain`` found; ``save(path)`` writes the HTML report.

    Attributes:
        completion: the prompt as the model saw it and what it generated.
        context: the tokens before the explained position ``[1, pos]`` (prompt + earlier tokens).
        target: the explained logit difference ``logit[chosen] − logit[contrast]``.
        chosen, contrast: their token ids; ``*_text`` their text, ``*_prob`` their probabilities.
        ig: Integrated Gradients over ``context``.
        lens: the logit lens at the explained position, tracking both tokens.
        dla: direct logit attribution of the logit difference.
        atp: attribution-patching estimate of zero-ablating each head (``effect`` = change).
        heads: the heads that matter most, with all evidence.
        attention: attention patterns of those heads on ``context``.
        detectors: detector results for the model (``None`` if none were run or they failed).
        detector_error: why detectors are missing, if they failed.
        verification: the fidelity check, when asked for.
        manifest: versions, model identity, settings and timings.
        saes: one ``SAEFindings`` per SAE passed to ``explain(saes=...)`` (empty without).
    """

    completion: Completion
    context: Tokens
    target: Target
    chosen: int
    contrast: int
    chosen_text: str
    contrast_text: str
    chosen_prob: float
    contrast_prob: float
    ig: Attribution
    lens: LogitLens
    dla: DirectLogitAttribution
    atp: PatchResult
    heads: tuple[HeadFinding, ...]
    attention: AttentionView
    detectors: DetectorReport | None
    detector_error: str | None
    verification: VerifyReport | None
    settings: ExplainSettings
    manifest: dict[str, Any]
    saes: tuple[SAEFindings, ...] = ()
    fix: Any = None  # a mechlab.report.fix.FixFinding (``with_fix``)

    @property
    def target_names(self) -> tuple[str, str]:
        """The chosen and contrast tokens as quoted text, e.g. ``("' she'", "' he'")``."""
        return repr(self.chosen_text), repr(self.contrast_text)

    def page(self, *, id_prefix: str | None = None) -> Any:
        """The report as a ``mechlab.render.page.Page``."""
        from mechlab.report.page import report_page

        return report_page(self, id_prefix=id_prefix)

    def with_fix(self, loaded: Any) -> "Explanation":
        """This explanation with the fix section (``mechlab explain --fix``): the explained preference's
        readout direction mean-ablated, measured with hooks (``mechlab.report.fix``)."""
        from mechlab.report.fix import fix_finding

        source = str(self.manifest["model"].get("source", "SOURCE"))
        found = fix_finding(loaded.model, self.context, self.chosen_text, self.contrast_text, source)
        return dataclasses.replace(self, fix=found)

    def save(self, path: Any, *, id_prefix: str | None = None) -> Any:
        """Write the self-contained HTML report to ``path`` (atomically); returns the path."""
        return self.page(id_prefix=id_prefix).save(path)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary: the completion, the explained token and the main findings."""
        from mechlab.report.summary import summary_dict

        return summary_dict(self)

    def _repr_html_(self) -> str:
        return str(self.page()._repr_html_())


def _stage(progress: Progress | None, stage: str) -> None:
    if progress is not None:
        progress(ExplainProgress(stage, STAGES.index(stage), len(STAGES)))


def _pick_tokens(
    model: HookedModel, completion: Completion, step: int, target: int | None, contrast: int | None
) -> tuple[Tokens, int, int, float, float]:
    """The context, the explained token (``target`` or the generated one), its contrast (``contrast``
    or the runner-up), and both probabilities at that position."""
    if step >= len(completion.steps):
        raise InputError(
            f"step={step} asks for generated token {step}, but generation stopped after "
            f"{len(completion.steps)} token(s). Choose a step below {len(completion.steps)}."
        )
    n_prompt = completion.prompt_tokens.shape[1]
    context = completion.tokens[:, : n_prompt + step]
    with torch.no_grad():
        probs = torch.softmax(model(context)[0, -1].float(), dim=-1)
    chosen = target if target is not None else completion.steps[step].token_id
    if contrast is None:
        ranked = torch.argsort(probs, descending=True)[:2].tolist()
        contrast = ranked[1] if ranked[0] == chosen else ranked[0]
    return context, chosen, contrast, float(probs[chosen]), float(probs[contrast])


def _head_findings(
    model: HookedModel,
    context: Tokens,
    target: Target,
    atp: PatchResult,
    dla: DirectLogitAttribution,
    detectors: DetectorReport | None,
    k: int,
) -> tuple[HeadFinding, ...]:
    """Knock out the top candidates by |AtP| and |DLA| for real; keep the ``k`` that matter most."""
    n_heads = int(model.cfg.n_heads)
    atp_effect = atp.effect.reshape(-1)
    by_atp = torch.argsort(atp_effect.abs(), descending=True)[: 2 * k].tolist()
    by_dla = [layer * n_heads + head for layer, head, _ in dla.top_heads(2 * k)]
    candidates = list(dict.fromkeys(by_atp + by_dla))
    sites = [Site("z", i // n_heads, i % n_heads) for i in candidates]
    actual = patch(model, context, Ablation("zero"), [[s] for s in sites], target)
    effect = actual.effect.reshape(-1)
    order = torch.argsort(effect.abs(), descending=True)[:k].tolist()
    findings = []
    for j in order:
        layer, head = divmod(candidates[j], n_heads)
        hits = _detector_hits(detectors, layer, head)
        findings.append(
            HeadFinding(
                layer,
                head,
                float(atp_effect[candidates[j]]),
                float(effect[j]),
                float(dla.heads[layer, head]),
                hits,
            )
        )
    return tuple(findings)


def _detector_hits(report: DetectorReport | None, layer: int, head: int) -> tuple[tuple[str, float], ...]:
    if report is None:
        return ()
    hits = []
    for name, result in report.items():
        for score in result.detected():
            if (score.layer, score.head) == (layer, head):
                hits.append((name, float(score.score)))
    return tuple(hits)


def _run_detectors(
    loaded: LoadedModel | None, model: HookedModel, settings: ExplainSettings
) -> tuple[DetectorReport | None, str | None]:
    if not settings.detectors:
        return None, None
    try:
        return cached_detectors(
            loaded, model, settings.detectors, settings.detector_samples, settings.seed
        ), None
    except MechlabError as error:
        return None, f"{type(error).__name__}: {error}"


def explain(
    model: LoadedModel | HookedModel,
    prompt: str,
    *,
    settings: ExplainSettings | None = None,
    progress: Progress | None = None,
    saes: Mapping[str, SAE] | Sequence[SAE] = (),
    sae_corpus: Int[Tensor, "seq seq_pos"] | None = None,
    sae_corpus_name: str = "the corpus",
) -> Explanation:
    """Generate a completion for ``prompt`` and explain one of its tokens (see the module doc).

    Args:
        model: a ``LoadedModel`` (its ``ModelInfo`` goes into the manifest) or a hooked model.
        prompt: the user's text (the chat template is applied when ``settings.chat``).
        settings: what to explain and how much work to spend (``ExplainSettings()``).
        progress: called with an ``ExplainProgress`` before each stage.
        saes: sparse autoencoders of this model (by name, or a sequence named after their sites):
            each adds a section on its latents at the explained position (``mechlab.report.latents``).
        sae_corpus: token ids ``[n_seq, n_pos]`` whose top-activating contexts fill the latents'
            feature pages (``None``: the explained context only); ``sae_corpus_name`` describes it.

    Raises:
        InputError: empty prompt, a prompt longer than the context, a target/contrast that is not
            one token (the message shows how it tokenizes), a step past the end of the completion.
    """
    settings = settings or ExplainSettings()
    loaded = model if isinstance(model, LoadedModel) else None
    hooked: HookedModel = model.model if isinstance(model, LoadedModel) else model
    info: ModelInfo | None = loaded.info if loaded is not None else None
    timings: dict[str, float] = {}
    started = time.perf_counter()

    def timed(stage: str, fn: Callable[[], Any]) -> Any:
        _stage(progress, stage)
        t0 = time.perf_counter()
        value = fn()
        timings[stage] = round(time.perf_counter() - t0, 3)
        return value

    named = _named_saes(hooked, saes)  # a wrong SAE fails before any work, as a bad --target does
    # Token checks come before any work, so a bad --target fails at once.
    target_id = single_token(hooked, settings.target) if settings.target is not None else None
    contrast_id = (
        single_token(hooked, settings.contrast, what="contrast") if settings.contrast is not None else None
    )
    completion: Completion = timed(
        "generating",
        lambda: generate(
            hooked,
            prompt,
            chat=settings.chat,
            max_new_tokens=settings.max_new_tokens,
            temperature=settings.temperature,
            seed=settings.seed,
        ),
    )
    context, chosen, contrast, p_chosen, p_contrast = _pick_tokens(
        hooked, completion, settings.step, target_id, contrast_id
    )
    target = make_target(hooked, chosen, contrast=contrast)  # one number for IG, DLA, AtP, knock-outs
    ig = timed(
        "integrated gradients", lambda: integrated_gradients(hooked, context, target, steps=settings.ig_steps)
    )
    lens = timed("logit lens", lambda: logit_lens(hooked, context, targets=(chosen, contrast)))
    dla = timed("direct logit attribution", lambda: direct_logit_attribution(hooked, context, target))
    atp = timed(
        "attribution patching", lambda: attribution_patch(hooked, context, Ablation("zero"), "z", target)
    )
    detectors, detector_error = timed("detectors", lambda: _run_detectors(loaded, hooked, settings))
    heads = timed(
        "knocking out top heads",
        lambda: _head_findings(hooked, context, target, atp, dla, detectors, settings.top_heads),
    )
    attention = timed(
        "attention patterns",
        lambda: attention_view(hooked, context, heads=[(h.layer, h.head) for h in heads]),
    )
    verification = None
    if settings.verify and loaded is not None:
        from mechlab.models.verify import verify

        verification = timed("verify", lambda: verify(loaded=loaded))
    sae_sections: tuple[SAEFindings, ...] = ()
    if named:
        sae_sections = timed(
            "SAE latents",
            lambda: _sae_sections(hooked, context, target, named, settings, sae_corpus, sae_corpus_name),
        )
    timings["total"] = round(time.perf_counter() - started, 3)
    return Explanation(
        completion=completion,
        context=context,
        target=target,
        chosen=chosen,
        contrast=contrast,
        chosen_text=token_text(hooked, chosen),
        contrast_text=token_text(hooked, contrast),
        chosen_prob=p_chosen,
        contrast_prob=p_contrast,
        ig=ig,
        lens=lens,
        dla=dla,
        atp=atp,
        heads=heads,
        attention=attention,
        detectors=detectors,
        detector_error=detector_error,
        verification=verification,
        settings=settings,
        manifest=manifest(hooked, info, settings, timings),
        saes=sae_sections,
    )


def _named_saes(model: HookedModel, saes: Mapping[str, SAE] | Sequence[SAE]) -> list[tuple[str, SAE]]:
    """The SAEs with their site-kind names, each checked against the model (site, width, name) by
    attaching and detaching it, so a wrong SAE fails before any work."""
    named = (
        [(kind_name(name), sae) for name, sae in saes.items()]
        if isinstance(saes, Mapping)
        else [(default_name(sae), sae) for sae in saes]
    )
    names = [name for name, _ in named]
    if len(set(names)) != len(names):
        raise InputError(
            f"Two SAEs share a name ({', '.join(names)}); pass them as {{name: sae}} with distinct names."
        )
    for name, sae in named:
        with attached(model, sae, name=name):
            pass
    return named


def _sae_sections(
    model: HookedModel,
    context: Tokens,
    target: Target,
    named: list[tuple[str, SAE]],
    settings: ExplainSettings,
    corpus: Int[Tensor, "seq seq_pos"] | None,
    corpus_name: str,
) -> tuple[SAEFindings, ...]:
    """Each SAE attached for the call (detached after, also on an error) and its findings."""
    found = []
    for name, sae in named:
        with attached(model, sae, name=name) as kind:
            found.append(
                sae_findings(
                    model,
                    context,
                    target,
                    kind,
                    top=settings.top_latents,
                    corpus=corpus,
                    corpus_name=corpus_name,
                )
            )
    return tuple(found)
