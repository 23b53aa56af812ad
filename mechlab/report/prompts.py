"""``explain_prompts``: one report per prompt of a set, and an index page linking them.

Each prompt is one task of an executor (``mechlab.executors``): the task explains the prompt
(``mechlab.explain``) and writes ``prompt-NNNN.html`` and its JSON summary ``prompt-NNNN.json`` into
the output directory, atomically, and hands back a short row (the prompt, the explained token, the
logit difference); the driver writes ``index.html`` and ``index.json`` from the rows. A prompt the
model cannot explain (too long, a target that is not one token) gets a row with its error; the
others are explained. Run again over the same prompts and settings, it keeps the reports already
written and explains the rest.

A prompt file is JSON lines, one object per prompt: ``{"prompt": "..."}``, optionally with
``"target"`` and ``"contrast"`` (one token each) for that prompt.
"""

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mechlab.errors import InputError, MechlabError
from mechlab.executors import Executor, resolve_executor
from mechlab.files import atomic_write
from mechlab.models.info import ModelInfo
from mechlab.models.load import LoadedModel
from mechlab.progress import Progress, Step
from mechlab.render import html
from mechlab.render.page import Page
from mechlab.report.explain import explain
from mechlab.report.settings import ExplainSettings
from mechlab.types import HookedModel

INDEX = "index.html"
FIELDS = ("prompt", "target", "contrast")


@dataclasses.dataclass(frozen=True)
class PromptTask:
    """A task: the prompt at ``index`` of the set, with its own target/contrast if it names them."""

    index: int
    prompt: str
    target: str | None = None
    contrast: str | None = None


