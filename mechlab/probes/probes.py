"""Probing classifiers: is a concept linearly readable from a layer's activations?

``train_probes`` caches one activation per text at every chosen layer (the last token, the mean
over tokens, or the marked word's last token), then fits a multinomial logistic regression per
layer on a training split and reports held-out accuracy.

High accuracy alone says little: a linear probe on a wide layer can memorise a lot. Hewitt & Liang
(2019) pair every probe with a **control task**: the same inputs, but each *word type* gets a label
drawn at random (from the real labels' distribution), so the only way to solve it is to memorise
word identity. **Selectivity** = task accuracy − control accuracy; it is high where the layer
represents the concept in a way that generalises across words, not just the words themselves.

The probe's weight vector is a direction in activation space; ``steer_with_probe`` adds it to (or
projects it out of) the residual stream and measures the model's output, which tests whether the
model *uses* that direction (a probe can read information the model ignores).

Probes are L2-regularised (``weight_decay``) on standardised features and fitted with L-BFGS; all
randomness (split, control labels) comes from ``seed``. Each layer's fit is one task of an executor
(``mechlab.executors``), so layers can be fitted in any order or elsewhere with the same result.
"""

import dataclasses
from typing import Any

import torch
from jaxtyping import Float, Int
from matplotlib.figure import Figure
from torch import Tensor

from mechlab.errors import InputError
from mechlab.executors import Executor, resolve_executor
from mechlab.probes.data import POSITIONS, Position, ProbeDataset, collect_activations, word_position
from mechlab.render.figures import lines
from mechlab.render.page import Page
from mechlab.sites import Site, validate
from mechlab.types import HookedModel

__all__ = [
    "POSITIONS",
    "VECTOR_KINDS",
    "Position",
    "ProbeConfig",
    "ProbeResult",
    "collect_activations",
    "control_labels",
    "fit_logistic",
    "fit_probes",
    "train_probes",
    "word_position",
]


@dataclasses.dataclass(frozen=True, eq=False)
class ProbeResult:
    """Per-layer probe accuracies on held-out data, the control task, and the probe weights.

    Attributes:
        dataset: the dataset's summary line.
        site_kind: the activation kind probed (``resid_post``…); ``layers`` the layers.
        position: ``last``, ``mean`` or ``word``.
        classes: class names; ``weights [layer, class, d_model]`` and ``biases [layer, class]`` act on
            raw activations (standardisation folded in).
        accuracy, control_accuracy, train_accuracy: ``[layer]``.
        majority: accuracy of always predicting the most common training class, on the test split.
        n_train, n_test: split sizes.
        projection_std: ``[layer]`` std of training activations along each probe direction.
    """

    dataset: str
    site_kind: str
    layers: tuple[int, ...]
    position: str
    classes: tuple[str, ...]
    accuracy: Float[Tensor, " layer"]
    control_accuracy: Float[Tensor, " layer"]
    train_accuracy: Float[Tensor, " layer"]
    majority: float
    n_train: int
    n_test: int
    weights: Float[Tensor, "layer n_class d_model"]
    biases: Float[Tensor, "layer n_class"]
    projection_std: Float[Tensor, " layer"]

    @property
    def selectivity(self) -> Float[Tensor, " layer"]:
        """Task accuracy − control accuracy, per layer."""
        return self.accuracy - self.control_accuracy

    @property
    def best_layer(self) -> int:
        """The layer with the highest selectivity."""
        return self.layers[int(self.selectivity.argmax())]

    def direction(self, layer: int) -> Float[Tensor, " d_model"]:
        """Unit vector from class 0 toward class 1 (binary probes) at ``layer``, in activation space."""
        if len(self.classes) != 2:
            raise InputError(f"direction() is defined for two classes; this probe has {len(self.classes)}.")
        w = self.weights[self._row(layer)]
        diff = w[1] - w[0]
        return diff / diff.norm()

    def _row(self, layer: int) -> int:
        if layer not in self.layers:
            raise InputError(f"No probe at layer {layer}; probed layers: {list(self.layers)}.")
        return self.layers.index(layer)

    def predict(self, activations: Float[Tensor, "n d_model"], layer: int) -> list[str]:
        """Class names predicted for raw activations at ``layer``."""
        row = self._row(layer)
        scores = activations.float() @ self.weights[row].T + self.biases[row]
        return [self.classes[i] for i in scores.argmax(-1).tolist()]

    def plot(self) -> Figure:
        """Accuracy, control accuracy and selectivity per layer."""
        return lines(
            {
                "accuracy (held out)": self.accuracy,
                "control task": self.control_accuracy,
                "selectivity": self.selectivity,
                "majority class": torch.full((len(self.layers),), self.majority),
            },
            title=f"Linear probes: {self.site_kind} at the {self.position} position",
            xlabel="layer",
            ylabel="accuracy",
            x=[float(layer) for layer in self.layers],
        )

    def add_to(self, page: Page, *, title: str = "Probing classifiers") -> Page:
        section = page.section(
            title,
            f"{self.dataset}. A logistic-regression probe per layer on {self.site_kind} at the "
            f"{self.position} position; {self.n_train} training and {self.n_test} held-out texts. "
            "The control task gives each word type a random label (Hewitt & Liang); selectivity = "
            "accuracy − control accuracy.",
        )
        section.figure(self.plot(), alt="probe accuracy per layer")
        rows = [
            (layer, f"{a:.3f}", f"{c:.3f}", f"{a - c:+.3f}")
            for layer, a, c in zip(
                self.layers, self.accuracy.tolist(), self.control_accuracy.tolist(), strict=True
            )
        ]
        section.table(["layer", "accuracy", "control", "selectivity"], rows)
        return page

    def page(self, title: str = "Probing classifiers") -> Page:
        return self.add_to(Page(title))

    def _repr_html_(self) -> str:
        return self.page().body()


