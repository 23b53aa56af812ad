"""Errors raised by mechlab.

Every error says what was expected, what came, and what to do next. Long fix-it texts live here as
module constants so the code that raises stays short and the wording is tested in one place.
"""


class MechlabError(Exception):
    """Base class of every error mechlab raises on purpose."""


class SourceError(MechlabError, ValueError):
    """A model source string could not be understood."""


class DuplicateSourceError(SourceError):
    """Two installed packages register a model source under the same scheme, or both claim a string."""


class SourcePluginError(SourceError):
    """A model-source plugin failed to load or is not a ``mechlab.models.sources.Source``."""


class ModelNotFoundError(MechlabError, FileNotFoundError):
    """The model a source names does not exist where it should."""


class BundledModelMissingError(ModelNotFoundError):
    """The bundled SmolLM2 package is not installed."""


class OllamaModelNotFoundError(ModelNotFoundError):
    """An `ollama:NAME[:TAG]` source names no model in the local Ollama store."""


class HubUnreachableError(ModelNotFoundError):
    """A model name needs the Hugging Face Hub, which cannot be reached (or offline mode is on)."""


class HubModelNotFoundError(ModelNotFoundError):
    """The Hugging Face Hub answered that it has no (public) model of this name."""


class HubGatedModelError(HubModelNotFoundError):
    """The Hub has the model but serves its files only to users who accepted its terms."""


class CorruptModelError(MechlabError, ValueError):
    """A model file exists but is not a readable model (bad magic, truncated, inconsistent)."""


class UnsupportedArchitectureError(MechlabError, ValueError):
    """The model's architecture cannot be converted or hooked."""


class SiteError(MechlabError, ValueError):
    """A Site names a hook kind, layer or head the model does not have."""


class HookError(MechlabError, RuntimeError):
    """A hook could not be attached or raised while running."""


class InputError(MechlabError, ValueError):
    """Tokens, prompts or targets do not fit what the operation needs."""


class VerificationError(MechlabError, RuntimeError):
    """The hooked model disagrees with its reference beyond tolerance."""


MSG_BUNDLED_MISSING = (
    "{description} is not installed: the package(s) {packages} holding its file are missing.\nInstall "
    "without (unneeded) dependencies:\n    {install}\nor run `make install`, which does this for you."
)

MSG_UNKNOWN_SOURCE = "Cannot understand the model source {source!r}. {hint}\nExpected one of:\n{forms}"

MSG_UNKNOWN_EXECUTOR = (
    "No executor is registered as {name!r}. Installed executors: {available}. An executor is an entry "
    "point in the group mechlab.executors (see mechlab.executors)."
)

MSG_MISSING_EXTRA = (
    "{what} needs the optional package {package!r}, which is not installed. Install it with "
    "`pip install 'mechlab[{extra}]'` (or `pip install {pin}`)."
)


class TaskError(MechlabError, RuntimeError):
    """Tasks of a sweep raised on an executor; the other tasks completed.

    Attributes:
        failures: ``(index, task, error)`` of each task that raised, in task order (``error`` is the
            exception the task raised, or a description of it when it cannot travel back).
        results: every task's result in task order, ``None`` for the failed ones.
    """

    def __init__(self, message: str, failures: list[tuple[int, object, object]], results: list[object]):
        super().__init__(message)
        self.failures = failures
        self.results = results


MSG_DUPLICATE_SOURCE = (
    "Two installed packages provide the model source {name!r}: {first} and {second}. Uninstall one "
    "of them; until then {name!r} cannot be used (every other source still works)."
)

MSG_SOURCES_CLAIM = (
    "{source!r} is claimed by more than one installed model source ({names}). Write it with a "
    "scheme to say which: {examples}."
)

MSG_PATH_MISSING = (
    "{source!r} looks like a path, and {resolved} does not exist.\n"
    "Pass an existing .gguf file or a Hugging Face directory (config.json + weights). A Hub name has "
    "the form ORG/NAME, without './', '/' or '~' in front (e.g. hf:HuggingFaceTB/SmolLM2-135M-Instruct)."
)

MSG_SYMLINK_LOOP = (
    "{source!r} is a symbolic link that never reaches a file: following it from {path} leads back to "
    "a link already followed ({error}). Point the link (or the command) at the real .gguf file."
)

MSG_HUB_OFFLINE = (
    "{label} is not a local path, so mechlab looked for it in the local Hugging Face cache and did not "
    "find it; offline mode is on (HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE is set), so the Hub was not asked.\n"
    "Load a local copy instead: download it where you have network access (`hf download {name} "
    "--local-dir DIR`), copy DIR here and pass DIR, or pass the path of a GGUF file you already run "
    "with llama.cpp or Ollama. Unset HF_HUB_OFFLINE and TRANSFORMERS_OFFLINE to let mechlab download it."
)

