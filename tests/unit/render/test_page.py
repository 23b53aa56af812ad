"""The offline page builder: escaping, one embedded bundle, no remote sources, stable ids."""

import errno
import os
import re
import stat
from pathlib import Path

import pytest
import torch
from matplotlib.figure import Figure

from mechlab.files import atomic_write
from mechlab.render.page import Page, circuitsvis_bundle, script_json
from mechlab.render.tokens import colored_tokens

EVIL = '</script><script>alert("x")</script><!-- & \u2028'
REMOTE = re.compile(r"""<(script|link|img|iframe)\b[^>]*\b(src|href)\s*=\s*["']?\s*(https?:)?//""", re.I)


def attention_page(prefix: str | None = "t") -> Page:
    page = Page("Title <b>", subtitle=EVIL, id_prefix=prefix)
    section = page.section("Heads & tokens", EVIL)
    tokens = ["a", EVIL, "c"]
    pattern = torch.tril(torch.ones(3, 3)) / torch.arange(1, 4)[:, None]
    for layer in range(2):
        section.widget("AttentionHeads", {"attention": pattern[None], "tokens": tokens}, caption=f"L{layer}")
    section.table(["token"], [[EVIL]])
    return page


def test_script_json_cannot_close_a_script_or_open_a_comment() -> None:
    text = script_json({"tokens": [EVIL]})
    assert "<" not in text and ">" not in text and "&" not in text and "\u2028" not in text
    assert "\\u003c/script\\u003e" in text


def test_tokens_are_escaped_everywhere_and_scripts_stay_balanced() -> None:
    html = attention_page().render()
    assert EVIL not in html and "<script>alert" not in html and "<!-- &" not in html
    outside = html.replace(circuitsvis_bundle(), "")
    assert outside.count("<script") == outside.count("</script>") == 2  # the bundle's and the mounts'
    assert "</script" not in circuitsvis_bundle()
    assert "&lt;/script&gt;" in html and "&lt;b&gt;" in html
    assert 'alert(\\"x\\")' in html  # the token survives, JSON-escaped, in the mount data


def test_the_bundle_is_embedded_once_for_many_widgets() -> None:
    html = attention_page().render()
    marker = circuitsvis_bundle()[:200]
    assert html.count(marker) == 1
    assert html.count('class="widget"') == 2
    assert len(html) < len(circuitsvis_bundle()) + 100_000


def test_page_has_no_remote_sources_and_forbids_fetching() -> None:
    html = attention_page().render()
    assert REMOTE.search(html) is None
    assert "default-src 'none'" in html and "connect-src 'none'" in html
    assert "sourceMappingURL" not in html


def test_ids_are_injectable_and_deterministic() -> None:
    assert attention_page("snap").render() == attention_page("snap").render()
    assert 'id="snap-w0"' in attention_page("snap").render()
    first, second = attention_page(None).body(), attention_page(None).body()
    assert re.search(r'id="(mechlab-\d+)-w0"', first).group(1) != re.search(
        r'id="(mechlab-\d+)-w0"', second
    ).group(1)


def test_pages_without_widgets_carry_no_javascript() -> None:
    page = Page("Plain", id_prefix="p")
    page.section("Numbers").table(["a"], [[1]]).text("text")
    assert "<script" not in page.render()


def _figure_page() -> Page:
    fig = Figure()
    fig.add_subplot().plot([0, 1], [1, 0])
    page = Page("Fig", id_prefix="f")
    page.section("A figure").figure(fig, alt="a line")
    return page


def test_figures_become_data_uris(tmp_path: Path) -> None:
    text = _figure_page().save(tmp_path / "page.html").read_text()
    assert 'src="data:image/png;base64,' in text


def test_a_write_that_fails_mid_way_keeps_the_old_file(tmp_path: Path, disk_full_mid_write: None) -> None:
    old = tmp_path / "page.html"
    old.write_text("the previous report")
    with pytest.raises(OSError, match="No space left on device"):
        _figure_page().save(old)
    assert old.read_text() == "the previous report"
    assert [p.name for p in tmp_path.iterdir()] == ["page.html"]  # no temporary file left


