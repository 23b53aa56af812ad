"""The attribution graph's data: nodes, adjacency matrix, logit nodes (circuit-tracer's ``Graph``).

Node order (rows are targets, columns sources): selected features, error nodes (layer-major, one
per layer and position), token nodes (one per position), logit nodes.
"""

import dataclasses

import torch
from jaxtyping import Float, Int
from torch import Tensor


@dataclasses.dataclass
class AttributionGraph:
    """A graph of direct effects for one prompt (circuit-tracer's ``Graph``, plus labels).

    Attributes:
        prompt: the prompt text (or its tokens joined).
        input_tokens: ``[pos]`` token ids; ``token_strings`` their text.
        active_features: ``[n_features, 3]`` ``(layer, pos, feature)`` of the selected features.
        activation_values: ``[n_features]``.
        adjacency: ``[n_nodes, n_nodes]``, rows targets, columns sources (order in the module doc).
        logit_tokens: ``[n_logits]`` token ids (for a logit difference: the token and its contrast).
        logit_labels: readable label per logit node; logit_probabilities ``[n_logits]`` their weights.
        logit_values: the value of each logit node in the real run.
        n_layers: model layers (error nodes per position).
        n_active: features active on the prompt in all (selected or not).
    """

    prompt: str
    input_tokens: Int[Tensor, " pos"]
    token_strings: tuple[str, ...]
    active_features: Int[Tensor, "n_features 3"]
    activation_values: Float[Tensor, " n_features"]
    adjacency: Float[Tensor, "n_nodes n_nodes"]
    logit_tokens: Int[Tensor, " n_logits"]
    logit_labels: tuple[str, ...]
    logit_probabilities: Float[Tensor, " n_logits"]
    logit_values: Float[Tensor, " n_logits"]
    n_layers: int
    n_active: int
    model_name: str = ""

    @property
    def n_pos(self) -> int:
        return int(self.input_tokens.shape[0])

    @property
    def n_features(self) -> int:
        return int(self.active_features.shape[0])

    @property
    def n_logits(self) -> int:
        return int(self.logit_probabilities.shape[0])

    @property
    def error_start(self) -> int:
        return self.n_features

    @property
    def token_start(self) -> int:
        return self.n_features + self.n_layers * self.n_pos

    @property
    def logit_start(self) -> int:
        return self.token_start + self.n_pos

    def node_kind(self, index: int) -> str:
        """``feature``, ``error``, ``token`` or ``logit``."""
        if index < self.error_start:
            return "feature"
        if index < self.token_start:
            return "error"
        return "token" if index < self.logit_start else "logit"

    def error_index(self, layer: int, pos: int) -> int:
        return self.error_start + layer * self.n_pos + pos

    def feature_index(self, layer: int, pos: int, feature: int) -> int | None:
        """The node index of a feature, or ``None`` when it is not in the graph."""
        match = (self.active_features == torch.tensor([layer, pos, feature])).all(dim=1).nonzero()
        return int(match[0, 0]) if len(match) else None

    def logit_weights(self) -> Float[Tensor, " n_nodes"]:
        """Each node's weight as an output: the logit probabilities on logit nodes, else 0."""
        weights = torch.zeros(self.adjacency.shape[0], dtype=self.adjacency.dtype)
        weights[self.logit_start :] = self.logit_probabilities.to(weights.dtype)
        return weights
