"""A toy model with a planted two-step MLP circuit, and transcoders that are its MLPs exactly.

``toy:tiny`` with ReLU MLPs. MLP neuron ``N0`` of layer 0 fires only where the token is ``A`` and
writes a direction ``u``; neuron ``N1`` of layer 1 reads ``u`` and writes the unembedding direction
of token ``T``. Each transcoder copies its layer's MLP (ReLU, W_enc = W_in, W_dec = W_out), so error
nodes are zero and the circuit ``token A → (0, N0) → (1, N1) → logit T`` is known.
"""

import torch

import mechlab
from mechlab.dictionaries.transcoder import Transcoder, transcoder_config

A, T, N0, N1 = 7, 11, 3, 5
PROMPT = torch.tensor([1, 2, 3, 4, 5, A])


def _params(model: object) -> dict[str, torch.Tensor]:
    return dict(model.named_parameters())  # type: ignore[attr-defined]


def _mlp(params: dict[str, torch.Tensor], layer: int) -> tuple[torch.Tensor, ...]:
    prefix = f"layers.{layer}._original_component.mlp._original_component."
    return tuple(
        params[prefix + name + "._original_component." + kind]
        for name in ("fc_in", "fc_out")
        for kind in ("weight", "bias")
    )


def planted_model() -> tuple[object, dict[int, Transcoder]]:
    model = mechlab.load_model("toy:tiny,act_fn=relu,seed=1").model
    params = _params(model)
    w_e = params["tok_embed._original_component.weight"]  # [d_vocab, d_model]
    w_u = (
        params["unembed._original_component.weight"]
        if "unembed._original_component.weight" in params
        else None
    )
    generator = torch.Generator().manual_seed(0)
    d_model = w_e.shape[1]
    u = torch.randn(d_model, generator=generator)
    u = u - u.mean()
    u = u / u.norm()
    with torch.no_grad():
        for layer in (0, 1):
            w_in, b_in, w_out, b_out = _mlp(params, layer)  # Linear: [d_mlp, d_model], [d_model, d_mlp]
            w_in.mul_(0.3)
            w_out.mul_(0.3)
        w_in, b_in, w_out, b_out = _mlp(params, 0)
        a = w_e[A] - w_e[A].mean()
        w_in[N0] = 6.0 * a / a.norm()
        b_in[N0] = -3.0
        w_out[:, N0] = 4.0 * u
        w_in, b_in, w_out, b_out = _mlp(params, 1)
        w_in[N1] = 3.0 * u
        b_in[N1] = -1.0
        target = (w_u[T] if w_u is not None and w_u.shape[0] != d_model else model.W_U[:, T]).detach()  # type: ignore[attr-defined]
        target = target - target.mean()
        w_out[:, N1] = 6.0 * target / target.norm()
    transcoders = {}
    for layer in (0, 1):
        w_in, b_in, w_out, b_out = _mlp(params, layer)
        cfg = transcoder_config(d_model, layer, w_in.shape[0], architecture="relu", k=None)
        tc = Transcoder(cfg)
        tc.load_state_dict(
            {
                "W_enc": w_in.T.detach(),
                "b_enc": b_in.detach(),
                "W_dec": w_out.T.detach(),
                "b_dec": b_out.detach(),
            }
        )
        transcoders[layer] = tc
    return model, transcoders
