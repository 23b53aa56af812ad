"""Text a model generates is printed as it is, even when it looks like rich markup."""

import pytest

import mechlab
from mechlab import cli
from mechlab.models.verify import GenerationPair, VerifyReport

MARKUP_LIKE = "[bold]x[/bold] [red]"


def test_verify_prints_generations_that_look_like_markup_verbatim(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def fake_verify(*, loaded: mechlab.LoadedModel, **kwargs: object) -> VerifyReport:
        pair = GenerationPair(prompt="[link=x]p", hooked=MARKUP_LIKE, reference=MARKUP_LIKE)
        return VerifyReport(
            source=loaded.info.source,
            reference="reference [dim]",
            n_prompts=1,
            n_positions=3,
            max_abs_dlogprob=0.0,
            mean_kl=0.0,
            max_kl=0.0,
            top1_agreement=1.0,
            generations=(pair,),
            tolerance=1e-4,
            seconds=0.0,
        )

    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.setattr(mechlab, "verify", fake_verify)
    assert cli.main(["verify", "toy:tiny"]) == 0
    out = capsys.readouterr().out
    assert f"'[link=x]p' → hooked {MARKUP_LIKE!r} / reference {MARKUP_LIKE!r}" in out
    assert "vs reference [dim] on 1 prompts" in out
