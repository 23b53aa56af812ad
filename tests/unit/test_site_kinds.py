"""A site kind that is no hook point: a linear dictionary's latents at ``resid_post.1``, added with one
module (the class below) and one registration line, then captured, patched, ablated, steered and
attributed like any built-in site, each checked against the same edit written by hand."""

import dataclasses
from collections.abc import Iterator

import pytest
import torch
from torch import Tensor

import mechlab
from mechlab import LogitDiff, Site, SiteError, Sweep, hooked, zero_ablation
from mechlab import site_kinds as registry
from mechlab.interventions.attribution_patching import attribution_patch
from mechlab.interventions.steering import steer
from tests.unit.detectors.test_detectors import FakeDist, FakeEntryPoint

LAYER, WIDTH = 1, 6
METRIC = LogitDiff(3, 11)


@dataclasses.dataclass(eq=False)
class Dictionary:
    """Latents ``relu(x E)`` of the residual stream, written back as ``x + (new − old) D``."""

    name: str
    encoder: Tensor
    decoder: Tensor
    host: str = "resid_post"

    def width(self, model: object) -> int:
        return int(self.encoder.shape[1])

    def layers(self, model: object) -> tuple[int, ...]:
        return (LAYER,)

    def read(self, act: Tensor, layer: int | None) -> Tensor:
        return torch.relu(act @ self.encoder)

    def write(self, act: Tensor, layer: int | None, value: Tensor) -> Tensor:
        return act + (value - self.read(act, layer)) @ self.decoder


def make_dictionary(name: str = "dict") -> Dictionary:
    generator = torch.Generator().manual_seed(0)
    return Dictionary(
        name, torch.randn(32, WIDTH, generator=generator), torch.randn(WIDTH, 32, generator=generator)
    )


@pytest.fixture
def dictionary() -> Iterator[Dictionary]:
    kind = mechlab.register_site_kind(make_dictionary())
    yield kind
    mechlab.unregister_site_kind(kind.name)


def _edited(model, tokens: Tensor, edit) -> Tensor:
    """Logits with ``edit(resid_post.1)`` written by hand at the host hook point."""
    with hooked(model, {Site("resid_post", LAYER): lambda act, site: edit(act)}):
        return model(tokens)


@torch.no_grad()
def test_capture_reads_the_view_of_the_host(tiny, tokens, dictionary) -> None:
    acts = mechlab.capture(tiny.model, tokens, ["dict.1.3", Site("dict", LAYER), "resid_post.1"])
    latents = torch.relu(acts["resid_post.1"] @ dictionary.encoder)
    torch.testing.assert_close(acts["dict.1.3"], latents[..., 3])
    torch.testing.assert_close(acts[Site("dict", 1)], latents)
    assert Site("dict", 1, 3).hook_name == "blocks.1.hook_resid_post.hook_dict"
    assert [str(s) for s in mechlab.activations.resolve_sites(tiny.model, "dict")] == ["dict.1"]


@torch.no_grad()
def test_writing_back_what_was_read_changes_nothing(tiny, tokens, dictionary) -> None:
    with hooked(tiny.model, {Site("dict", LAYER): lambda view, site: view.clone()}):
        kept = tiny.model(tokens)
    torch.testing.assert_close(kept, tiny.model(tokens), rtol=0, atol=1e-5)


@torch.no_grad()
def test_zero_ablating_a_unit_removes_its_decoder_row(tiny, tokens, dictionary) -> None:
    with hooked(tiny.model, zero_ablation([Site("dict", LAYER, 2)])):
        ablated = tiny.model(tokens)

    def by_hand(act: Tensor) -> Tensor:
        return act - dictionary.read(act, LAYER)[..., 2:3] * dictionary.decoder[2]

    expected = _edited(tiny.model, tokens, by_hand)
    torch.testing.assert_close(ablated, expected, rtol=0, atol=1e-5)
    assert float((ablated - tiny.model(tokens)).abs().max()) > 1e-3


@torch.no_grad()
def test_patching_each_unit_matches_the_edit_by_hand(tiny, pair, dictionary) -> None:
    clean, corrupted = pair
    model = tiny.model
    result = mechlab.patch(model, clean, corrupted, Sweep("dict"), METRIC)
    assert result.axes == ("layer", "head") and tuple(result.values.shape) == (1, WIDTH)
    clean_view = mechlab.capture(model, clean, "dict.1")["dict.1"]
    for unit in range(WIDTH):

        def by_hand(act: Tensor, unit: int = unit) -> Tensor:
            delta = clean_view[..., unit : unit + 1] - dictionary.read(act, LAYER)[..., unit : unit + 1]
            return act + delta * dictionary.decoder[unit]

        expected = METRIC(_edited(model, corrupted, by_hand)).mean()
        torch.testing.assert_close(result.values[0, unit], expected, rtol=0, atol=1e-4)
    same = mechlab.patch(model, clean, clean, Sweep("dict"), METRIC)
    torch.testing.assert_close(same.values, same.clean.mean().expand_as(same.values), rtol=0, atol=1e-5)


