"""Sparse autoencoders: a wide, sparse code for one site's activations.

An SAE reads an activation ``x`` at a site (``resid_post.15``), encodes it into ``d_sae`` latents of
which only a few are non-zero, and decodes them back into an approximation of ``x``::

    sae_in    = normalize(x) - b_dec                  (b_dec subtracted only if apply_b_dec_to_input)
    pre       = sae_in @ W_enc + b_enc                [... d_sae]
    z         = activation(pre)                       topk | jumprelu | relu
    x_hat     = denormalize(z @ W_dec + b_dec)        [... d_out]

The activation is what the architectures differ in (``mechlab.dictionaries.architectures``):
``topk`` keeps the ``k`` largest pre-activations (ReLU'd), ``jumprelu`` keeps ``pre`` where it
exceeds a learned per-latent ``threshold``, ``relu`` (trained with an L1 penalty) keeps the positive
part. A transcoder (``site_out`` set) is the same module reading one site and predicting another.

Parameter names, shapes and the on-disk layout follow SAELens (``cfg.json`` +
``sae_weights.safetensors``), so ``SAE.load`` also reads directories SAELens and Gemma Scope wrote
(``mechlab.dictionaries.formats``).

    >>> import torch
    >>> from mechlab.dictionaries import SAE, SAEConfig
    >>> sae = SAE(SAEConfig(d_in=8, d_sae=32, architecture="topk", site="resid_post.0", k=4))
    >>> z = sae.encode(torch.randn(2, 5, 8))
    >>> tuple(z.shape), int((z[0, 0] != 0).sum()) <= 4
    ((2, 5, 32), True)
"""

from pathlib import Path

import einops
import torch
from jaxtyping import Float
from torch import Tensor, nn

from mechlab.dictionaries import architectures, formats
from mechlab.dictionaries.config import ARCHITECTURES, DTYPES, NORMALIZATIONS, SAEConfig
from mechlab.errors import InputError

__all__ = ["ARCHITECTURES", "DTYPES", "NORMALIZATIONS", "SAE", "SAEConfig", "load_sae"]

# Normalizations whose scale depends on each input: decode needs the input it undoes.
_PER_INPUT = ("constant_norm_rescale", "layer_norm")


