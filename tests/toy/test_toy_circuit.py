"""The circuits the trained toy models contain (REFERENCES.md): the induction circuit on the random
layout, positional heads and no induction head on the fixed layout."""

import mechlab
from mechlab import Site, run_detectors


def test_trained_toy_has_the_induction_circuit(induction_toy: mechlab.TrainedToy) -> None:
    """REFERENCES.md: layer-1 induction heads, a layer-0 previous-token head, ablation collapses it."""
    model = induction_toy.model
    assert induction_toy.final_loss < 0.2
    report = run_detectors(model, ["induction", "previous-token", "copying"], n_samples=16)
    top = report["induction"].top(1)[0]
    assert top.layer == 1 and top.score >= 0.7 and top.verdict == "detected"
    prev = report["previous-token"].detected()
    assert prev and prev[0].layer == 0 and prev[0].score >= 0.5
    layer0 = report["induction"].scores[0]
    assert float(layer0.max()) < 0.05  # REFERENCES: layer-0 induction ≈ 0.002
    copying = report["copying"]  # induction heads copy what they attend to; the prev head does not
    assert float(copying.scores[top.layer, top.head]) > 0.9
    assert (top.layer, top.head) in {(row.layer, row.head) for row in copying.detected()}
    assert float(copying.scores[prev[0].layer, prev[0].head]) < 0.5

    with mechlab.hooked(model, mechlab.zero_ablation([Site("z", prev[0].layer, prev[0].head)])):
        ablated = run_detectors(model, ["induction"], n_samples=16)["induction"]
    after = float(ablated.scores[top.layer, top.head])
    assert after < 0.3 and after < top.score / 3
    assert ablated.detected() == []


def test_negative_control_has_no_previous_token_or_induction_heads(
    positional_toy: mechlab.TrainedToy,
) -> None:
    """The fixed layout is solved by position: layer-0 heads hit the induction diagonal but are
    not called induction heads (they keep the score with the repeat broken), and no head is a
    previous-token head."""
    report = run_detectors(positional_toy.model, ["induction", "previous-token"], n_samples=16)
    assert report["previous-token"].detected() == []
    assert float(report["previous-token"].scores[0].max()) < 0.15
    induction = report["induction"]
    positional = [row for row in induction.rows() if row.verdict == "positional"]
    assert positional and positional[0].layer == 0 and positional[0].score > 0.5
    assert positional[0].control is not None and positional[0].control > 0.5
    assert induction.detected() == []
