"""Sparse dictionaries: sparse autoencoders (and transcoders) trained on the operator's own model.

- ``config``: ``SAEConfig`` (widths, architecture, site, SAELens's conventions).
- ``sae``: the ``SAE`` module (TopK, JumpReLU, ReLU + L1).
- ``architectures``: the activation functions and JumpReLU's straight-through gradients.
- ``formats``: mechlab / SAELens / Gemma Scope directories.
- ``corpus``: the offline text corpus, tokenized and cached.
- ``harvest``: activations streamed into a bounded shuffling buffer, or captured to shards.
- ``train``: training with warm-up/decay, dead-latent auxiliary loss, resumable checkpoints;
  ``train_config``: its settings (``TrainConfig``) and progress reports.
- ``transcoder`` / ``transcoder_train``: transcoders (MLP input → MLP output), trained per layer.
- ``features``: feature pages (top contexts, histograms, logit effects) from one corpus pass;
  ``feature_report``: the pages' data and rendering.
- ``evaluate``: FVE, L0, dead/dense latents, loss recovered with the SAE spliced in.
"""

from mechlab.dictionaries.sae import SAE, SAEConfig, load_sae

__all__ = ["SAE", "SAEConfig", "load_sae"]
