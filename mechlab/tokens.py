"""Every path from text to token ids, and back, with the errors that say what to pass instead.

mechlab tokenizes the way the model's runtime does (``model.to_tokens``: BOS only where the model's
tokenizer metadata asks for it). ``encode_prompt`` applies a chat template when asked; ``as_tokens``
takes one prompt (text or ids) for the methods that explain one prompt; ``batch_tokens`` takes a
batch (a tensor, a text, or texts of one token length) for patching. A model without a tokenizer
(the toy models) takes token ids; ``require_tokenizer`` says so in one message wherever text came.
A target or answer must be a *single* token: ``single_token`` turns text into its id or shows how the
text splits and which single-token spellings exist.
"""

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from mechlab.errors import MSG_NO_TOKENIZER, MSG_NOT_ONE_TOKEN, InputError
from mechlab.types import HookedModel, Tokens

TokensLike = Tensor | str | Sequence[str]
# Models without a tokenizer (the toy models) start their sequences with this id; the toy trainer
# and the detectors' inputs agree on it.
TOY_BOS = 0


def require_tokenizer(model: Any, fix: str = "pass a tensor of token ids instead of text.") -> Any:
    """The model's tokenizer, or an ``InputError`` that says what to pass instead (``fix``)."""
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise InputError(MSG_NO_TOKENIZER.format(fix=fix))
    return tokenizer


EMPTY_PROMPT = "The prompt is empty: give the text the model should continue."


def check_prompt(prompt: str) -> None:
    """The checks on a prompt that need no model: it must hold more than whitespace.

    Raises:
        InputError: the prompt is empty or whitespace only.
    """
    if not prompt or not prompt.strip():
        raise InputError(EMPTY_PROMPT)


def encode_prompt(model: HookedModel, prompt: str, *, chat: bool = False) -> tuple[str, Tokens]:
    """``(model_text, tokens)`` for a prompt, applying the chat template when ``chat`` is True.

    Raises:
        InputError: empty prompt, chat requested on a model without a chat template, or a prompt
            longer than the model's context.
    """
    tokenizer = require_tokenizer(model)
    check_prompt(prompt)
    if chat:
        if not getattr(tokenizer, "chat_template", None):
            raise InputError("This model has no chat template; run without --chat / chat=True.")
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
        tokens = model.to_tokens(text, prepend_bos=False, truncate=False)
    else:
        text = prompt
        tokens = model.to_tokens(text, truncate=False)
    n_ctx = int(model.cfg.n_ctx)
    if tokens.shape[-1] > n_ctx:
        raise InputError(
            f"The prompt is {tokens.shape[-1]} tokens long; this model's context holds {n_ctx}. "
            "Shorten the prompt."
        )
    return text, tokens


def as_tokens(model: HookedModel, prompt: str | Tensor) -> Tokens:
    """One prompt as ``[1, pos]`` token ids (a copy; text goes through the model's tokenizer).

    Raises:
        InputError: more than one prompt, an empty prompt, non-integer or out-of-vocabulary ids,
            or a prompt longer than the model's context.
    """
    if isinstance(prompt, str):
        return encode_prompt(model, prompt)[1]
    if prompt.is_floating_point() or prompt.is_complex():
        raise InputError(f"Expected integer token ids, got a {prompt.dtype} tensor.")
    tokens = prompt.detach().clone()
    if tokens.ndim == 1:
        tokens = tokens.unsqueeze(0)
    if tokens.ndim != 2 or tokens.shape[0] != 1 or tokens.shape[1] == 0:
        raise InputError(
            f"Expected one prompt as token ids of shape [pos] or [1, pos], got shape "
            f"{tuple(prompt.shape)}. Explain one prompt at a time."
        )
    d_vocab, n_ctx = int(model.cfg.d_vocab), int(model.cfg.n_ctx)
    if int(tokens.min()) < 0 or int(tokens.max()) >= d_vocab:
        raise InputError(f"Token ids must lie in 0..{d_vocab - 1}; got {tokens.min()}..{tokens.max()}.")
    if tokens.shape[1] > n_ctx:
        raise InputError(
            f"The prompt is {tokens.shape[1]} tokens long; this model's context holds {n_ctx}. "
            "Shorten the prompt."
        )
    return tokens


