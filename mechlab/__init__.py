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

import importlib
import sys
from types import ModuleType
from typing import Any

# The public API: each name and the module that defines it. Nothing is imported until a name is first
# used (PEP 562), so ``import mechlab`` and ``mechlab --help`` stay fast and a bad file is refused
# before torch or transformers load.
_EXPORTS: dict[str, tuple[str, ...]] = {
    "mechlab.activations": (
        "Activations",
        "MemoryEstimate",
        "capture",
        "estimate_memory",
    ),
    "mechlab.detectors": (
        "Detector",
        "DetectorRegistry",
        "DetectorReport",
        "DetectorResult",
        "HeadScore",
        "PatternDetector",
        "WeightDetector",
        "repeated_tokens",
        "run_detectors",
    ),
    "mechlab.detectors.composition": (
        "composition_baseline",
        "composition_score",
    ),
    "mechlab.errors": (
        "BundledModelMissingError",
        "CaptureStoreError",
        "CompatError",
        "CorruptModelError",
        "DetectorError",
        "DetectorPluginError",
        "DuplicateDetectorError",
        "HookError",
        "HubGatedModelError",
        "HubModelNotFoundError",
        "HubUnreachableError",
        "InputError",
        "TaskError",
        "MechlabError",
        "MemoryLimitError",
        "MemoryPlanError",
        "ModelNotFoundError",
        "OllamaModelNotFoundError",
        "SiteError",
        "SourceError",
        "UnknownDetectorError",
        "UnsupportedArchitectureError",
        "VerificationError",
    ),
    "mechlab.readout.attention": (
        "AttentionView",
        "attention_view",
    ),
    "mechlab.attribution.result": ("Attribution",),
    "mechlab.readout.dla": (
        "DirectLogitAttribution",
        "direct_logit_attribution",
    ),
    "mechlab.readout.lens": (
        "LogitLens",
        "logit_lens",
    ),
    "mechlab.probes.probes": (
        "ProbeConfig",
        "ProbeResult",
        "train_probes",
    ),
    "mechlab.probes.data": (
        "ProbeDataset",
        "load_probe_dataset",
    ),
    "mechlab.interventions.steering": (
        "SteeringResult",
        "steer",
        "steer_with_probe",
    ),
    "mechlab.dictionaries": ("SAE", "SAEConfig", "load_sae"),
    "mechlab.dictionaries.corpus": ("build_corpus", "corpus_documents", "corpus_tokens"),
    "mechlab.dictionaries.evaluate": ("SAEEvaluation", "evaluate_sae"),
    "mechlab.dictionaries.train": ("train_sae",),
    "mechlab.dictionaries.train_config": ("TrainConfig", "TrainProgress"),
    "mechlab.dictionaries.site": ("SAESite", "attach_sae", "detach_sae"),
    "mechlab.dictionaries.features": ("feature_pages", "feature_pages_many"),
    "mechlab.dictionaries.feature_report": ("FeatureReport",),
    "mechlab.dictionaries.transcoder": ("Transcoder", "load_transcoder", "load_transcoders"),
    "mechlab.dictionaries.transcoder_train": (
        "TranscoderEvaluation",
        "evaluate_transcoders",
        "train_transcoders",
    ),
    "mechlab.graphs": (
        "AttributionGraph",
        "FeaturePath",
        "Verification",
        "attribute_graph",
        "describe_path",
        "feature_names",
        "feature_paths",
        "feature_reports",
        "graph_page",
        "graph_scores",
        "logit_effects",
        "prune_graph",
        "save_graph_json",
        "verify_graph",
        "vocabulary_inputs",
    ),
    "mechlab.directions": (
        "Direction",
        "DirectionScan",
        "Pairs",
        "Separation",
        "load_direction",
        "load_pairs",
    ),
    "mechlab.fix.ablation": (
        "FixSweep",
        "LogitGap",
        "ablation_hooks",
        "calibrate",
        "mean_values",
        "steering_sweep",
        "writer_sites",
    ),
    "mechlab.fix.control_vector": (
        "ControlVector",
        "control_vector",
        "read_control_vector",
        "write_control_vector",
    ),
    "mechlab.fix.bake": ("BakeResult", "bake"),
    "mechlab.fix.pronouns": ("PronounSet", "load_pronoun_set", "neutral_text"),
    "mechlab.fix.verify": ("BakeCheck", "ControlVectorCheck", "check_bake", "check_control_vector"),
    "mechlab.targets": (
        "Target",
        "make_target",
    ),
    "mechlab.attribution.integrated_gradients": (
        "gradient_x_input",
        "integrated_gradients",
        "layer_integrated_gradients",
    ),
    "mechlab.attribution.occlusion": ("occlusion",),
    "mechlab.report.explain": ("explain", "Explanation", "HeadFinding"),
    "mechlab.report.compare": ("Comparison", "compare_models", "requantized"),
    "mechlab.report.settings": ("ExplainSettings",),
    "mechlab.report.prompts": ("PromptTask", "explain_prompts", "read_prompts"),
    "mechlab.executors": ("Executor", "ExecutorRegistry", "InProcess", "resolve_executor"),
    "mechlab.generation": ("Completion", "generate", "next_token_alternatives"),
    "mechlab.tokens": ("as_tokens", "check_prompt", "encode_prompt", "single_token", "str_tokens"),
    "mechlab.files": ("atomic_write", "check_targets", "replacing_read_only"),
    "mechlab.interventions.attribution_patching": (
        "Agreement",
        "agreement",
        "attribution_patch",
    ),
    "mechlab.interventions.edges": (
        "EdgeScores",
        "eap_ig",
    ),
    "mechlab.hooks": (
        "active_hook_count",
        "hooked",
        "zero_ablation",
    ),
    "mechlab.interventions.inputs": ("Ablation",),
    "mechlab.interventions.patching": ("patch",),
    "mechlab.interventions.paths": ("path_patch",),
    "mechlab.interventions.result": ("PatchResult",),
    "mechlab.interventions.sweep": ("Sweep",),
    "mechlab.metrics": (
        "AnswerLogit",
        "AnswerLogProb",
        "AnswerProb",
        "KLFromReference",
        "LogitDiff",
        "Metric",
        "PositionMetric",
        "answer_ids",
        "normalized_effect",
    ),
    "mechlab.models.cache": ("cache_dir",),
    "mechlab.models.memory": ("MemoryPlan", "plan_memory"),
    "mechlab.models.info": ("ModelInfo",),
    "mechlab.models.load": (
        "LoadedModel",
        "load_model",
    ),
    "mechlab.toy.model": ("save_toy",),
    "mechlab.models.verify": (
        "VerifyReport",
        "verify",
    ),
    "mechlab.progress": (
        "ProgressState",
        "RichProgress",
        "SweepProgress",
    ),
    "mechlab.render": ("figures",),
    "mechlab.render.page": ("Page",),
    "mechlab.shards": (
        "CaptureDataset",
        "CaptureProgress",
        "capture_dataset",
        "read_capture",
    ),
    "mechlab.sites": (
        "Site",
        "head_sites",
        "kv_head",
        "layer_sites",
    ),
    "mechlab.site_kinds": ("SiteKind", "register_site_kind", "unregister_site_kind"),
    "mechlab.toy": (
        "ToyTrainConfig",
        "TrainedToy",
        "TrainStep",
        "cached_induction_toy",
        "train_induction_toy",
    ),
    "mechlab.types": ("HookedModel",),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}


class _Package(ModuleType):
    """The ``mechlab`` module. ``mechlab.explain`` is the one-call report (``mechlab.report.explain``);
    the ``mechlab.explain`` package of earlier releases stays importable for one release
    (``from mechlab.explain import logit_lens``), and importing it must not rebind the name."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "explain" and isinstance(value, ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package

__version__ = "0.1.0"

__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        return _submodule(name)
    owner = importlib.import_module(module)
    value = getattr(owner, name) if hasattr(owner, name) else importlib.import_module(f"{module}.{name}")
    globals()[name] = value
    return value


def _submodule(name: str) -> Any:
    """``mechlab.<submodule>`` read as an attribute before anything imported it."""
    try:
        return importlib.import_module(f"mechlab.{name}")
    except ModuleNotFoundError as error:
        if error.name != f"mechlab.{name}":
            raise
        raise AttributeError(f"module 'mechlab' has no attribute {name!r}") from None


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