def read_prompts(path: str | Path) -> list[PromptTask]:
    """The prompts of a JSON-lines file (blank lines skipped).

    Raises:
        InputError: the file is missing, a line is not a JSON object with a non-empty ``"prompt"``
            string, it has fields other than ``prompt``/``target``/``contrast``, or no prompt at all.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f'{path} is not a file: pass a JSON-lines file with one {{"prompt": ...}} per line.')
    tasks: list[PromptTask] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as error:
            raise InputError(
                f'{path}:{number}: not JSON ({error.msg}); each line is {{"prompt": "..."}}.'
            ) from None
        if (
            not isinstance(item, dict)
            or not isinstance(item.get("prompt"), str)
            or not item["prompt"].strip()
        ):
            raise InputError(
                f'{path}:{number}: expected an object with a non-empty "prompt" string, got {line[:80]!r}.'
            )
        unknown = sorted(set(item) - set(FIELDS))
        if unknown:
            raise InputError(
                f"{path}:{number}: unknown field(s) {', '.join(unknown)}; allowed: {', '.join(FIELDS)}."
            )
        for field in ("target", "contrast"):
            if item.get(field) is not None and not isinstance(item[field], str):
                raise InputError(
                    f"{path}:{number}: {field!r} must be a string (one token), got {item[field]!r}."
                )
        tasks.append(PromptTask(len(tasks), item["prompt"], item.get("target"), item.get("contrast")))
    if not tasks:
        raise InputError(f'{path} holds no prompts: write one {{"prompt": "..."}} per line.')
    return tasks


def _name(index: int) -> str:
    return f"prompt-{index:04d}"


def _digest(task: PromptTask, settings: ExplainSettings, model: str) -> str:
    key = json.dumps([task.prompt, task.target, task.contrast, dataclasses.asdict(settings), model])
    return hashlib.sha256(key.encode()).hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class Explaining:
    """The work of every ``explain_prompts`` task: explain one prompt and write its two files."""

    model: HookedModel
    info: ModelInfo | None
    settings: ExplainSettings
    out_dir: Path

    def __call__(self, task: PromptTask) -> dict[str, Any]:
        settings = self.settings
        if task.target is not None or task.contrast is not None:
            settings = dataclasses.replace(
                settings, target=task.target or settings.target, contrast=task.contrast or settings.contrast
            )
        digest = _digest(task, settings, "" if self.info is None else self.info.source)
        summary_path = self.out_dir / f"{_name(task.index)}.json"
        kept = _kept(summary_path, digest)
        if kept is not None:
            return kept
        row: dict[str, Any] = {"index": task.index, "prompt": task.prompt, "digest": digest}
        loaded = (
            LoadedModel(self.model, getattr(self.model, "tokenizer", None), self.info) if self.info else None
        )
        try:
            explanation = explain(loaded or self.model, task.prompt, settings=settings)
        except MechlabError as error:
            row["error"] = f"{type(error).__name__}: {error}"
            return row
        report = f"{_name(task.index)}.html"
        explanation.save(self.out_dir / report, id_prefix=f"p{task.index:04d}")
        chosen, contrast = explanation.target_names
        row.update(
            report=report,
            completion=explanation.completion.text,
            chosen=chosen,
            contrast=contrast,
            chosen_p=explanation.chosen_prob,
            logit_diff=explanation.dla.value,
            top_head=explanation.heads[0].label if explanation.heads else None,
        )
        summary = {**explanation.to_dict(), "row": row}
        atomic_write(summary_path, json.dumps(summary, indent=1, default=str))
        return row


def _kept(path: Path, digest: str) -> dict[str, Any] | None:
    """The row of a report written earlier for the same prompt and settings (both files intact)."""
    try:
        row = json.loads(path.read_text())["row"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if row.get("digest") != digest or not (path.parent / str(row.get("report"))).is_file():
        return None
    return dict(row)


def explain_prompts(
    model: LoadedModel | HookedModel,
    prompts: Sequence[str | PromptTask] | str | Path,
    out_dir: str | Path,
    *,
    settings: ExplainSettings | None = None,
    progress: Progress | None = None,
    executor: Executor | str | None = None,
) -> list[dict[str, Any]]:
    """Explain every prompt (``mechlab.explain``), one report each, and write an index page.

    Args:
        model: a ``LoadedModel`` (its ``ModelInfo`` goes into each manifest) or a hooked model.
        prompts: texts, ``PromptTask``s, or the path of a JSON-lines prompt file (``read_prompts``).
        out_dir: created if missing; reports already there for the same prompt and settings are kept.
        settings: as for ``explain`` (a prompt's own target/contrast replace those of ``settings``).
        progress: called with a ``Step`` (``done``/``total`` prompts) as each report is written.
        executor: explains the prompts, one task each (``mechlab.executors``; default: here, in order).

    Returns:
        One row per prompt, in order: ``prompt``, ``report`` (file name), ``chosen``, ``contrast``,
        ``logit_diff``…, or ``error`` for a prompt that could not be explained.
    """
    tasks = read_prompts(prompts) if isinstance(prompts, str | Path) else _tasks(prompts)
    settings = settings or ExplainSettings()
    directory = Path(out_dir)
    if directory.exists() and not directory.is_dir():
        raise InputError(f"--out {directory} is a file; explain_prompts writes a directory of reports there.")
    directory.mkdir(parents=True, exist_ok=True)
    hooked, info = (model.model, model.info) if isinstance(model, LoadedModel) else (model, None)
    done = 0

    def arrived(_: int, __: Any) -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(Step(done, len(tasks)))

    rows = resolve_executor(executor).map(
        Explaining(hooked, info, settings, directory), tasks, on_result=arrived
    )
    atomic_write(directory / "index.json", json.dumps(rows, indent=1, default=str))
    index_page(rows, info).save(directory / INDEX)
    return rows


def _tasks(prompts: Sequence[str | PromptTask]) -> list[PromptTask]:
    if len(prompts) == 0:
        raise InputError("No prompts to explain: pass at least one.")
    tasks = []
    for index, item in enumerate(prompts):
        if isinstance(item, PromptTask):
            tasks.append(dataclasses.replace(item, index=index))
        elif isinstance(item, str):
            tasks.append(PromptTask(index, item))
        else:
            raise InputError(f"Prompts are texts or PromptTasks; item {index} is {type(item).__name__}.")
    return tasks


def index_page(rows: Sequence[dict[str, Any]], info: ModelInfo | None) -> Page:
    """The index: one line per prompt, linking its report (or showing its error)."""
    failed = sum("error" in row for row in rows)
    page = Page(
        "mechlab explain: prompt set",
        subtitle=f"{len(rows)} prompts, {len(rows) - failed} explained"
        + (f", {failed} failed" if failed else "")
        + ("" if info is None else f" · {info.source}"),
        id_prefix="index",
    )
    lines = []
    for row in rows:
        prompt = html.escape(row["prompt"] if len(row["prompt"]) <= 120 else row["prompt"][:117] + "...")
        if "error" in row:
            lines.append(
                f"<tr><td>{row['index']}</td><td>{prompt}</td>"
                f"<td colspan=3>{html.escape(row['error'])}</td></tr>"
            )
            continue
        link = f'<a href="{html.escape(row["report"])}">{prompt}</a>'
        explained = html.escape(f"{row['chosen']!r} vs {row['contrast']!r}")
        lines.append(
            f"<tr><td>{row['index']}</td><td>{link}</td><td>{explained}</td>"
            f"<td>{row['logit_diff']:+.3f}</td><td>{html.escape(row['top_head'] or '')}</td></tr>"
        )
    head = "".join(f"<th>{h}</th>" for h in ("#", "prompt", "explained", "logit diff", "top head"))
    page.section("Reports").html(
        f'<table class="mechlab"><thead><tr>{head}</tr></thead><tbody>{"".join(lines)}</tbody></table>'
    )
    return page
