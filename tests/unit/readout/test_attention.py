"""Attention views: the right patterns, offline pages, static heatmaps."""

from pathlib import Path

import pytest
import torch

import mechlab
from mechlab import attention_view
from mechlab.readout.attention import AttentionView


def test_view_holds_the_cached_patterns(tiny_gqa: mechlab.LoadedModel, tokens: torch.Tensor) -> None:
    model = tiny_gqa.model
    view = attention_view(model, tokens[0], layers=[1, 0], heads=[3, 1])
    assert view.heads == ((1, 3), (1, 1), (0, 3), (0, 1))
    site = mechlab.Site("pattern", 1)
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens[:1], names_filter=[site.hook_name])
    torch.testing.assert_close(view.pattern(1, 1), cache[site.hook_name][0, 1])
    torch.testing.assert_close(view.patterns.sum(-1), torch.ones(4, 12))
    assert view.patterns.triu(1).abs().max() == 0  # causal


def test_selection_forms(tiny: mechlab.LoadedModel, tokens: torch.Tensor) -> None:
    model = tiny.model
    assert len(attention_view(model, tokens[0]).heads) == 8
    assert attention_view(model, tokens[0], layers=-1).heads == ((1, 0), (1, 1), (1, 2), (1, 3))
    assert attention_view(model, tokens[0], heads=[(0, 2), (1, 0)]).heads == ((0, 2), (1, 0))
    with pytest.raises(mechlab.SiteError, match="head 4"):
        attention_view(model, tokens[0], layers=0, heads=[4])
    with pytest.raises(mechlab.SiteError, match="layer 5"):
        attention_view(model, tokens[0], layers=[5])
    with pytest.raises(mechlab.InputError, match="No heads"):
        attention_view(model, tokens[0], layers=[])


def test_page_mounts_one_widget_per_layer_with_escaped_tokens(tmp_path: Path) -> None:
    pattern = torch.tril(torch.ones(3, 3)) / torch.arange(1, 4)[:, None]
    view = AttentionView(
        tokens=torch.tensor([[1, 2, 3]]),
        str_tokens=("<b>", "</script><script>alert(1)</script>", "x"),
        heads=((0, 0), (0, 1), (2, 0)),
        patterns=pattern.expand(3, 3, 3).clone(),
    )
    html = view.save(tmp_path / "attn.html").read_text()
    assert html.count('class="widget"') == 2
    assert "<script>alert(1)" not in html and "&lt;b&gt;" in html
    assert '"attentionHeadNames": ["L0H0", "L0H1"]' in html and '"L2H0"' in html
    assert "data:image/png;base64," in html  # the static grid
    assert "data:image/png" not in view._repr_html_()  # notebooks get the interactive view only


def test_static_heatmaps(tiny: mechlab.LoadedModel, tokens: torch.Tensor, tmp_path: Path) -> None:
    view = attention_view(tiny.model, tokens[0])
    fig = view.plot(max_heads=5, columns=3)
    assert len([ax for ax in fig.axes if ax.get_title()]) == 5
    path = view.save_png(tmp_path / "attn.png")
    assert path.read_bytes().startswith(b"\x89PNG")
