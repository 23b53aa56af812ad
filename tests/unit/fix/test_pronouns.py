"""The shipped pronoun case: held-out occupations never seen in training, pairs of each kind,
neutral text without a person in it."""

import re

import pytest

import mechlab


def test_train_and_held_out_occupations_are_disjoint_and_balanced() -> None:
    pronouns = mechlab.load_pronoun_set()
    train, held_out = set(pronouns.occupations("train")), set(pronouns.occupations("held_out"))
    assert len(train) == len(held_out) == 29 and train.isdisjoint(held_out)
    assert {k: len(v) for k, v in pronouns.held_out.items()} == {"female": 14, "male": 15}
    assert all(t.count("{}") == 1 and not t.endswith(" ") for t in pronouns.templates)
    behaviour = pronouns.behaviour("held_out")
    assert len(behaviour.prompts) == 5 * 29 and (behaviour.positive, behaviour.negative) == (" she", " he")
    assert not any(job in prompt for prompt in behaviour.prompts for job in train if f" {job} " in prompt)


@pytest.mark.parametrize(("kind", "n"), [("answer", 145), ("occupation", 70), ("gendered", 50)])
def test_each_kind_of_pair_differs_only_where_it_should(kind: str, n: int) -> None:
    pairs = mechlab.load_pronoun_set().pairs(kind)
    assert len(pairs) == n
    if kind == "answer":
        assert all(
            p.removesuffix(" she") == q.removesuffix(" he")
            for p, q in zip(pairs.positive, pairs.negative, strict=True)
        )
    with pytest.raises(mechlab.InputError, match="Unknown pair kind"):
        mechlab.load_pronoun_set().pairs("names")


def test_the_neutral_text_is_about_no_person() -> None:
    text = mechlab.neutral_text()
    words = set(re.findall(r"[a-z]+", text.lower()))
    assert len(text) > 1500 and words.isdisjoint({"he", "she", "his", "her", "him", "man", "woman", "people"})
