"""An SAE's configuration: widths, architecture, the site it reads, and SAELens's conventions.

Kept apart from the module so that ``formats`` (reading and writing directories) and ``sae`` (the
module) both build on it without importing each other.
"""

import dataclasses
from typing import Any, Literal, get_args

import torch

from mechlab.errors import SiteError
from mechlab.sites import Site

Architecture = Literal["topk", "jumprelu", "relu"]
Normalization = Literal["none", "expected_average_only_in", "constant_norm_rescale", "layer_norm"]
DType = Literal["float32", "float64", "float16", "bfloat16"]

ARCHITECTURES: tuple[str, ...] = get_args(Architecture)
NORMALIZATIONS: tuple[str, ...] = get_args(Normalization)
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float64": torch.float64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


@dataclasses.dataclass(frozen=True)
class SAEConfig:
    """What an SAE is: its widths, architecture, and the site it reads (and, for a transcoder, writes).

    Args:
        d_in: width of the activation read at ``site``.
        d_sae: number of latents.
        architecture: ``"topk"``, ``"jumprelu"`` or ``"relu"`` (ReLU, trained with an L1 penalty).
        site: the mechlab site read, ``Site.parse``-able (``"resid_post.6"``).
        k: latents kept per token (TopK only).
        apply_b_dec_to_input: subtract ``b_dec`` from the input before encoding (SAELens convention).
        normalize_activations: SAELens's input normalization; ``"expected_average_only_in"`` scales
            inputs by ``norm_scaling_factor`` (identity when it is ``None``, as SAELens does).
        d_out: output width when it differs from ``d_in`` (transcoders).
        site_out: the site a transcoder predicts; ``None`` for an SAE.
        model_name: the model it was trained on, for the record.
        dtype: parameter dtype name.
        norm_scaling_factor: the constant ``expected_average_only_in`` multiplies inputs by.
        rescale_acts_by_decoder_norm: TopK selects on ``pre * ||W_dec||`` (SAELens option).
    """

    d_in: int
    d_sae: int
    architecture: str
    site: str
    k: int | None = None
    apply_b_dec_to_input: bool = False
    normalize_activations: str = "none"
    d_out: int | None = None
    site_out: str | None = None
    model_name: str | None = None
    dtype: str = "float32"
    norm_scaling_factor: float | None = None
    rescale_acts_by_decoder_norm: bool = False

    def __post_init__(self) -> None:
        for name in ("d_in", "d_sae"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"SAEConfig.{name} must be a positive integer; got {value!r}.")
        if self.d_out is not None and (
            isinstance(self.d_out, bool) or not isinstance(self.d_out, int) or self.d_out < 1
        ):
            raise ValueError(f"SAEConfig.d_out must be a positive integer or None; got {self.d_out!r}.")
        if self.architecture not in ARCHITECTURES:
            raise ValueError(
                f"SAEConfig.architecture must be one of {', '.join(ARCHITECTURES)}; "
                f"got {self.architecture!r}."
            )
        if self.architecture == "topk":
            if isinstance(self.k, bool) or not isinstance(self.k, int) or not 1 <= self.k <= self.d_sae:
                raise ValueError(
                    f"A TopK SAE needs k, an integer in 1..d_sae={self.d_sae}; got k={self.k!r}."
                )
        elif self.k is not None:
            raise ValueError(f"k is TopK's setting; a {self.architecture} SAE takes k=None (got {self.k}).")
        if self.normalize_activations not in NORMALIZATIONS:
            raise ValueError(
                f"SAEConfig.normalize_activations must be one of {', '.join(NORMALIZATIONS)}; "
                f"got {self.normalize_activations!r}."
            )
        if self.dtype not in DTYPES:
            raise ValueError(f"SAEConfig.dtype must be one of {', '.join(DTYPES)}; got {self.dtype!r}.")
        if self.norm_scaling_factor is not None and not self.norm_scaling_factor > 0:
            raise ValueError(f"norm_scaling_factor must be positive; got {self.norm_scaling_factor!r}.")
        for name in ("site", "site_out"):
            text = getattr(self, name)
            if text is None and name == "site_out":
                continue
            try:
                Site.parse(text)
            except (SiteError, TypeError, AttributeError) as error:
                raise ValueError(f"SAEConfig.{name} {text!r} is not a site: {error}") from error
        if self.apply_b_dec_to_input and self.width_out != self.d_in:
            raise ValueError(
                f"apply_b_dec_to_input subtracts b_dec (width {self.width_out}) from the input (width "
                f"{self.d_in}); it needs d_out == d_in. Set apply_b_dec_to_input=False."
            )

    @property
    def width_out(self) -> int:
        """The decoder's output width: ``d_out`` for a transcoder, else ``d_in``."""
        return self.d_in if self.d_out is None else self.d_out

    @property
    def site_in(self) -> Site:
        """The parsed ``site``."""
        return Site.parse(self.site)

    @property
    def torch_dtype(self) -> torch.dtype:
        """``dtype`` as a ``torch.dtype``."""
        return DTYPES[self.dtype]

    def replace(self, **changes: Any) -> "SAEConfig":
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)
