"""Benchmark: SAE latents as sites, feature pages and the explain report's SAE section on SmolLM2.

Measured side by side in one run, with a seeded TopK SAE of the published SmolLM2 suite's shape
(d_sae = 18,432, k = 64) at ``resid_post.15`` (untrained: speed and memory do not depend on training):

- a full forward pass of a 128-token batch with and without the SAE site attached and hooked with
  an unedited round trip (encode, keep the error term, decode back), and the largest logit change;
- ``feature_pages`` over N corpus tokens (one pass, all 18,432 latents tracked): tokens/s, against
  the bare forward pass to layer 15 that it needs, and the bytes of its running state (top windows,
  histograms, sums), which do not grow with N;
- ``explain`` on one prompt without and with ``saes=`` (timings of the SAE stage).

Run: ``.venv/bin/python bench/sae_features.py [--tokens 8192] [--threads 2]``.
"""

import argparse
import statistics
import time

import torch

import mechlab
from mechlab.dictionaries import SAE, SAEConfig
from mechlab.dictionaries.features import _Running, feature_pages
from mechlab.dictionaries.site import attached


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    loaded = mechlab.load_model("smollm2")
    model = loaded.model
    cfg = SAEConfig(
        d_in=576, d_sae=18_432, architecture="topk", k=64, site="resid_post.15", model_name="smollm2"
    )
    sae = SAE(cfg, seed=0)
    corpus = mechlab.corpus_tokens(model, args.tokens, context=128, split="train")
    batch = corpus[:4]

    plain_s, kept_s, edited_s = [], [], []
    with torch.no_grad(), attached(model, sae, name="res15") as kind:
        plain = model(batch)  # warm-up
        for _ in range(args.repeats):  # interleaved, so load from other processes hits all alike
            start = time.perf_counter()
            plain = model(batch)
            plain_s.append(time.perf_counter() - start)
            with mechlab.hooked(model, {kind.site(): lambda view, site: view.clone()}):
                start = time.perf_counter()
                kept = model(batch)
                kept_s.append(time.perf_counter() - start)
            with mechlab.hooked(model, kind.clamp({7: 5.0})):
                start = time.perf_counter()
                model(batch)
                edited_s.append(time.perf_counter() - start)
    t_plain, t_kept, t_edit = (statistics.median(t) for t in (plain_s, kept_s, edited_s))
    print(
        f"forward {tuple(batch.shape)} tokens, median of {args.repeats}: {t_plain:.2f} s plain, "
        f"{t_kept:.2f} s with an unedited SAE round trip (x{t_kept / t_plain:.2f}), "
        f"{t_edit:.2f} s with a latent clamped (x{t_edit / t_plain:.2f}); max |logit change| unedited "
        f"{float((kept - plain).abs().max()):.1e}"
    )

    site = mechlab.Site("resid_post", 15)
    start = time.perf_counter()
    for i in range(0, len(corpus), 8):
        mechlab.capture(model, corpus[i : i + 8], site, logits=False, max_bytes=None)
    t_bare = time.perf_counter() - start
    start = time.perf_counter()
    report = feature_pages(model, sae, corpus, top=20, contexts=10, batch_size=8)
    t_pages = time.perf_counter() - start
    state = _Running(cfg.d_sae, 10, 21)
    state_bytes = sum(
        t.numel() * t.element_size() for t in vars(state).values() if isinstance(t, torch.Tensor)
    )
    n = report.n_tokens
    print(
        f"feature_pages over {n:,} tokens, {cfg.d_sae:,} latents tracked: {t_pages:.1f} s "
        f"({n / t_pages:,.0f} tokens/s); bare forward to layer 15 {t_bare:.1f} s "
        f"({n / t_bare:,.0f} tokens/s); running state {state_bytes / 2**20:.0f} MiB "
        "(independent of the corpus size)"
    )

    prompt = "The nurse was tired because"
    settings = mechlab.ExplainSettings(max_new_tokens=2, contrast=" he", detectors=(), ig_steps=32)
    without = mechlab.explain(loaded, prompt, settings=settings)
    with_sae = mechlab.explain(loaded, prompt, settings=settings, saes={"res15": sae}, sae_corpus=corpus[:16])
    times = with_sae.manifest["timings_s"]
    print(
        f"explain: {without.manifest['timings_s']['total']:.1f} s without SAE, {times['total']:.1f} s with "
        f"one (SAE stage {times['SAE latents']:.1f} s, feature pages from 2,048 corpus tokens)"
    )


if __name__ == "__main__":
    main()
