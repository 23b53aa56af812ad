"""Integrated Gradients, gradient × input and occlusion: which input tokens made the model say it.

Integrated Gradients (Sundararajan et al. 2017) attributes a target ``F`` (say the log-probability
of " Paris") to the input embeddings ``x`` relative to a baseline ``x'``:

    IG_i = (x_i - x'_i) · ∫_0^1 ∂F/∂x_i (x' + α (x - x')) dα

summed over ``d_model`` to give one score per token. The scores satisfy *completeness*:
``Σ_i IG_i = F(x) - F(x')``. The integral is computed by quadrature, ``batch_size`` nodes per
forward and backward pass. The default rule, ``adaptive``, probes ``F`` along the path with forward
passes and places Gauss–Legendre nodes where its estimate of each stretch is off, until the error is
within ``tolerance`` (``mechlab.attribution.path_integral``); fixed Gauss–Legendre and Riemann rules are
there too. Every result reports its completeness error.

The baseline is an input that carries no evidence. By default it is the prompt with every token
replaced by ``"."``: real, frequent embeddings of ordinary norm, with no content. Alternatives are
any other token, ``"pad"`` (the pad / end-of-sequence token — for chat models an end-of-turn marker,
which is not neutral), ``"mean"`` (the mean token embedding), ``"zeros"`` or a tensor. The choice
changes the answer, because IG explains ``F(x) - F(baseline)``: on SmolLM2, "The nurse was tired
because" → " she" vs " he" gives " nurse" the largest share with the "." baseline (+1.57 of a total 1.34)
but a negative one with the pad baseline, where " because" takes most of the credit (F(pad) =
-2.1: after end-of-turn tokens the model prefers " he"). With "." the top words are "Eiffel" for
"… the city of" → " Paris", "Mary" for the IOI prompt, "Germany" for "The capital of Germany is".
Positional information is not attributed: only the token-embedding hook (``Site("embed")``) is
interpolated.

The first token is held at its real embedding by default (``keep_first=True``; its score is 0). It
is the model's attention sink — BOS where the model prepends one, the first word where it does not
(SmolLM2) — and the residual stream there carries very large activations that switch on and off
along the path when its embedding is interpolated. That makes the integrand rough: on SmolLM2
(Gauss–Legendre, 32 steps, "." baseline) the completeness error is 136% on the IOI prompt and 1030%
on "The nurse was tired because" when the first token is interpolated, 1.0% and 6.9% when it is held
(``python -m bench.ig_completeness``). All-zero embeddings are a poor
baseline for RMSNorm models: the norm erases scale, so ``F`` barely moves until ``α`` is ~1e-3 and
then jumps, which no quadrature resolves.

``layer_integrated_gradients`` runs the same path integral on the activation at any ``Site`` (the
residual stream before layer 10, a head's ``z``…), from that activation on the baseline input.

``gradient_x_input`` is the one-step special case (the gradient at ``x`` times ``x - x'``);
``mechlab.attribution.occlusion`` has the gradient-free baseline.
"""

from typing import Any

import torch
from torch import Tensor

from mechlab.attribution.path_integral import (
    activation_at,
    model_function,
    node_gradients,
    path_integral,
    target_value,
)
from mechlab.attribution.quadrature import QUADRATURES, Quadrature
from mechlab.attribution.result import Attribution
from mechlab.errors import MSG_NO_PAD_TOKEN, MSG_ONE_TOKEN_KEPT, InputError
from mechlab.models.quantized import exact_gradients
from mechlab.sites import Site, validate
from mechlab.targets import Target, TargetSpec, prompt_target, resolve_pos
from mechlab.tokens import as_tokens, single_token, str_tokens, token_text
from mechlab.types import HookedModel, Tokens

Baseline = str | int | Tensor

DEFAULT_BASELINE = "."
DEFAULT_STEPS = 128
DEFAULT_BATCH_SIZE = 16
DEFAULT_TOLERANCE = 0.01


def pad_token_id(model: HookedModel) -> int:
    """The tokenizer's pad token (else end-of-sequence, else unknown token)."""
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise InputError(MSG_NO_PAD_TOKEN)
    for name in ("pad_token_id", "eos_token_id", "unk_token_id"):
        value = getattr(tokenizer, name, None)
        if value is not None:
            return int(value)
    raise InputError("The tokenizer has no pad, end-of-sequence or unknown token; pass baseline='zeros'.")


def _tensor_baseline(baseline: Tensor, x_emb: Tensor) -> Tensor:
    if baseline.numel() != x_emb.numel():
        raise InputError(
            f"A tensor baseline must hold the prompt's embeddings, shape {tuple(x_emb.shape[1:])} "
            f"(or {tuple(x_emb.shape)}); got {tuple(baseline.shape)}."
        )
    return baseline.detach().to(device=x_emb.device, dtype=x_emb.dtype).reshape(x_emb.shape)