class SAE(nn.Module):
    """A sparse autoencoder (or transcoder) with SAELens's parameter names and shapes.

    Args:
        cfg: the configuration.
        device: where the parameters live (``None``: CPU).
        seed: seeds the initial weights (decoder rows of norm 0.1 in random directions, encoder its
            transpose, biases zero; JumpReLU thresholds 0.001). Loading overwrites them.

    Attributes:
        W_enc: ``[d_in, d_sae]``; b_enc: ``[d_sae]``; W_dec: ``[d_sae, d_out]``; b_dec: ``[d_out]``;
        threshold: ``[d_sae]`` buffer, JumpReLU only.
    """

    cfg: SAEConfig
    threshold: Tensor

    def __init__(self, cfg: SAEConfig, *, device: torch.device | str | None = None, seed: int = 0) -> None:
        super().__init__()
        if not isinstance(cfg, SAEConfig):
            raise InputError(f"SAE(cfg) needs an SAEConfig; got {type(cfg).__name__}.")
        self.cfg = cfg
        dtype = cfg.torch_dtype
        generator = torch.Generator().manual_seed(seed)
        w_dec = torch.rand(cfg.d_sae, cfg.width_out, generator=generator, dtype=torch.float64) * 2 - 1
        w_dec = 0.1 * w_dec / w_dec.norm(dim=-1, keepdim=True)
        w_enc = w_dec.T if cfg.width_out == cfg.d_in else self._enc_init(generator)
        self.W_enc = nn.Parameter(w_enc.to(dtype).contiguous().to(device))
        self.b_enc = nn.Parameter(torch.zeros(cfg.d_sae, dtype=dtype, device=device))
        self.W_dec = nn.Parameter(w_dec.to(dtype).contiguous().to(device))
        self.b_dec = nn.Parameter(torch.zeros(cfg.width_out, dtype=dtype, device=device))
        if cfg.architecture == "jumprelu":
            self.register_buffer("threshold", torch.full((cfg.d_sae,), 1e-3, dtype=dtype, device=device))

    def _enc_init(self, generator: torch.Generator) -> Tensor:
        w_enc = torch.rand(self.cfg.d_in, self.cfg.d_sae, generator=generator, dtype=torch.float64) * 2 - 1
        return 0.1 * w_enc / w_enc.norm(dim=0, keepdim=True)

    @property
    def device(self) -> torch.device:
        """The device of the parameters."""
        return self.W_enc.device

    # ---- the forward pass, in pieces ---------------------------------------------------------

    def _check_input(self, x: Tensor) -> None:
        if not isinstance(x, Tensor) or x.ndim < 1 or x.shape[-1] != self.cfg.d_in:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise InputError(
                f"This SAE reads {self.cfg.site} activations of width d_in={self.cfg.d_in}; got shape "
                f"{shape}. Pass the activation captured at its site (last axis d_in)."
            )

    def _scale(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... 1"] | float:
        """The factor inputs are multiplied by before encoding (``normalize_activations``)."""
        mode = self.cfg.normalize_activations
        if mode == "constant_norm_rescale":
            return self.cfg.d_in**0.5 / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        if mode == "expected_average_only_in" and self.cfg.norm_scaling_factor is not None:
            return self.cfg.norm_scaling_factor
        return 1.0

    def normalize(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_in"]:
        """The input as the encoder sees it, before ``b_dec`` is subtracted."""
        if self.cfg.normalize_activations == "layer_norm":
            centred = x - x.mean(dim=-1, keepdim=True)
            return centred / (centred.std(dim=-1, keepdim=True) + 1e-5)
        return x * self._scale(x)

    def denormalize(
        self, y: Float[Tensor, "... d_out"], like: Float[Tensor, "... d_in"] | None = None
    ) -> Float[Tensor, "... d_out"]:
        """Undo ``normalize`` on a decoder output; per-input normalizations need the input ``like``."""
        mode = self.cfg.normalize_activations
        if mode in _PER_INPUT:
            if like is None:
                raise InputError(
                    f"This SAE normalizes each input ({mode}); decoding needs the input it came from: "
                    "call decode(z, like=x) or forward(x)."
                )
            if mode == "layer_norm":
                mean = like.mean(dim=-1, keepdim=True)
                std = (like - mean).std(dim=-1, keepdim=True)
                return y * std + mean
        return y / self._scale(like if like is not None else y)

    def pre_activation(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_sae"]:
        """``(normalize(x) - b_dec) @ W_enc + b_enc``: what the activation function is applied to."""
        self._check_input(x)
        sae_in = self.normalize(x.to(self.W_enc.dtype))
        if self.cfg.apply_b_dec_to_input:
            sae_in = sae_in - self.b_dec
        pre = einops.einsum(sae_in, self.W_enc, "... d_in, d_in d_sae -> ... d_sae") + self.b_enc
        return pre

    def decoder_norms(self) -> Float[Tensor, " d_sae"]:
        """The L2 norm of each latent's decoder row."""
        return self.W_dec.norm(dim=-1)

    def activate(self, pre: Float[Tensor, "... d_sae"]) -> Float[Tensor, "... d_sae"]:
        """The architecture's activation function applied to pre-activations."""
        if self.cfg.architecture == "topk":
            assert self.cfg.k is not None  # checked by SAEConfig
            scale = self.decoder_norms() if self.cfg.rescale_acts_by_decoder_norm else None
            return architectures.topk(pre, self.cfg.k, scale=scale)
        if self.cfg.architecture == "jumprelu":
            return architectures.jumprelu(pre, self.threshold)
        return torch.relu(pre)

    def encode(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_sae"]:
        """Latent activations of ``x`` (any leading axes)."""
        return self.activate(self.pre_activation(x))

    def decode(
        self, z: Float[Tensor, "... d_sae"], *, like: Float[Tensor, "... d_in"] | None = None
    ) -> Float[Tensor, "... d_out"]:
        """The reconstruction from latent activations ``z``.

        ``like``: the input ``z`` was encoded from; needed only by per-input normalizations
        (``constant_norm_rescale``, ``layer_norm``).
        """
        if not isinstance(z, Tensor) or z.ndim < 1 or z.shape[-1] != self.cfg.d_sae:
            shape = tuple(z.shape) if isinstance(z, Tensor) else type(z).__name__
            raise InputError(f"decode needs latents with last axis d_sae={self.cfg.d_sae}; got {shape}.")
        if self.cfg.rescale_acts_by_decoder_norm:
            z = z / self.decoder_norms()
        out = einops.einsum(z.to(self.W_dec.dtype), self.W_dec, "... d_sae, d_sae d_out -> ... d_out")
        return self.denormalize(out + self.b_dec, like)

    def forward(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_out"]:
        """``decode(encode(x))``."""
        return self.decode(self.encode(x), like=x)

    def error(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_in"]:
        """``x - forward(x)``: what the SAE misses (SAE only: a transcoder's error lives at ``site_out``)."""
        return x - self.forward(x)

    # ---- decoder norms, for training and for reading ------------------------------------------

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        """Scale each decoder row to unit norm (in place), keeping encode/decode's product unchanged
        for ReLU and JumpReLU SAEs by scaling the encoder column, its bias and the threshold up."""
        norms = self.decoder_norms().clamp_min(1e-12)
        self.W_dec.div_(norms[:, None])
        self.W_enc.mul_(norms[None, :])
        self.b_enc.mul_(norms)
        if self.cfg.architecture == "jumprelu":
            self.threshold.mul_(norms)

    # ---- files ------------------------------------------------------------------------------

    def save(self, directory: str | Path) -> Path:
        """Write ``cfg.json`` and ``sae_weights.safetensors`` (SAELens's layout) into ``directory``."""
        return formats.write_sae_dir(self.cfg, self.state_dict(), Path(directory))

    @classmethod
    def load(
        cls, directory: str | Path, *, device: torch.device | str | None = None, site: str | None = None
    ) -> "SAE":
        """Read an SAE from a directory mechlab, SAELens or Gemma Scope (2) wrote.

        ``site``: the mechlab site it reads, when the directory does not say (Gemma Scope's files).

        Raises:
            InputError: the directory is missing, holds none of the known layouts, or its files
                disagree with each other (shapes, missing tensors, NaN).
        """
        directory = Path(directory)
        cfg, tensors = formats.read_sae_dir(directory, site=site)
        sae = cls(cfg)
        expected = {name: tuple(t.shape) for name, t in sae.state_dict().items()}
        missing = sorted(set(expected) - set(tensors))
        if missing:
            raise InputError(
                f"{directory} lacks the tensor(s) {', '.join(missing)} a {cfg.architecture} SAE needs."
            )
        for name, shape in expected.items():
            if tuple(tensors[name].shape) != shape:
                raise InputError(
                    f"{directory}: {name} has shape {tuple(tensors[name].shape)}; its config implies {shape}."
                )
            if not torch.isfinite(tensors[name]).all():
                raise InputError(f"{directory}: {name} holds NaN or infinite values; the file is damaged.")
        sae.load_state_dict({k: v.to(cfg.torch_dtype) for k, v in tensors.items()})
        return sae.to(device) if device is not None else sae

    def extra_repr(self) -> str:
        cfg = self.cfg
        k = f", k={cfg.k}" if cfg.k is not None else ""
        return f"{cfg.architecture}, site={cfg.site}, d_in={cfg.d_in}, d_sae={cfg.d_sae}{k}"


def load_sae(
    directory: str | Path, device: torch.device | str | None = None, *, site: str | None = None
) -> SAE:
    """Read an SAE directory (mechlab, SAELens, Gemma Scope 2); see ``SAE.load``."""
    return SAE.load(directory, device=device, site=site)