def test_a_failed_rename_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    old = tmp_path / "page.html"
    old.write_text("the previous report")

    def refuse(src: object, dst: object) -> None:
        assert Path(str(src)).read_text().startswith("<!DOCTYPE html>")  # the new page, complete
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(PermissionError):
        _figure_page().save(old)
    assert old.read_text() == "the previous report"
    assert [p.name for p in tmp_path.iterdir()] == ["page.html"]


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002], ids=oct)
def test_written_files_get_the_permissions_of_a_plain_write(tmp_path: Path, umask: int) -> None:
    previous = os.umask(umask)
    try:
        path = atomic_write(tmp_path / "out.json", "{}")
        plain = tmp_path / "plain.json"
        plain.write_text("{}")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(path.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode) == 0o666 & ~umask


def test_bad_widget_and_prefix_are_rejected() -> None:
    with pytest.raises(ValueError, match="Unknown circuitsvis component"):
        Page("x").section("s").widget("NoSuchThing", {})
    with pytest.raises(ValueError, match="id_prefix"):
        Page("x", id_prefix='"><script>')


def test_colored_tokens_escape_and_scale() -> None:
    html = colored_tokens(["<b>", "\n"], [2.0, -1.0])
    assert "&lt;b&gt;" in html and "↵" in html and "<b>" not in html
    assert "rgba(214,39,40,0.850)" in html and "rgba(31,119,180,0.425)" in html


def test_dollar_tokens_are_drawn_not_parsed_as_mathtext() -> None:
    """Tokens such as "$$" (common in LaTeX-trained vocabularies) once crashed every figure."""
    from mechlab.attribution.result import Attribution
    from mechlab.readout.attention import AttentionView

    tokens = ("$$", " $x$", "\\$\\frac")
    attribution = Attribution(
        method="occlusion",
        tokens=torch.tensor([[1, 2, 3]]),
        str_tokens=tokens,
        scores=torch.tensor([0.0, 1.0, -2.0]),
        target="logit('$$')",
        value=1.0,
        baseline_value=None,
        baseline="replace",
    )
    pattern = torch.tril(torch.ones(3, 3)) / torch.arange(1, 4)[:, None]
    view = AttentionView(torch.tensor([[1, 2, 3]]), tokens, ((0, 0),), pattern[None])
    html = attribution.page().render(prefix="d") + view.page().render(prefix="v")
    assert html.count("data:image/png;base64,") == 2 and "$$" in html


def test_rewriting_a_file_keeps_its_permissions(tmp_path: Path) -> None:
    path = atomic_write(tmp_path / "private.html", "v1")
    path.chmod(0o600)
    atomic_write(path, "v2")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and path.read_text() == "v2"


def test_the_policy_allows_exactly_the_pages_own_scripts() -> None:
    import base64
    import hashlib
    import re

    page = Page("CSP", id_prefix="csp")
    page.section("W").widget("ColoredTokens", {"tokens": ["a", "b"], "values": [0.1, -0.2]})
    html = page.render()
    policy = re.search(r'Content-Security-Policy" content="([^"]+)"', html).group(1)  # type: ignore[union-attr]
    assert "unsafe-eval" not in policy and "script-src 'unsafe-inline'" not in policy
    assert "form-action 'none'" in policy and "base-uri 'none'" in policy
    scripts = re.findall(r"<script>(.*?)</script>", html, re.DOTALL)
    allowed = set(re.findall(r"'sha256-([^']+)'", policy))
    assert len(scripts) == 2 and allowed == {
        base64.b64encode(hashlib.sha256(s.encode()).digest()).decode() for s in scripts
    }
    quiet = Page("No widgets", id_prefix="q")
    quiet.section("T").text("text")
    assert "script-src 'none'" in quiet.render()


def test_bidi_controls_are_shown_as_codes_in_text_and_widget_props() -> None:
    page = Page("Bidi", id_prefix="b")
    page.section("P").text("a\u202eb\u2066c")
    page.section("W").widget("ColoredTokens", {"tokens": ["x\u202ey"], "values": [1.0]})
    html = page.render()
    assert (
        "a&lt;U+202E&gt;b&lt;U+2066&gt;c" in html
        and "x<U+202E>y".replace("<", "\\u003c").replace(">", "\\u003e") in html
    )
    assert "\u202e" not in html and "\u2066" not in html