def embedding_baseline(
    model: HookedModel,
    tokens: Tokens,
    baseline: Baseline,
    *,
    keep_first: bool = True,
    x_emb: Tensor | None = None,
) -> tuple[Tensor, str]:
    """The baseline's token embeddings ``[1, pos, d_model]`` and a short description.

    ``baseline`` is a token (text such as ``"."``, or an id) repeated at every position, ``"pad"``
    (the pad / end-of-sequence token), ``"mean"`` (the mean row of ``W_E``), ``"zeros"``, or a
    tensor of embeddings. With ``keep_first`` the first position keeps the prompt's own embedding.
    ``x_emb`` is the prompt's embedding if the caller has it already.
    """
    embed = Site("embed")
    x_emb = activation_at(model, tokens, embed) if x_emb is None else x_emb
    if isinstance(baseline, Tensor):
        b_emb, label = _tensor_baseline(baseline, x_emb), "tensor"
    elif baseline == "zeros":
        b_emb, label = torch.zeros_like(x_emb), "zeros"
    elif baseline == "mean":
        w_e: Tensor = model.W_E  # type: ignore[attr-defined]
        b_emb, label = w_e.detach().mean(0).to(x_emb.dtype).expand_as(x_emb).clone(), "mean embedding"
    else:
        if baseline == "pad":
            token_id, label = pad_token_id(model), "pad"
        else:
            token_id = single_token(model, baseline, what="baseline token")
            label = f"{token_text(model, token_id)!r}"
        b_emb = activation_at(model, torch.full_like(tokens, token_id), embed)
    if keep_first:
        b_emb = b_emb.clone()
        b_emb[:, 0] = x_emb[:, 0]
    return b_emb, label


def _prepare(
    model: HookedModel, tokens: str | Tensor, target: TargetSpec, keep_first: bool
) -> tuple[Tokens, Target]:
    toks = as_tokens(model, tokens)
    goal = prompt_target(model, toks, target)
    if keep_first and toks.shape[1] == 1:
        raise InputError(MSG_ONE_TOKEN_KEPT)
    return toks, goal


def _check(steps: int, batch_size: int, rule: str, tolerance: float) -> None:
    if rule not in QUADRATURES:
        raise InputError(f"Unknown quadrature {rule!r}; choose one of {', '.join(QUADRATURES)}.")
    if batch_size < 1:
        raise InputError(f"batch_size must be at least 1, got {batch_size}.")
    if steps < 1:
        raise InputError(f"steps must be at least 1, got {steps}.")
    if not tolerance > 0:
        raise InputError(f"tolerance must be positive, got {tolerance}.")


def _attribute(
    model: HookedModel,
    toks: Tokens,
    goal: Target,
    site: Site,
    acts: tuple[Tensor, Tensor],
    *,
    method: str,
    label: str,
    options: dict[str, Any],
    shown: Site | None = None,
) -> Attribution:
    x_act, b_act = acts
    fn = model_function(model, toks, goal, site)
    value = target_value(model, toks, goal, {})
    baseline_value = target_value(model, toks, goal, {site: b_act})
    elementwise, used, note = path_integral(fn, x_act, b_act, ends=(baseline_value, value), **options)
    return Attribution(
        method=method,
        tokens=toks,
        str_tokens=str_tokens(model, toks),
        scores=elementwise.sum(-1).float().cpu(),
        target=goal.label,
        value=value,
        baseline_value=baseline_value,
        baseline=label,
        steps=used,
        site=shown or site,
        detail=note,
    )


@exact_gradients
def integrated_gradients(
    model: HookedModel,
    tokens: str | Tensor,
    target: TargetSpec,
    *,
    baseline: Baseline = DEFAULT_BASELINE,
    steps: int = DEFAULT_STEPS,
    batch_size: int = DEFAULT_BATCH_SIZE,
    rule: Quadrature = "adaptive",
    tolerance: float = DEFAULT_TOLERANCE,
    keep_first: bool = True,
) -> Attribution:
    """Integrated Gradients of ``target`` with respect to the prompt's token embeddings.

    Args:
        model: a hooked model.
        tokens: one prompt, as text or ``[pos]`` / ``[1, pos]`` token ids.
        target: a ``Target`` (see ``make_target``), any metric, or a token (its log-prob).
        baseline: a token repeated at every position (text, default ``"."``, or an id),
            ``"pad"``, ``"mean"``, ``"zeros"``, or embeddings ``[pos, d_model]`` (module doc).
        steps: gradient evaluations: the budget of the ``adaptive`` rule (it stops once within
            ``tolerance``), the node count of the fixed rules.
        batch_size: nodes per forward/backward pass (memory ∝ batch_size × pos).
        rule: ``adaptive`` (default; see ``mechlab.attribution.path_integral``), ``gauss-legendre``,
            ``riemann-middle`` or ``riemann-trapezoid``.
        tolerance: the adaptive rule's target for ``Σ |cell error| / |F(x) − F(baseline)|``.
        keep_first: hold the first token at its embedding (score 0); see the module doc.

    Returns:
        An ``Attribution`` with ``scores [pos]``, ``completeness_error`` and the evaluations used.
    """
    _check(steps, batch_size, rule, tolerance)
    toks, goal = _prepare(model, tokens, target, keep_first)
    embed = Site("embed")
    x_emb = activation_at(model, toks, embed)
    b_emb, label = embedding_baseline(model, toks, baseline, keep_first=keep_first, x_emb=x_emb)
    options = dict(steps=steps, batch_size=batch_size, rule=rule, tolerance=tolerance)
    acts = (x_emb, b_emb)
    return _attribute(
        model, toks, goal, embed, acts, method="integrated_gradients", label=label, options=options
    )