MSG_HUB_UNREACHABLE = (
    "{label} is not a local path, so mechlab asked the Hugging Face Hub for it, and the Hub could "
    "not be reached (and the model is not in the local HF cache).\n"
    "Load a local copy instead: download it where you have network access (`hf download {name} "
    "--local-dir DIR`), copy DIR here and pass DIR, or pass the path of a GGUF file you already run "
    "with llama.cpp or Ollama.\nUnderlying error: {error}"
)

MSG_HUB_NOT_FOUND = (
    "The Hugging Face Hub has no model {label} (or it is private and you are not logged in).\n"
    "Check the spelling against https://huggingface.co/{name} (Hub names have the form ORG/NAME); "
    "for a private model log in with `hf auth login`. A local file or directory loads by its path."
)

MSG_HUB_GATED = (
    "{label} is a gated model: the Hugging Face Hub serves its files only to logged-in users who "
    "accepted its terms.\nAccept them at https://huggingface.co/{name}, then log in with "
    "`hf auth login` (or set HF_TOKEN) and try again; or pass a local copy's path."
)

MSG_HUB_FAILED = (
    "transformers could not load {label} from the Hugging Face Hub: {error}\n"
    "If you have the model locally, pass its path (a .gguf file or a directory with config.json)."
)

MSG_NOT_GGUF = (
    "{path} is not a GGUF file: its first four bytes are {magic!r}, a GGUF file starts with b'GGUF'.\n"
    "Pass the .gguf file your runtime loads (for Ollama use `ollama:NAME` and mechlab finds the blob)."
)

MSG_CORRUPT_GGUF = (
    "{path} starts like a GGUF file but cannot be read ({error}). The file is probably truncated "
    "or damaged (size {size:,} bytes). Download it again and compare its sha256 with the publisher's."
)

MSG_UNSUPPORTED_GGUF_ARCH = (
    "{path} holds a {arch!r} model. mechlab converts GGUF files with transformers' GGUF loader, which "
    "does not convert {arch!r}.\nGGUF architectures mechlab can load (converted and hooked): "
    "{supported}.\nConvert the model to a Hugging Face directory with another tool and pass that "
    "directory instead."
)

MSG_NOT_CAUSAL_GGUF_ARCH = (
    "{path} holds a {arch!r} model (transformers model type {model_type!r}), and transformers has no "
    "causal language model class for that type (AutoModelForCausalLM cannot build it; encoder-decoder "
    "models such as T5 do not predict the next token of their input), so mechlab cannot hook it.\n"
    "GGUF architectures mechlab can load: {supported}."
)

MSG_UNHOOKABLE_GGUF_ARCH = (
    "{path} holds a {arch!r} model, which transformers loads as {hf_class}, and TransformerLens "
    "{tl_version} has no adapter for {hf_class}, so it cannot be hooked.\n"
    "GGUF architectures mechlab can load: {supported}."
)

MSG_GGUF_ROPE_SCALING = (
    "{path} holds a {arch!r} model whose positions llama.cpp encodes with {scaling}, which mechlab "
    "cannot convert into an equivalent transformers config: loaded anyway, the hooked model would "
    'differ from what llama.cpp runs (README: "Against llama.cpp itself" lists the architectures '
    "checked against llama.cpp). Use a file without this RoPE scaling, or load the model's Hugging "
    "Face checkpoint instead (source hf:DIR or hf:ORG/NAME)."
)

MSG_UNSUPPORTED_TL_ARCH = (
    "The model's architecture {arch!r} has no TransformerLens adapter, so it cannot be hooked.\n"
    "Architectures TransformerLens {tl_version} can hook include: {supported}."
)

MSG_OLLAMA_NOT_FOUND = (
    "Ollama model {name}:{tag} not found: expected a manifest at {manifest}.\n"
    "{available}Pull it with `ollama pull {name}:{tag}`, or point $OLLAMA_MODELS at the store that "
    "has it (the directory that contains `manifests/` and `blobs/`)."
)


class MemoryLimitError(MechlabError, MemoryError):
    """Caching the requested activations would exceed the memory limit."""


class MemoryPlanError(MechlabError, MemoryError):
    """Loading the model in the requested mode would not fit the memory available."""