def token_text(model: HookedModel, token_id: int) -> str:
    """The text of one token id (``#id`` for models without a tokenizer)."""
    tokenizer = getattr(model, "tokenizer", None)
    return f"#{token_id}" if tokenizer is None else str(tokenizer.decode([int(token_id)]))


def str_tokens(model: HookedModel, tokens: Tensor) -> tuple[str, ...]:
    """The text of each token of a ``[1, pos]`` or ``[pos]`` prompt."""
    return tuple(token_text(model, int(t)) for t in tokens.reshape(-1).tolist())


def _encode(tokenizer: Any, text: str) -> list[int]:
    return [int(i) for i in tokenizer.encode(text, add_special_tokens=False)]


def _suggestions(tokenizer: Any, text: str, ids: list[int]) -> str:
    lines = []
    if ids:
        first = tokenizer.decode([ids[0]])
        lines.append(f"  {first!r}  (its first token; an answer's first token is the usual target)")
    stripped = text.strip()
    for variant in dict.fromkeys(
        [" " + stripped, stripped, " " + stripped.capitalize(), " " + stripped.lower()]
    ):
        if variant != text and len(_encode(tokenizer, variant)) == 1:
            lines.append(f"  {variant!r}  (a single token)")
    if not lines:
        return "Pick a shorter word, or attribute its first token."
    return "Single-token alternatives:\n" + "\n".join(lines)


def single_token(model: Any, token: str | int, *, what: str = "target") -> int:
    """The id of a single-token ``token`` (text or id).

    Raises:
        InputError: the text is not exactly one token (the message shows its tokenization and
            single-token alternatives), the id is out of range, or a toy model got text.
    """
    d_vocab = int(model.cfg.d_vocab)
    if isinstance(token, int):
        if not 0 <= token < d_vocab:
            raise InputError(f"The {what} token id {token} is outside the vocabulary 0..{d_vocab - 1}.")
        return token
    tokenizer = require_tokenizer(model, f"give the {what} as a token id (0..{d_vocab - 1}).")
    if token == "":
        raise InputError(f"The {what} is empty; give the next token to explain, e.g. ' Paris'.")
    ids = _encode(tokenizer, token)
    if len(ids) != 1:
        pieces = "[" + ", ".join(repr(tokenizer.decode([i])) for i in ids) + "]"
        raise InputError(
            MSG_NOT_ONE_TOKEN.format(
                what=what,
                text=token,
                n=len(ids),
                pieces=pieces,
                suggestions=_suggestions(tokenizer, token, ids),
            )
        )
    return ids[0]


def batch_tokens(model: HookedModel, prompt: TokensLike) -> Tokens:
    """Token ids ``[batch, pos]`` from token ids (1-D or 2-D) or text (one prompt or a list)."""
    if isinstance(prompt, Tensor):
        if prompt.dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
            raise InputError(
                f"Expected integer token ids, got a {prompt.dtype} tensor. Pass the ids from "
                "model.to_tokens(text) (or the text itself), not embeddings or logits."
            )
        tokens = prompt.long()
        if tokens.ndim == 1:
            tokens = tokens.unsqueeze(0)
        if tokens.ndim != 2 or 0 in tokens.shape:
            raise InputError(
                f"Expected token ids [batch, pos] or [pos] with at least one prompt of at least one "
                f"token, got shape {tuple(prompt.shape)}."
            )
        d_vocab = int(model.cfg.d_vocab)
        if int(tokens.min()) < 0 or int(tokens.max()) >= d_vocab:
            raise InputError(
                f"Token ids must lie in 0..{d_vocab - 1} (this model's vocabulary); got "
                f"{int(tokens.min())}..{int(tokens.max())}."
            )
        return tokens
    require_tokenizer(model, "pass a tensor of token ids.")
    texts = [prompt] if isinstance(prompt, str) else list(prompt)
    if not texts:
        raise InputError("No prompts: pass one prompt or a list of at least one.")
    rows = [model.to_tokens(text)[0] for text in texts]
    lengths = {len(row) for row in rows}
    if len(lengths) > 1:
        raise InputError(
            f"The prompts tokenize to different lengths {sorted(lengths)}; a batch needs one length. "
            "Use prompts of the same template with single-token names, or run them separately."
        )
    return torch.stack(rows)