def test_attribution_patching_takes_the_gradient_through_the_decoder(tiny, pair, dictionary) -> None:
    clean, corrupted = pair
    model = tiny.model
    estimate = attribution_patch(model, clean, corrupted, Sweep("dict"), METRIC)
    leaves: list[Tensor] = []

    def leaf(act: Tensor) -> Tensor:
        leaves.append(act.detach().requires_grad_(True))
        return leaves[-1]

    with torch.enable_grad():
        METRIC(_edited(model, corrupted, leaf)).sum().backward()
    grad_resid = leaves[0].grad
    assert grad_resid is not None
    delta = (
        mechlab.capture(model, clean, "dict.1")["dict.1"]
        - mechlab.capture(model, corrupted, "dict.1")["dict.1"]
    )
    per_unit = torch.einsum("bpd,ud,bpu->bu", grad_resid, dictionary.decoder, delta)
    expected = METRIC(model(corrupted)) + per_unit.T
    torch.testing.assert_close(estimate.values[0], expected.mean(-1), rtol=0, atol=1e-4)


@torch.no_grad()
def test_steering_along_units_adds_their_decoder_rows(tiny, tokens, dictionary) -> None:
    direction = torch.zeros(WIDTH)
    direction[[1, 4]] = torch.tensor([3.0, 4.0])
    result = steer(tiny.model, tokens[:1], Site("dict", LAYER), direction, 7, scales=(2.0,), unit=1.0)
    shift = 2.0 * (0.6 * dictionary.decoder[1] + 0.8 * dictionary.decoder[4])
    logits = _edited(tiny.model, tokens[:1], lambda act: act + shift)
    expected = torch.log_softmax(logits[0, -1], -1)[7]
    torch.testing.assert_close(result.values[0], expected, rtol=0, atol=1e-4)


def test_bad_sites_of_an_extension_kind_say_what_exists(tiny, dictionary) -> None:
    with pytest.raises(SiteError, match=r"exists at layers \[1\] only"):
        mechlab.capture(tiny.model, torch.zeros(1, 3, dtype=torch.long), "dict.0")
    with pytest.raises(SiteError, match=r"names unit 6, but layer 1 has 6 units \(valid: 0\.\.5\)"):
        mechlab.capture(tiny.model, torch.zeros(1, 3, dtype=torch.long), "dict.1.6")
    with pytest.raises(SiteError, match=r"Unknown site kind 'dictt'.*registered dict\."):
        Site("dictt", 1)


def test_registration_refuses_clashes_and_names_both(dictionary) -> None:
    mechlab.register_site_kind(dictionary)  # the same object again: allowed
    other = make_dictionary()
    with pytest.raises(SiteError, match=r"Two site kinds are named 'dict'"):
        mechlab.register_site_kind(other)
    with pytest.raises(SiteError, match=r"built-in kinds .* are taken"):
        mechlab.register_site_kind(make_dictionary("resid_post"))
    with pytest.raises(SiteError, match="no built-in kind"):
        mechlab.register_site_kind(dataclasses.replace(make_dictionary("d2"), host="residual"))
    with pytest.raises((SiteError, TypeError), match="SiteKind"):  # TypeError: the test run's type checker
        mechlab.register_site_kind(object())  # type: ignore[arg-type]


def test_installed_kinds_come_from_entry_points_and_clashes_name_both(tiny, tokens) -> None:
    mine = FakeEntryPoint("dict", "pkg:make_dictionary", FakeDist("pkg"), make_dictionary)
    try:
        registry.rescan([mine])
        acts = mechlab.capture(tiny.model, tokens, "dict.1.0")
        assert tuple(acts["dict.1.0"].shape) == tuple(tokens.shape)
        with pytest.raises(SiteError, match=r"'dict'.*pkg .*\(installed\)"):
            mechlab.register_site_kind(make_dictionary())
        theirs = FakeEntryPoint("dict", "other:make_dictionary", FakeDist("other"), make_dictionary)
        registry.rescan([mine, theirs])
        with pytest.raises(
            SiteError, match=r"Two installed packages provide the site kind 'dict': pkg .* other"
        ):
            Site("dict", 1)
    finally:
        registry.rescan()
    with pytest.raises(SiteError, match="Unknown site kind 'dict'"):
        Site("dict", 1)