def control_labels(keys: tuple[str, ...], labels: Tensor, n_classes: int, seed: int) -> Tensor:
    """Hewitt & Liang's control task: each distinct key (word type) gets one label sampled from the
    empirical label distribution."""
    generator = torch.Generator().manual_seed(seed + 1)
    types = sorted(set(keys))
    freq = torch.bincount(labels, minlength=n_classes).double()
    drawn = torch.multinomial(freq, len(types), replacement=True, generator=generator)
    table = dict(zip(types, drawn.tolist(), strict=True))
    return torch.tensor([table[k] for k in keys])


def fit_logistic(
    features: Float[Tensor, "n d"],
    labels: Tensor,
    n_classes: int,
    *,
    weight_decay: float,
    max_iter: int = 200,
) -> tuple[Tensor, Tensor]:
    """Multinomial logistic regression (L2 on the weights) by L-BFGS; returns ``(W [class d], b)``."""
    weights = torch.zeros(n_classes, features.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(n_classes, dtype=torch.float64, requires_grad=True)
    x, y = features.double(), labels
    optimizer = torch.optim.LBFGS(
        [weights, bias], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe", tolerance_grad=1e-9
    )

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = (
            torch.nn.functional.cross_entropy(x @ weights.T + bias, y) + weight_decay * weights.pow(2).sum()
        )
        loss.backward()
        return loss

    # The problem is small (texts × d_model): a second CPU thread only adds synchronisation, and on
    # a shared CPU it spin-waits (measured: 1.3 s with two threads vs 0.03 s with one, 540 × 576).
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.enable_grad():
            optimizer.step(closure)
    finally:
        torch.set_num_threads(previous_threads)
    return weights.detach(), bias.detach()


VECTOR_KINDS = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "mlp_pre", "mlp_post")


def _control_keys(model: HookedModel, dataset: ProbeDataset, position: str) -> tuple[str, ...]:
    if dataset.words is not None:
        return dataset.words
    if position == "mean":
        return dataset.texts
    return tuple(str(int(model.to_tokens(t)[0, -1])) for t in dataset.texts)


def _accuracy(w: Tensor, b: Tensor, x: Tensor, y: Tensor) -> float:
    return float(((x.double() @ w.T + b).argmax(-1) == y).double().mean())


@dataclasses.dataclass(frozen=True)
class ProbeConfig:
    """How probes are fitted: held-out share, L2 penalty, seed (split and control labels)."""

    test_fraction: float = 0.25
    weight_decay: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.test_fraction < 1:
            raise ValueError(f"test_fraction must lie strictly between 0 and 1, got {self.test_fraction}.")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be ≥ 0, got {self.weight_decay}.")


@dataclasses.dataclass(frozen=True)
class LayerFit:
    """A task of ``fit_probes``: the probe and the control probe of one layer.

    ``split`` is ``(test, train)`` row indices; ``y`` and ``y_control`` are class indices per text.
    """

    features: Float[Tensor, "n d_model"]
    y: Int[Tensor, " n"]
    y_control: Int[Tensor, " n"]
    split: tuple[Tensor, Tensor]
    n_classes: int
    weight_decay: float


def fit_layer(task: LayerFit) -> dict[str, Any]:
    """Fit one layer's probes (on standardised features) and score them on both splits."""
    (test, train), features, y, y_control = task.split, task.features.float(), task.y, task.y_control
    mean, std = features[train].mean(0), features[train].std(0).clamp_min(1e-6)
    x = (features - mean) / std
    w, b = fit_logistic(x[train], y[train], task.n_classes, weight_decay=task.weight_decay)
    wc, bc = fit_logistic(x[train], y_control[train], task.n_classes, weight_decay=task.weight_decay)
    w_raw = w / std.double()
    axis = (w_raw[-1] - w_raw[0]) / (w_raw[-1] - w_raw[0]).norm()
    return {
        "accuracy": _accuracy(w, b, x[test], y[test]),
        "control": _accuracy(wc, bc, x[test], y_control[test]),
        "train": _accuracy(w, b, x[train], y[train]),
        "weights": w_raw.float(),
        "biases": (b - w_raw @ mean.double()).float(),
        "spread": float((features[train].double() @ axis).std()),
    }


