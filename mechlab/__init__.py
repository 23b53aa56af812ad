"""mechlab: mechanistic interpretability for the model you actually run.

Load a GGUF file, an Ollama model, a Hugging Face checkpoint or a toy model as a TransformerLens
hooked model, then cache, patch, attribute and explain. Everything speaks the HookedTransformer
protocol: hook names like ``blocks.3.attn.hook_z``, ``run_with_cache``, ``run_with_hooks``.

    >>> import mechlab, torch
    >>> model, tokenizer, info = mechlab.load_model("toy:tiny")
    >>> logits, cache = model.run_with_cache(torch.tensor([[1, 2, 3]]))
    >>> tuple(cache[mechlab.Site("z", 1).hook_name].shape)
    (1, 3, 4, 8)
"""

from mechlab.capture import Activations, MemoryEstimate, capture, estimate_memory
from mechlab.detectors import (
    Detector,
    DetectorRegistry,
    DetectorReport,
    DetectorResult,
    HeadScore,
    PatternDetector,
    WeightDetector,
    repeated_tokens,
    run_detectors,
)
from mechlab.detectors.composition import composition_baseline, composition_score
from mechlab.errors import (
    BundledModelMissingError,
    CaptureStoreError,
    CorruptModelError,
    DetectorError,
    DetectorPluginError,
    DuplicateDetectorError,
    HookError,
    HubGatedModelError,
    HubModelNotFoundError,
    HubUnreachableError,
    InputError,
    MechlabError,
    MemoryLimitError,
    ModelNotFoundError,
    OllamaModelNotFoundError,
    SiteError,
    SourceError,
    UnknownDetectorError,
    UnsupportedArchitectureError,
    VerificationError,
)
from mechlab.explain import (
    AttentionView,
    Attribution,
    DirectLogitAttribution,
    LogitLens,
    ProbeConfig,
    ProbeDataset,
    ProbeResult,
    SteeringResult,
    Target,
    attention_view,
    direct_logit_attribution,
    gradient_x_input,
    integrated_gradients,
    layer_integrated_gradients,
    load_probe_dataset,
    logit_lens,
    make_target,
    occlusion,
    steer,
    steer_with_probe,
    train_probes,
)
from mechlab.explain.explanation import ExplainEntry, Explanation, HeadFinding
from mechlab.explain.settings import ExplainSettings
from mechlab.generation import Completion, encode_prompt, generate, next_token_alternatives
from mechlab.interventions.attribution_patching import Agreement, agreement, attribution_patch
from mechlab.interventions.edges import EdgeScores, eap_ig
from mechlab.interventions.hooks import active_hook_count, hooked, zero_ablation
from mechlab.interventions.inputs import Ablation
from mechlab.interventions.patching import patch
from mechlab.interventions.paths import path_patch
from mechlab.interventions.result import PatchResult
from mechlab.interventions.sweep import Sweep
from mechlab.metrics import (
    AnswerLogit,
    AnswerLogProb,
    AnswerProb,
    KLFromReference,
    LogitDiff,
    Metric,
    PositionMetric,
    answer_ids,
    normalized_effect,
)
from mechlab.models.cache import cache_dir
from mechlab.models.info import ModelInfo
from mechlab.models.load import LoadedModel, load_model
from mechlab.models.toy import save_toy
from mechlab.models.verify import VerifyReport, verify
from mechlab.progress import ProgressState, RichProgress, SweepProgress
from mechlab.render import figures
from mechlab.render.page import Page
from mechlab.shards import CaptureDataset, CaptureProgress, capture_dataset, read_capture
from mechlab.sites import Site, head_sites, kv_head, layer_sites
from mechlab.toy import ToyTrainConfig, TrainedToy, TrainStep, cached_induction_toy, train_induction_toy
from mechlab.types import HookedModel

# ``mechlab.explain(model, prompt)`` writes the one-call report; ``mechlab.explain.logit_lens`` and
# every other name of the ``mechlab.explain`` package stay reachable through it.
explain = ExplainEntry()

__version__ = "0.1.0"

__all__ = [
    "Ablation",
    "Activations",
    "Agreement",
    "AnswerLogProb",
    "AnswerLogit",
    "AnswerProb",
    "AttentionView",
    "Attribution",
    "BundledModelMissingError",
    "CaptureDataset",
    "CaptureProgress",
    "CaptureStoreError",
    "Completion",
    "CorruptModelError",
    "Detector",
    "DetectorError",
    "DetectorPluginError",
    "DetectorRegistry",
    "DetectorReport",
    "DetectorResult",
    "DirectLogitAttribution",
    "DuplicateDetectorError",
    "EdgeScores",
    "ExplainSettings",
    "Explanation",
    "HeadFinding",
    "HeadScore",
    "HookError",
    "HookedModel",
    "HubGatedModelError",
    "HubModelNotFoundError",
    "HubUnreachableError",
    "InputError",
    "KLFromReference",
    "LoadedModel",
    "LogitDiff",
    "LogitLens",
    "MechlabError",
    "MemoryEstimate",
    "MemoryLimitError",
    "Metric",
    "ModelInfo",
    "ModelNotFoundError",
    "OllamaModelNotFoundError",
    "Page",
    "PatchResult",
    "PatternDetector",
    "PositionMetric",
    "ProbeConfig",
    "ProbeDataset",
    "ProbeResult",
    "ProgressState",
    "RichProgress",
    "Site",
    "SiteError",
    "SourceError",
    "SteeringResult",
    "Sweep",
    "SweepProgress",
    "Target",
    "ToyTrainConfig",
    "TrainStep",
    "TrainedToy",
    "UnknownDetectorError",
    "UnsupportedArchitectureError",
    "VerificationError",
    "VerifyReport",
    "WeightDetector",
    "active_hook_count",
    "agreement",
    "answer_ids",
    "attention_view",
    "attribution_patch",
    "cache_dir",
    "cached_induction_toy",
    "capture",
    "capture_dataset",
    "composition_baseline",
    "composition_score",
    "direct_logit_attribution",
    "eap_ig",
    "encode_prompt",
    "estimate_memory",
    "explain",
    "figures",
    "generate",
    "gradient_x_input",
    "head_sites",
    "hooked",
    "integrated_gradients",
    "kv_head",
    "layer_integrated_gradients",
    "layer_sites",
    "load_model",
    "load_probe_dataset",
    "logit_lens",
    "make_target",
    "next_token_alternatives",
    "normalized_effect",
    "occlusion",
    "patch",
    "path_patch",
    "read_capture",
    "repeated_tokens",
    "run_detectors",
    "save_toy",
    "steer",
    "steer_with_probe",
    "train_induction_toy",
    "train_probes",
    "verify",
    "zero_ablation",
]