@exact_gradients
def gradient_x_input(
    model: HookedModel,
    tokens: str | Tensor,
    target: TargetSpec,
    *,
    baseline: Baseline = DEFAULT_BASELINE,
    keep_first: bool = True,
) -> Attribution:
    """``(x - x') · ∂F/∂x`` at the input: one gradient, the cheapest attribution (zeros baseline
    gives the classic gradient × input). Its completeness error shows how far it is from IG."""
    toks, goal = _prepare(model, tokens, target, keep_first)
    embed = Site("embed")
    x_emb = activation_at(model, toks, embed)
    b_emb, label = embedding_baseline(model, toks, baseline, keep_first=keep_first, x_emb=x_emb)
    one = torch.ones(1, dtype=torch.float64)
    fn = model_function(model, toks, goal, embed)
    grad = node_gradients(fn, x_emb, b_emb, (one, one, torch.zeros(1, dtype=torch.long)), 1, 1)
    return Attribution(
        method="gradient_x_input",
        tokens=toks,
        str_tokens=str_tokens(model, toks),
        scores=(grad[0] * (x_emb[0] - b_emb[0]).double()).sum(-1).float().cpu(),
        target=goal.label,
        value=target_value(model, toks, goal, {}),
        baseline_value=target_value(model, toks, goal, {embed: b_emb}),
        baseline=label,
        steps=1,
    )


def _site_baseline(
    model: HookedModel, toks: Tokens, site: Site, x_act: Tensor, baseline: Baseline, keep_first: bool
) -> tuple[Tensor, str]:
    if isinstance(baseline, Tensor):
        if baseline.numel() != x_act.numel():
            raise InputError(
                f"A tensor baseline for layer IG holds the activation at {site}, shape "
                f"{tuple(x_act.shape[1:])}; got {tuple(baseline.shape)}."
            )
        return baseline.detach().to(device=x_act.device, dtype=x_act.dtype).reshape(x_act.shape), "tensor"
    b_emb, label = embedding_baseline(model, toks, baseline, keep_first=keep_first)
    return activation_at(model, toks, site, {Site("embed"): b_emb}), label


@exact_gradients
def layer_integrated_gradients(
    model: HookedModel,
    tokens: str | Tensor,
    target: TargetSpec,
    site: Site,
    *,
    baseline: Baseline = DEFAULT_BASELINE,
    steps: int = DEFAULT_STEPS,
    batch_size: int = DEFAULT_BATCH_SIZE,
    rule: Quadrature = "adaptive",
    tolerance: float = DEFAULT_TOLERANCE,
    keep_first: bool = True,
) -> Attribution:
    """Integrated Gradients on the activation at ``site`` (layer IG).

    The path runs from the activation the baseline *input* produces at ``site`` (a token,
    ``"pad"``, ``"mean"`` or ``"zeros"``, as for ``integrated_gradients``; ``keep_first`` applies
    to that input), or from a tensor of the activation's shape, to the prompt's activation. A site with
    ``head`` or ``pos`` interpolates only that slice; the rest stays at the prompt's values.

    Returns:
        An ``Attribution`` whose ``scores`` have the activation's shape without batch, summed over
        the last axis (``resid_pre``: ``[pos]``; ``z``: ``[pos, head]``).
    """
    _check(steps, batch_size, rule, tolerance)
    toks, goal = _prepare(model, tokens, target, keep_first and not isinstance(baseline, Tensor))
    site = validate(site, model)
    if site.pos is not None:
        resolve_pos(site.pos, toks.shape[1], what=f"The site {site} names position")
    whole = Site(site.kind, site.layer)
    x_act = activation_at(model, toks, whole)
    b_full, label = _site_baseline(model, toks, whole, x_act, baseline, keep_first)
    b_act = x_act.clone()
    b_act[site.index(x_act)] = b_full[site.index(x_act)]
    options = dict(steps=steps, batch_size=batch_size, rule=rule, tolerance=tolerance)
    return _attribute(
        model,
        toks,
        goal,
        whole,
        (x_act, b_act),
        method="layer_integrated_gradients",
        label=label,
        options=options,
        shown=site,
    )