def fit_probes(
    features: Float[Tensor, "layer n d_model"],
    labels: tuple[str, ...],
    control_keys: tuple[str, ...],
    *,
    config: ProbeConfig = ProbeConfig(),
    describe: dict[str, Any] | None = None,
    executor: Executor | str | None = None,
) -> ProbeResult:
    """Fit and score probes on given activations (no model needed; ``train_probes`` wraps it).

    Args:
        features: one activation per text at each layer.
        labels: one label per text.
        control_keys: the unit of the control task per text (its word type).
        config: split, penalty and seed.
        describe: ``dataset``, ``site_kind``, ``layers`` and ``position`` for the result.
        executor: fits the layers, one task each (``mechlab.executors``; default: in this process).
    """
    info: dict[str, Any] = {
        "dataset": "",
        "site_kind": "",
        "layers": tuple(range(len(features))),
        "position": "",
    }
    info.update(describe or {})
    if features.shape[1] != len(labels) or len(labels) != len(control_keys):
        raise InputError(
            f"Got {features.shape[1]} activations, {len(labels)} labels, {len(control_keys)} keys."
        )
    classes = tuple(sorted(set(labels)))
    y = torch.tensor([classes.index(label) for label in labels])
    y_control = control_labels(control_keys, y, len(classes), config.seed)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(config.seed))
    n_test = max(1, round(config.test_fraction * len(y)))
    if len(y) - n_test < len(classes):
        raise InputError(
            f"{len(y)} texts with test_fraction={config.test_fraction} leave {len(y) - n_test} for "
            f"training, fewer than the {len(classes)} classes; give more texts or a smaller test_fraction."
        )
    split = (order[:n_test], order[n_test:])
    tasks = [LayerFit(f, y, y_control, split, len(classes), config.weight_decay) for f in features]
    rows = resolve_executor(executor).map(fit_layer, tasks)
    train = split[1]
    majority = float(
        (y[split[0]] == torch.bincount(y[train], minlength=len(classes)).argmax()).double().mean()
    )
    return ProbeResult(
        dataset=str(info["dataset"]),
        site_kind=str(info["site_kind"]),
        layers=tuple(info["layers"]),
        position=str(info["position"]),
        classes=classes,
        accuracy=torch.tensor([r["accuracy"] for r in rows]),
        control_accuracy=torch.tensor([r["control"] for r in rows]),
        train_accuracy=torch.tensor([r["train"] for r in rows]),
        majority=majority,
        n_train=len(train),
        n_test=n_test,
        weights=torch.stack([r["weights"] for r in rows]),
        biases=torch.stack([r["biases"] for r in rows]),
        projection_std=torch.tensor([r["spread"] for r in rows]),
    )


def train_probes(
    model: HookedModel,
    dataset: ProbeDataset,
    site_kind: str = "resid_post",
    layers: list[int] | None = None,
    *,
    position: Position | None = None,
    config: ProbeConfig = ProbeConfig(),
    batch_size: int = 32,
    executor: Executor | str | None = None,
) -> ProbeResult:
    """Train one linear probe per layer and score it on held-out texts and on the control task.

    Args:
        model: a hooked model with a tokenizer.
        dataset: a ``ProbeDataset`` (see ``load_probe_dataset``).
        site_kind: a per-layer vector activation: ``resid_pre/mid/post``, ``attn_out``, ``mlp_out``…
        layers: layers to probe (default: all).
        position: ``last`` token (default), ``mean`` over tokens (first token excluded), or the
            marked ``word``'s last token.
        config: held-out share (the split is by text; word types recur across splits, as the
            control task requires), L2 penalty on standardised features, seed.
        batch_size: texts per forward pass while caching activations.
        executor: fits the layers, one task each (``mechlab.executors``; default: in this process).
    """
    if site_kind not in VECTOR_KINDS:
        raise InputError(
            f"Probes read one vector per token; site_kind must be one of {', '.join(VECTOR_KINDS)}."
        )
    position = position or "last"
    if position not in POSITIONS:
        raise InputError(f"Unknown position {position!r}; choose one of {', '.join(POSITIONS)}.")
    chosen = list(range(model.cfg.n_layers)) if layers is None else list(layers)
    sites = [validate(Site(site_kind, layer), model) for layer in chosen]
    features = collect_activations(
        model, dataset.texts, sites, position=position, words=dataset.words, batch_size=batch_size
    )
    describe = {
        "dataset": dataset.summary(),
        "site_kind": site_kind,
        "layers": tuple(s.layer or 0 for s in sites),
        "position": position,
    }
    keys = _control_keys(model, dataset, position)
    return fit_probes(features, dataset.labels, keys, config=config, describe=describe, executor=executor)
