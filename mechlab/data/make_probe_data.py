"""Build the probing datasets shipped with mechlab (deterministic; rerun to regenerate).

    python -m mechlab.data.make_probe_data

``probe_sentiment.jsonl``: 12 review templates × 60 adjectives (30 positive, 30 negative); the
marked word is the adjective. ``probe_number.jsonl``: 9 templates × 40 nouns in singular and plural
form (80 word types); the label is the subject's grammatical number, the marked word the noun. In
the number templates the noun is never the last word, so a probe at the last token must find the
number carried forward, not read it off the token.
"""

import json
from pathlib import Path

POSITIVE = (
    "wonderful great excellent fantastic delightful lovely superb brilliant amazing pleasant charming "
    "marvelous terrific enjoyable beautiful splendid fabulous perfect outstanding impressive "
    "heartwarming magnificent glorious refreshing uplifting stunning joyful satisfying exquisite remarkable"
).split()
NEGATIVE = (
    "terrible awful horrible dreadful disappointing boring miserable unpleasant dull painful mediocre "
    "disgusting annoying depressing tedious frustrating lousy pathetic atrocious appalling bland dismal "
    "gloomy awkward unbearable nasty poor weak sad tiresome"
).split()
REVIEWS = (
    "The movie was {w}.",
    "I thought the food was {w}.",
    "Honestly, the service felt {w}.",
    "Our trip to the coast was {w}.",
    "The new album sounds {w}.",
    "My day at work was {w}.",
    "The hotel room looked {w}.",
    "That book was {w} from start to finish.",
    "The concert last night was {w}.",
    "Her performance in the play was {w}.",
    "The weather this weekend was {w}.",
    "The call with customer support was {w}.",
)
NOUNS = (
    ("dog", "dogs"),
    ("cat", "cats"),
    ("child", "children"),
    ("mouse", "mice"),
    ("man", "men"),
    ("woman", "women"),
    ("teacher", "teachers"),
    ("student", "students"),
    ("car", "cars"),
    ("house", "houses"),
    ("tree", "trees"),
    ("bird", "birds"),
    ("doctor", "doctors"),
    ("farmer", "farmers"),
    ("box", "boxes"),
    ("city", "cities"),
    ("baby", "babies"),
    ("leaf", "leaves"),
    ("knife", "knives"),
    ("goose", "geese"),
    ("tooth", "teeth"),
    ("foot", "feet"),
    ("person", "people"),
    ("horse", "horses"),
    ("letter", "letters"),
    ("window", "windows"),
    ("river", "rivers"),
    ("song", "songs"),
    ("player", "players"),
    ("painter", "painters"),
    ("boat", "boats"),
    ("flower", "flowers"),
    ("apple", "apples"),
    ("story", "stories"),
    ("church", "churches"),
    ("bus", "buses"),
    ("wolf", "wolves"),
    ("lady", "ladies"),
    ("chair", "chairs"),
    ("nurse", "nurses"),
)
SENTENCES = (
    "The {w} near the old bridge",
    "I think the {w} in the garden",
    "Yesterday the {w} from the village",
    "The little {w} behind the door",
    "Everyone says the {w} at the station",
    "The {w} that we met last summer",
    "Every morning the {w} by the lake",
    "The tired {w} on the hill",
    "My neighbour said the {w} with the red hat",
)


def rows() -> dict[str, list[dict[str, str]]]:
    sentiment = [
        {"text": t.format(w=w), "label": label, "word": w}
        for t in REVIEWS
        for label, words in (("positive", POSITIVE), ("negative", NEGATIVE))
        for w in words
    ]
    number = [
        {"text": t.format(w=w), "label": label, "word": w}
        for t in SENTENCES
        for pair in NOUNS
        for label, w in zip(("singular", "plural"), pair, strict=True)
    ]
    return {"probe_sentiment.jsonl": sentiment, "probe_number.jsonl": number}


def main() -> None:
    here = Path(__file__).parent
    for name, data in rows().items():
        (here / name).write_text("".join(json.dumps(r) + "\n" for r in data), encoding="utf-8")


if __name__ == "__main__":
    main()
