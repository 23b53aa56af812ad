"""The JSON summary of an explanation (``mechlab explain --json``): the numbers, no HTML."""

from typing import Any


def summary_dict(ex: Any) -> dict[str, Any]:
    """The JSON summary of an explanation (``mechlab explain --json``)."""
    chosen, contrast = ex.target_names
    return {
        "prompt": ex.completion.prompt,
        "model_text": ex.completion.model_text,
        "completion": ex.completion.text,
        "steps": [
            {"token": s.text, "p": s.prob, "alternatives": [[a.text, a.prob] for a in s.alternatives]}
            for s in ex.completion.steps
        ],
        "explained": {
            "step": ex.settings.step,
            "chosen": chosen,
            "contrast": contrast,
            "chosen_p": ex.chosen_prob,
            "contrast_p": ex.contrast_prob,
            "logit_diff": ex.dla.value,
        },
        "integrated_gradients": {
            "words": ex.ig.words(),
            "completeness_error": ex.ig.completeness_error,
        },
        "logit_lens_first_layer": ex.lens.first_layer_top(ex.chosen),
        "dla": {"top_heads": ex.dla.top_heads(10), "remainder": ex.dla.remainder},
        "heads": [
            {
                "head": h.label,
                "knockout": h.ablation,
                "atp": h.atp,
                "dla": h.dla,
                "detectors": list(h.detectors),
            }
            for h in ex.heads
        ],
        "detectors": None
        if ex.detectors is None
        else {name: [str(s) for s in result.top(5)] for name, result in ex.detectors.items()},
        "verification": None if ex.verification is None else ex.verification.to_dict(),
        "saes": [findings.to_dict() for findings in ex.saes],
        "fix": None if ex.fix is None else ex.fix.to_dict(),
        "manifest": ex.manifest,
    }
