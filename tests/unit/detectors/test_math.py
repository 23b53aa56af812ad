"""Pure detector math on synthetic tensors: no model involved."""

import pytest
import torch

from mechlab.detectors import (
    chance_level,
    pattern_scores,
    shuffle_second_copy,
    shuffle_targets,
    target_attention,
)
from mechlab.detectors.builtin import (
    AttentionSinkDetector,
    CurrentTokenDetector,
    DuplicateTokenDetector,
    InductionDetector,
    PreviousTokenDetector,
)
from mechlab.detectors.composition import composition
from mechlab.detectors.copying import copying_score, ov_eigenvalues
from mechlab.detectors.inputs import draw_repeated
from mechlab.detectors.result import DetectorResult, mean_interval, t_quantile_975
from mechlab.detectors.weights import FoldedHeads
from mechlab.errors import InputError

N = 7  # random block length: sequences are BOS + 7 + 7 = 15 tokens
PATTERN_DETECTORS = [
    InductionDetector(),
    DuplicateTokenDetector(),
    PreviousTokenDetector(),
    CurrentTokenDetector(),
    AttentionSinkDetector(),
]


def repeated(n_seqs: int = 3, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return draw_repeated(n_seqs, N, vocab=torch.arange(1, 40), bos=0, generator=generator)


def causal_uniform(n_seqs: int, n_heads: int, n: int) -> torch.Tensor:
    mask = torch.ones(n, n).tril()
    return (mask / mask.sum(-1, keepdim=True)).expand(n_seqs, n_heads, n, n)


def random_pattern(n_seqs: int, n_heads: int, n: int, seed: int = 1) -> torch.Tensor:
    scores = torch.randn(n_seqs, n_heads, n, n, generator=torch.Generator().manual_seed(seed))
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    return scores.masked_fill(~causal, float("-inf")).softmax(-1)


def perfect_pattern(targets: torch.Tensor) -> torch.Tensor:
    """Attention spread evenly over each row's targets; rows without targets attend uniformly."""
    n = targets.shape[-1]
    rows = targets / targets.sum(-1, keepdim=True).clamp(min=1)
    has_target = targets.sum(-1, keepdim=True) > 0
    pattern = torch.where(has_target, rows, causal_uniform(1, 1, n)[0, 0].expand_as(targets))
    return pattern.unsqueeze(1)


def test_repeated_tokens_layout() -> None:
    tokens = repeated()
    assert tokens.shape == (3, 2 * N + 1)
    assert (tokens[:, 0] == 0).all()
    assert torch.equal(tokens[:, 1 : N + 1], tokens[:, N + 1 :])
    for row in tokens[:, 1 : N + 1]:
        assert row.unique().numel() == N  # distinct: the only repeats are the intended ones


@pytest.mark.parametrize("detector", PATTERN_DETECTORS, ids=lambda d: d.name)
def test_perfect_pattern_scores_one(detector: object) -> None:
    tokens = repeated()
    targets = detector.expected_pattern(tokens)  # type: ignore[attr-defined]
    scores = target_attention(perfect_pattern(targets), targets)
    torch.testing.assert_close(scores, torch.ones(3, 1))


def _mean_inverse(destinations: range) -> float:
    """Mean over destinations q of 1 / (q + 1): one target among the q + 1 allowed sources."""
    return sum(1 / (q + 1) for q in destinations) / len(destinations)


# Chance by hand on BOS + r + r (length 2N + 1): every scored row has one target.
HAND_CHANCE = {
    "induction": _mean_inverse(range(N + 1, 2 * N + 1)),  # second-copy destinations
    "duplicate-token": _mean_inverse(range(N + 1, 2 * N + 1)),
    "previous-token": _mean_inverse(range(1, 2 * N + 1)),  # every destination but BOS
    "current-token": _mean_inverse(range(1, 2 * N + 1)),  # position 0 is not scored
    "attention-sink": _mean_inverse(range(1, 2 * N + 1)),
}


@pytest.mark.parametrize("detector", PATTERN_DETECTORS, ids=lambda d: d.name)
def test_uniform_attention_scores_the_hand_computed_chance(detector: object) -> None:
    tokens = repeated()
    targets = detector.expected_pattern(tokens)  # type: ignore[attr-defined]
    expected = torch.full((3, 2), HAND_CHANCE[detector.name])  # type: ignore[attr-defined]
    torch.testing.assert_close(target_attention(causal_uniform(3, 2, 2 * N + 1), targets), expected)
    torch.testing.assert_close(chance_level(targets), expected[:, 0])
    torch.testing.assert_close(detector.chance(tokens), expected[:, 0])  # type: ignore[attr-defined]


def test_scores_match_the_reference_diagonals() -> None:
    """REFERENCES.md definitions: induction = diagonal(1 - n) over the second copy, and so on."""
    tokens = repeated()
    pattern = random_pattern(3, 4, 2 * N + 1)
    expected = {
        "induction": pattern.diagonal(1 - N, -2, -1)[..., -N:].mean(-1),
        "duplicate-token": pattern.diagonal(-N, -2, -1)[..., -N:].mean(-1),
        "previous-token": pattern.diagonal(-1, -2, -1).mean(-1),
        "current-token": pattern.diagonal(0, -2, -1)[..., 1:].mean(-1),
        "attention-sink": pattern[..., 1:, 0].mean(-1),
    }
    for detector in PATTERN_DETECTORS:
        got = target_attention(pattern, detector.expected_pattern(tokens))
        torch.testing.assert_close(got, expected[detector.name], msg=detector.name)


def test_pattern_scores_stacks_layers() -> None:
    tokens = repeated()
    targets = InductionDetector().expected_pattern(tokens)
    layers = torch.stack([random_pattern(3, 4, 2 * N + 1, seed=s) for s in range(3)])
    scores = pattern_scores(layers, targets)
    assert scores.shape == (3, 3, 4)
    torch.testing.assert_close(scores[:, 2], target_attention(layers[2], targets))


def test_induction_targets_follow_content_not_position() -> None:
    tokens = torch.tensor([[0, 5, 6, 7, 9, 6, 8]])  # 6 at positions 2 and 5: target is 3 (token 7)
    targets = InductionDetector().expected_pattern(tokens)
    assert targets[0].nonzero().tolist() == [[5, 3]]
    duplicate = DuplicateTokenDetector().expected_pattern(tokens)
    assert duplicate[0].nonzero().tolist() == [[5, 2]]


def test_no_structure_is_an_error() -> None:
    tokens = torch.arange(10).unsqueeze(0)  # nothing repeats
    targets = InductionDetector().expected_pattern(tokens)
    with pytest.raises(InputError, match=r"marks no destination.*repeated"):
        target_attention(causal_uniform(1, 1, 10), targets)


def test_shuffled_targets_stay_causal_and_average_to_chance() -> None:
    tokens = repeated(n_seqs=2)
    targets = PreviousTokenDetector().expected_pattern(tokens)
    generator = torch.Generator().manual_seed(0)
    shuffled = shuffle_targets(targets, generator=generator)
    assert torch.equal(shuffled.sum(-1), targets.sum(-1))  # each row keeps its targets
    assert (shuffled.triu(1) == 0).all()  # and stays causal
    assert not torch.equal(shuffled, targets)
    pattern = random_pattern(2, 3, 2 * N + 1)
    draws = torch.stack(
        [target_attention(pattern, shuffle_targets(targets, generator=generator)) for _ in range(800)]
    )
    chance = chance_level(targets)[:, None].expand(2, 3)
    torch.testing.assert_close(draws.mean(0), chance, atol=0.01, rtol=0)


def test_shuffle_second_copy_keeps_tokens_breaks_order() -> None:
    tokens = repeated()
    control = shuffle_second_copy(tokens, generator=torch.Generator().manual_seed(0))
    assert torch.equal(control[:, : N + 1], tokens[:, : N + 1])
    assert torch.equal(control[:, N + 1 :].sort(-1).values, tokens[:, N + 1 :].sort(-1).values)
    assert not torch.equal(control, tokens)
    assert torch.equal(tokens[:, 1 : N + 1], tokens[:, N + 1 :])  # the input is not modified


def test_the_control_leaves_no_token_in_place() -> None:
    """A token left in place sits where the repeat put it: a content head would score there."""
    tokens = draw_repeated(
        256, N, vocab=torch.arange(1, 40), bos=0, generator=torch.Generator().manual_seed(0)
    )
    control = shuffle_second_copy(tokens, generator=torch.Generator().manual_seed(1))
    assert not (control[:, N + 1 :] == tokens[:, N + 1 :]).any()
    # A perfect content-following induction head, run on the control, attends after each token's
    # first occurrence in the control; scored against the unshuffled tokens' targets it gets 0.
    content_head = perfect_pattern(InductionDetector().expected_pattern(control))
    control_score = target_attention(content_head, InductionDetector().expected_pattern(tokens))
    assert torch.equal(control_score, torch.zeros(256, 1))
    with pytest.raises(InputError, match=r"len\(r\) >= 2.*repeated_tokens"):
        shuffle_second_copy(torch.tensor([[0, 5, 5]]), generator=torch.Generator())


def result(
    samples: list[float],
    *,
    baseline: list[float],
    control: list[float] | None = None,
    chance: float | None = None,
    seq_len: int = N,
) -> DetectorResult:
    """A one-layer, one-head result with the given per-sequence (or per-draw) values."""

    def column(values: list[float]) -> torch.Tensor:
        return torch.tensor(values)[:, None, None]

    return DetectorResult(
        name="test",
        description="hand-built",
        threshold=0.4,
        samples=column(samples),
        baseline_samples=column(baseline),
        control_samples=None if control is None else column(control),
        seq_len=seq_len,
        seed=0,
        chance_samples=None if chance is None else torch.full((len(samples),), chance),
    )


def test_verdicts_of_pattern_detectors_compare_with_the_exact_chance() -> None:
    noisy_baseline = [0.00, 0.12, 0.01, 0.11]  # mean 0.06, upper 95% bound ~0.15
    strong, content_gone, still_there = [0.8, 0.82, 0.79, 0.81], [0.01] * 4, [0.8, 0.79, 0.81, 0.8]
    assert result(strong, baseline=noisy_baseline, control=content_gone, chance=0.05).verdicts() == [
        ["detected"]
    ]
    assert result(strong, baseline=noisy_baseline, control=still_there, chance=0.05).verdicts() == [
        ["positional"]
    ]
    # Clearly above the exact chance 0.05, though inside the noisy baseline's interval: weak.
    slight = result([0.10, 0.11, 0.10, 0.11], baseline=noisy_baseline, chance=0.05)
    assert slight.verdicts() == [["weak"]] and slight.rows()[0].chance == pytest.approx(0.05)
    assert result([0.04, 0.07, 0.05, 0.06], baseline=noisy_baseline, chance=0.05).verdicts() == [["chance"]]
    # Without a closed-form chance the baseline's interval is the bar.
    assert result([0.10, 0.11, 0.10, 0.11], baseline=noisy_baseline).verdicts() == [["chance"]]


def test_verdicts_of_weight_detectors_use_a_prediction_bound() -> None:
    # Eight null draws: mean 0, sd 0.0607. The 95% interval of their mean ends at 0.051, but one
    # more draw stays below mean + t(7) sd sqrt(1 + 1/8) = 2.365 * 0.0607 * 1.061 = 0.152 only with
    # probability 0.975: that is the bar for a single exact score.
    null = [0.0, 0.1, -0.1, 0.05, -0.05, 0.02, -0.02, 0.0]
    assert result([0.1], baseline=null, seq_len=0).verdicts() == [["chance"]]  # beats the mean only
    assert result([0.2], baseline=null, seq_len=0).verdicts() == [["weak"]]
    beats = result([0.9], baseline=null, seq_len=0)
    assert beats.verdicts() == [["detected"]] and beats.rows()[0].chance == pytest.approx(0.1523, abs=5e-4)


def test_composition_of_synthetic_heads_with_known_k_composition() -> None:
    """Head 0.0 reads e0,e1 and writes e2,e3; head 1.0's keys read e2,e3, its queries e4,e5 and its
    values e6,e7 (it writes e0,e1). Then W_OV^A (W_QK^B)ᵀ is a rank-2 partial isometry:
    K = √2 / (√2 · √2), Q = V = 0."""
    eye = torch.eye(8)

    def basis(*axes: int) -> torch.Tensor:
        return eye[:, list(axes)]  # [d_model, d_head]

    zero = torch.zeros(8, 2)
    heads = FoldedHeads(
        W_Q=torch.stack([torch.stack([zero]), torch.stack([basis(4, 5)])]),
        W_K=torch.stack([torch.stack([zero]), torch.stack([basis(2, 3)])]),
        W_V=torch.stack([torch.stack([basis(0, 1)]), torch.stack([basis(6, 7)])]),
        W_O=torch.stack([torch.stack([basis(2, 3).T]), torch.stack([basis(0, 1).T])]),
        kv=torch.tensor([0]),
    )
    assert composition(heads, (0, 0), (1, 0), "k") == pytest.approx(2**-0.5, abs=1e-6)
    assert composition(heads, (0, 0), (1, 0), "q") == pytest.approx(0.0, abs=1e-7)
    assert composition(heads, (0, 0), (1, 0), "v") == pytest.approx(0.0, abs=1e-7)


def test_ov_eigenvalues_map_query_heads_to_their_key_value_heads() -> None:
    generator = torch.Generator().manual_seed(0)
    w_o = torch.randn(2, 4, 3, 8, generator=generator)
    w_v = torch.randn(2, 2, 8, 3, generator=generator)  # 2 key/value heads for 4 query heads
    read = torch.randn(8, 8, generator=generator)
    kv = torch.tensor([0, 0, 1, 1])
    expanded = w_v.repeat_interleave(2, dim=1)  # Llama's repeat_kv
    torch.testing.assert_close(ov_eigenvalues(w_o, read, w_v, kv), ov_eigenvalues(w_o, read, expanded))


def test_copying_score_of_known_spectra() -> None:
    assert copying_score(torch.tensor([1.0, 2.0, 0.5], dtype=torch.complex64)) == pytest.approx(1.0)
    assert copying_score(torch.tensor([-1.0, -3.0], dtype=torch.complex64)) == pytest.approx(-1.0)
    assert copying_score(torch.tensor([2j, -2j], dtype=torch.complex64)) == pytest.approx(0.0, abs=1e-7)
    assert copying_score(torch.tensor([3.0, -1.0], dtype=torch.complex64)) == pytest.approx(0.5)


def test_ov_eigenvalues_equal_the_full_circuit_spectrum() -> None:
    generator = torch.Generator().manual_seed(0)
    d_vocab, d_model, d_head = 12, 8, 3
    w_e = torch.randn(d_vocab, d_model, generator=generator)
    w_u = torch.randn(d_model, d_vocab, generator=generator)
    w_v = torch.randn(1, 1, d_model, d_head, generator=generator)
    w_o = torch.randn(1, 1, d_head, d_model, generator=generator)
    small = ov_eigenvalues(w_o, w_u @ w_e, w_v)[0, 0]
    full = torch.linalg.eigvals(w_e @ w_v[0, 0] @ w_o[0, 0] @ w_u)  # [d_vocab, d_vocab], rank d_head
    nonzero = full[full.abs() > 1e-3 * full.abs().max()]
    assert nonzero.numel() == d_head

    def ordered(values: torch.Tensor) -> torch.Tensor:
        pairs = sorted((float(z.real), float(z.imag)) for z in values)
        return torch.tensor(pairs)

    torch.testing.assert_close(ordered(small), ordered(nonzero), rtol=1e-3, atol=1e-3)
    identity = torch.eye(d_model)[None, None, :, :d_head]
    assert copying_score(ov_eigenvalues(identity.transpose(-1, -2), torch.eye(d_model), identity)) == 1.0


def test_t_quantiles_match_tables() -> None:
    for df, exact in {1: 12.706, 4: 2.776, 5: 2.571, 7: 2.365, 15: 2.131, 30: 2.042, 120: 1.980}.items():
        assert t_quantile_975(df) == pytest.approx(exact, abs=4e-3)
    with pytest.raises(ValueError, match="degree of freedom"):
        t_quantile_975(0)


def test_mean_interval() -> None:
    samples = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])[:, None, None]
    interval = mean_interval(samples)
    half = 2.776 * float(samples.std()) / 5**0.5
    assert float(interval.mean) == pytest.approx(3.0)
    assert float(interval.low) == pytest.approx(3.0 - half, abs=1e-3)
    assert float(interval.high) == pytest.approx(3.0 + half, abs=1e-3)
    single = mean_interval(samples[:1])
    assert float(single.low) == float(single.high) == 1.0
