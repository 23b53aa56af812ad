"""The ``mechlab.explain`` package of earlier releases, kept for one release: thin re-exports.

The methods now live in their own rooms: ``mechlab.attribution`` (Integrated Gradients, gradient ×
input, occlusion), ``mechlab.readout`` (logit lens, DLA, attention views), ``mechlab.probes`` and
``mechlab.interventions.steering``; every name below is also ``mechlab.<name>``. ``mechlab.explain``
itself is the one-call report, ``mechlab.report.explain.explain``.
"""

from mechlab.attribution.integrated_gradients import (
    gradient_x_input,
    integrated_gradients,
    layer_integrated_gradients,
)
from mechlab.attribution.occlusion import occlusion
from mechlab.attribution.quadrature import quadrature
from mechlab.attribution.result import Attribution
from mechlab.interventions.steering import SteeringResult, steer, steer_with_probe
from mechlab.probes.data import ProbeDataset, load_probe_dataset
from mechlab.probes.probes import ProbeConfig, ProbeResult, train_probes
from mechlab.readout.attention import AttentionView, attention_view
from mechlab.readout.dla import DirectLogitAttribution, direct_logit_attribution
from mechlab.readout.lens import LogitLens, logit_lens
from mechlab.targets import Target, make_target
from mechlab.tokens import as_tokens, single_token

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
