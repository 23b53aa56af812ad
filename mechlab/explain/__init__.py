"""Explanation methods: attention views, attributions (IG, gradient × input, occlusion), logit lens
and direct logit attribution, probing classifiers."""

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
from mechlab.explain.quadrature import quadrature
from mechlab.explain.targets import Target, make_target, single_token

__all__ = [
    "AttentionView",
    "Attribution",
    "DirectLogitAttribution",
    "LogitLens",
    "Target",
    "attention_view",
    "direct_logit_attribution",
    "gradient_x_input",
    "integrated_gradients",
    "layer_integrated_gradients",
    "logit_lens",
    "make_target",
    "occlusion",
    "quadrature",
    "single_token",
]
