"""`mechlab explain --fix`: the explained preference's readout direction mean-ablated, on SmolLM2's
pronoun case (calibrated on the training occupations, measured on the held-out ones)."""

import pytest

import mechlab
from mechlab.report.fix import add_fix_section, fix_finding

pytestmark = [pytest.mark.smollm2, pytest.mark.slow]


def test_the_fix_section_removes_the_explained_preference_at_a_small_cost(smollm2) -> None:
    found = fix_finding(smollm2.model, "The nurse was tired because", " she", " he", "smollm2")
    assert found.before > 1.5  # " she" over " he" (notebook 05: 2.19)
    assert abs(found.after) < 0.2 * found.before and found.kl < 0.05
    assert found.calibrated and found.held_out is not None
    before, after = found.held_out
    assert 0.6 < before < 1.2 and after < 0.2 * before
    assert found.command.startswith("mechlab bake smollm2 --readout ' she' ' he' --mean --calibrate")
    html = add_fix_section(mechlab.Page("report"), found).render()
    assert "A fix the runtime runs" in html and "held-out occupations" in html
