"""Explanation methods: attention views, attributions (Integrated Gradients, gradient × input,
occlusion, layer IG), logit lens and direct logit attribution, probing classifiers and steering.

Every method takes one prompt (text or token ids) and returns a frozen result that checks its own
invariant (IG: completeness; DLA: the parts sum to the logit; lens: the last row is the model's
logits; probes: a control task) and renders itself: ``_repr_html_`` in Jupyter, ``.plot()`` for a
matplotlib figure, ``.add_to(page)`` to join an offline ``mechlab.render.page.Page``.
"""

from mechlab.explain.attention import AttentionView, attention_view
from mechlab.explain.attribution import Attribution
from mechlab.explain.dla import DirectLogitAttribution, direct_logit_attribution
from mechlab.explain.integrated_gradients import (
    gradient_x_input,
    integrated_gradients,
    layer_integrated_gradients,
)
from mechlab.explain.lens import LogitLens, logit_lens
from mechlab.explain.occlusion import occlusion
from mechlab.explain.probe_data import ProbeDataset, load_probe_dataset
from mechlab.explain.probes import ProbeConfig, ProbeResult, train_probes
from mechlab.explain.quadrature import quadrature
from mechlab.explain.steering import SteeringResult, steer, steer_with_probe
from mechlab.explain.targets import Target, as_tokens, make_target, single_token

__all__ = [
    "AttentionView",
    "Attribution",
    "DirectLogitAttribution",
    "LogitLens",
    "ProbeConfig",
    "ProbeDataset",
    "ProbeResult",
    "SteeringResult",
    "Target",
    "as_tokens",
    "attention_view",
    "direct_logit_attribution",
    "gradient_x_input",
    "integrated_gradients",
    "layer_integrated_gradients",
    "load_probe_dataset",
    "logit_lens",
    "make_target",
    "occlusion",
    "quadrature",
    "single_token",
    "steer",
    "steer_with_probe",
    "train_probes",
]