MSG_MEMORY_PLAN = (
    "Loading {name} as {mode} on {device} needs about {needed:.1f} GB ({step}), but {available:.1f} GB "
    "is available. {fitting}See the whole plan with `mechlab info SOURCE --plan` "
    "(mechlab.plan_memory), or pass check_memory=False to try anyway."
)
MSG_QUANTIZED_ARCH = (
    "{path} is a {arch} model; quantized mode loads {supported} (architectures whose matrices "
    "transformers only permutes when converting). Load it with weights='bfloat16' or 'float32' instead."
)
MSG_QUANTIZED_SOURCE = (
    "weights='quantized' keeps a GGUF file's blocks; {source!r} is a {scheme} source, which has none. "
    "Pass a .gguf file, ollama:NAME or a bundled model, or load it with weights='float32' or 'bfloat16'."
)
MSG_WEIGHTS_MODE = "Unknown weights mode {weights!r}: expected one of {modes}."
MSG_QUANTIZED_NEEDS_DIFFUSERS = (
    "Quantized mode dequantizes GGUF blocks with diffusers' torch kernels, which are not installed "
    "({error}). Install them with `pip install 'mechlab[quantized]'`, or load with weights='bfloat16'."
)


class CaptureStoreError(MechlabError, ValueError):
    """A capture directory on disk does not match the run that tries to resume or read it."""


class CorruptCaptureError(CaptureStoreError):
    """A capture's manifest or one of its shards is damaged: missing, truncated, or not what was written."""


MSG_MEMORY_LIMIT = (
    "Caching {n_sites} site(s) for tokens of shape {shape} needs about {needed}, above the limit of "
    "{limit} ({largest}).\nCache fewer sites (one head is Site('z', 3, 5), one position "
    "Site('resid_pre', 4, pos=-1)), pass logits=False if you do not need the logits, use fewer or "
    "shorter prompts, stream a dataset to disk with capture_dataset(...), or pass max_bytes=None to "
    "cache it anyway."
)

MSG_LENGTH_MISMATCH = (
    "Clean and corrupted inputs must have the same shape (patching swaps activations position by "
    "position), got clean {clean_shape} and corrupted {corrupted_shape}.\n{alignment}\nMake the two "
    "prompts tokenize to the same length: swap names or words for ones that are a single token "
    "each (e.g. ' John' → ' Mark'), and check with model.to_str_tokens(prompt)."
)

MSG_CAPTURE_MISMATCH = (
    "{out_dir} already holds a capture that differs from this run: {what}.\nTo resume, call "
    "capture_dataset with the same model, sites, batch size and inputs; to start over, choose a new "
    "directory or delete this one."
)

MSG_DISCONNECTED = (
    "The metric does not depend on the activation at {site} ({hook}): this model does not feed that "
    "hook's value back into the forward pass, so there is no gradient to attribute. Use activation "
    "patching (mechlab.patch) for this site, or choose another site kind."
)

MSG_NOT_DIFFERENTIABLE = (
    "The metric's value has no gradient with respect to the activations at {sites}: the metric is not "
    "differentiable (argmax, comparisons, .detach()) or does not use the logits. Gradient methods "
    "(attribution_patch, eap_ig) need a differentiable metric such as LogitDiff; use mechlab.patch "
    "for any other metric."
)

MSG_PATH_SENDER = (
    "Path patching cannot send from {site}: {reason} Senders must be component outputs: {allowed}."
)

MSG_PATH_RECEIVER = (
    "Path patching cannot receive at {site}: {reason} Receivers must be inputs of components: {allowed}."
)


class DetectorError(MechlabError, ValueError):
    """A detector could not be found, registered, loaded or run."""


class UnknownDetectorError(DetectorError):
    """No installed detector has the requested name."""


class DuplicateDetectorError(DetectorError):
    """Two installed packages register a detector under the same name."""


class DetectorPluginError(DetectorError):
    """A detector plugin failed to load, or its code raised while scoring."""


class FailedDetectorError(DetectorPluginError, KeyError):
    """A report has no result for a detector because it failed (``report.failures`` says why).

    A ``KeyError`` too, so ``name in report`` is False and ``report.get(name)`` is None for it."""

    __str__ = DetectorPluginError.__str__  # KeyError's str() would quote the message


MSG_UNKNOWN_DETECTOR = (
    "No detector named {name!r}. Installed detectors: {available}.\n"
    "List them with their providers by `mechlab detectors`; a detector from another package appears "
    "once that package is installed (it registers under the entry-point group 'mechlab.detectors')."
)

MSG_DUPLICATE_DETECTOR = (
    "Two installed packages register a detector named {name!r}: {first} and {second}.\n"
    "Detector names must be unique. Uninstall one of the two distributions, or ask its author to "
    'rename the entry point in its pyproject.toml ([project.entry-points."mechlab.detectors"]).'
)

MSG_DETECTOR_CLASS = (
    "{target} (from {provider}) {problems}. Every concrete detector class sets name (the registry key, "
    "a non-empty string such as 'induction'), description (one non-empty sentence), reads (a tuple of "
    "site kinds, set by PatternDetector and WeightDetector), threshold (a number) and "
    "content_dependent (a bool); see mechlab.Detector."
)

MSG_NO_TOKENIZER = "This model has no tokenizer (toy models take token ids): {fix}"

MSG_NOT_ONE_TOKEN = (
    "The {what} {text!r} is not one token: this model's tokenizer splits it into {n} tokens "
    "{pieces}; it must be a single token (a word in running text keeps its leading space, e.g. "
    "' Paris').\n{suggestions}"
)

MSG_NO_PAD_TOKEN = (
    "baseline='pad' needs the model's pad (or end-of-sequence) token, and this model has no "
    "tokenizer. Pass baseline='zeros' (all-zero embeddings) or a token id, e.g. baseline=0."
)

MSG_ONE_TOKEN_KEPT = (
    "The prompt is a single token, and keep_first=True holds the first token at its own embedding "
    "(it is the attention sink), so the baseline equals the prompt and there is nothing to "
    "attribute. Give a longer prompt, or pass keep_first=False to attribute that token too."
)


class CompatError(MechlabError, ValueError):
    """Code written for HookedTransformer asked ``mechlab.compat`` for something it cannot give."""


MSG_COMPAT_ARG = (
    "HookedTransformer.from_pretrained({arg}=...) is not supported by mechlab.compat: {why} "
    "Pass a mechlab source instead (e.g. HookedTransformer.from_pretrained('smollm2'), a .gguf path, "
    "hf:DIR, toy:tiny) and leave {arg} at its default."
)

MSG_COMPAT_REFACTOR_ROTARY = (
    "refactor_factored_attn_matrices=True needs absolute positions: this model uses rotary positions, "
    "so its QK circuit depends on the query and key positions and has no single factorisation "
    "(TransformerLens 2.18 refuses it for the same reason). Load with "
    "refactor_factored_attn_matrices=False."
)

MSG_COMPAT_NO_INIT = (
    "mechlab.compat.HookedTransformer is made by HookedTransformer.from_pretrained(SOURCE) (any mechlab "
    "source: 'smollm2', a .gguf path, hf:DIR, toy:...), not from a config. For a small model from a "
    "config use a toy source, e.g. HookedTransformer.from_pretrained('toy:n_layers=2,d_model=64,"
    "n_heads=4,d_head=16,d_mlp=256,d_vocab=100,n_ctx=64,act_fn=gelu,normalization_type=LN')."
)

MSG_COMPAT_UNKNOWN_HOOK = (
    "No hook point is named {name!r} on this model. HookedTransformer's names look like "
    "blocks.{{layer}}.hook_resid_pre, blocks.{{layer}}.attn.hook_z, ln_final.hook_scale "
    "(utils.get_act_name('resid_pre', 3) builds them); model.hook_dict lists them all.{hint}"
)

MSG_COMPAT_UNGROUP = (
    "set_ungroup_grouped_query_attention(True) is not supported: hook_k and hook_v stay one per "
    "key/value head ({n_kv} of them for {n_heads} query heads), as in HookedTransformer's default. "
    "For one per query head, expand the cached tensor: cache['k', layer].repeat_interleave({groups}, "
    "dim=-2)."
)

MSG_COMPAT_BIAS_ABSENT = (
    "The state dict sets {key!r} to a non-zero bias, but this model has no bias there (its checkpoint "
    "is bias-free), so it cannot be loaded. Zero biases (what HookedTransformer fills in) load fine."
)

MSG_DIRECTION_WIDTH = (
    "The direction has shape {shape}; this model's residual stream is {d_model} wide, so a direction "
    "must be a 1-D vector of {d_model} numbers. Take it from this model's activations "
    "(mechlab.directions.from_pairs on the same model), not from another model's."
)

MSG_LAYER_RANGE = (
    "Layer(s) {layers} out of range: the model has {n_layers} blocks, numbered 0 to {last}. Pick layers "
    "in that range (or none, for all of them)."
)

MSG_CONTROL_VECTOR_SITE = (
    "llama.cpp adds a control vector's direction.N to the output of block N (N = 1 to {last}), which is "
    "mechlab's Site('resid_post', N) or Site('resid_pre', N + 1); {site} is not one of those. Steer at "
    "resid_post 1 to {last} (block 0's output has no slot in a control vector)."
)

MSG_BAKE_ARCH = (
    "Cannot bake a direction into a {arch!r} file: {reason}. Architectures mechlab writes back: "
    "{supported}. Use the direction with hooks in mechlab (mechlab.fix.ablation_hooks), or export it as "
    "a llama.cpp control vector (mechlab export-control-vector) to steer at run time instead."
)

MSG_BAKE_SAME_FILE = (
    "The baked file would replace its source {path}. Write it to a new path (--out fixed.gguf); the "
    "source stays as it is, so the two can be compared."
)
