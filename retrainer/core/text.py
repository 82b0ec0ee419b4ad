"""Text preparation for tickets and issues: what the model reads, the same in training and scoring.

A ticket's text is its title (first line) and its body. Bodies written from issue templates carry a
lot of boilerplate (HTML-comment instructions, template headings, check lists) and long pastes
(code, logs, stack traces) that eat the model's length budget without telling it much. `clean_text`
removes the boilerplate and shortens the pastes; `encode` then keeps the head and the tail of what
is still too long, the title always whole and first. Customer data (e-mail addresses, phone and card
numbers, IP addresses, secrets) becomes typed placeholders (`retrainer.core.masking`). The recipe
(`InputRecipe`) is saved with every model, so a model is always scored the way it was trained.
"""

import json
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, field_validator

from retrainer.core.masking import MASK_KINDS, Masker, MaskKind, mask_text

RECIPE_FILE = "input_recipe.json"

_HTML_COMMENT = re.compile(r"<!--.*?(?:-->|\Z)", re.DOTALL)
_HEADING = re.compile(
    r"^ {0,3}(?:#{1,6}(?:[ \t].*)?|\*\*[^*\n]{1,80}\*\*:?|__[^_\n]{1,80}__:?)[ \t]*$", re.MULTILINE
)
_CHECKLIST = re.compile(r"^[ \t]*(?:[-*][ \t]+\[[ xX]\].*|_No response_)[ \t]*$", re.MULTILINE)
_FENCE = re.compile(r"^ {0,3}(```|~~~)[^\n]*\n(.*?)(?:^ {0,3}\1[^\n]*$|\Z)", re.DOTALL | re.MULTILINE)
_IMAGE = re.compile(r"!\[[^\]]*\]\([^)]*\)|<img\b[^>]*>", re.IGNORECASE)
_URL = re.compile(r"https?://([^/\s)>\]]+)(?:[^\s)>\]]*[^\s)>\].,;:!?'\"])?")
_FRAME = re.compile(
    r"^\s*(?:at\s+\S|File \".*\", line \d+|#\d+\s+0x[0-9a-f]+"
    r"|\S+\.(?:py|js|ts|java|kt|go|rs|cs|cpp|c|rb):\d+)"
)
_BLANK_RUNS = re.compile(r"\n\s*\n(?:\s*\n)+")
_SPACE_RUNS = re.compile(r"[ \t]{2,}")

MAX_CODE_LINES = 8
"""A code block or log paste longer than this keeps its first and last lines only."""
MAX_FRAMES = 4
"""A stack trace with more frames than this keeps its first two and its last frame."""


Truncation = Literal["head", "tail", "head_tail"]
"""Which part of a text over the length budget is kept."""


class InputRecipe(BaseModel):
    """How a ticket's text becomes model input. Saved with each model as ``input_recipe.json``."""

    max_length: int = Field(128, ge=8, le=8192, description="Token budget, special tokens included.")
    truncation: Truncation = Field("head", description="Which part of a text over the budget is kept.")
    head_share: float = Field(
        0.5, gt=0.0, lt=1.0, description="head_tail: share of the budget for the start (at least the title)."
    )
    clean: bool = Field(False, description="Strip template boilerplate and shorten code and stack traces.")
    mask: tuple[MaskKind, ...] = Field(
        (),
        description="Kinds of customer data replaced by a placeholder, after cleaning; none in recipes "
        "saved before masking existed, so those models score as they always did.",
    )

    @field_validator("mask")
    @classmethod
    def _in_masking_order(cls, kinds: tuple[MaskKind, ...]) -> tuple[MaskKind, ...]:
        """One spelling per set of kinds: the saved recipe and the tokenized-data cache key are stable."""
        return tuple(kind for kind in MASK_KINDS if kind in kinds)

    def save(self, model_dir: Path) -> None:
        """Write the recipe beside a model's weights."""
        (model_dir / RECIPE_FILE).write_text(self.model_dump_json(indent=2))

    @classmethod
    def of_model(cls, model_dir: Path, default_max_length: int) -> "InputRecipe":
        """The recipe a model was trained with. Models from before recipes were saved read raw text,
        cut at the end, at the configured length."""
        path = model_dir / RECIPE_FILE
        if not path.is_file():
            return cls(max_length=default_max_length)
        return cls.model_validate(json.loads(path.read_text()))


def clean_text(text: str) -> str:
    """The title (first line) untouched, the body without boilerplate and with long pastes shortened."""
    title, _, body = text.partition("\n")
    body = strip_html_comments(body)
    body = shorten_stack_traces(body)  # before code blocks: a trace inside a block keeps its message
    body = shorten_code_blocks(body)
    body = strip_template_lines(body)
    body = shorten_links(body)
    return normalise_whitespace(f"{title}\n{body.strip()}")


def strip_html_comments(text: str) -> str:
    """Remove ``<!-- ... -->`` (where issue templates put their instructions); an unclosed one runs
    to the end."""
    return _HTML_COMMENT.sub("", text)


def strip_template_lines(text: str) -> str:
    """Remove template headings (``### Describe the bug``, ``**To Reproduce**``), check-list lines and
    the ``_No response_`` of empty issue-form fields."""
    return _CHECKLIST.sub("", _HEADING.sub("", text))


def shorten_code_blocks(text: str, max_lines: int = MAX_CODE_LINES) -> str:
    """Fenced code or log blocks over `max_lines` keep their first and last lines around a marker."""

    def shorten(match: re.Match) -> str:
        lines = match.group(2).rstrip("\n").split("\n")
        if len(lines) > max_lines:
            keep_head = max_lines - max_lines // 4
            lines = [
                *lines[:keep_head],
                f"[... {len(lines) - max_lines} lines ...]",
                *lines[-(max_lines // 4) :],
            ]
        return "\n".join(lines)  # the fences themselves are dropped: they are tokens, not content

    return _FENCE.sub(shorten, text)


def shorten_stack_traces(text: str, max_frames: int = MAX_FRAMES) -> str:
    """Runs of stack frames (Python, Java/JS, native, ``file.ext:line``) over `max_frames` keep their
    first two and their last frame; the exception message around them stays."""
    lines = text.split("\n")
    kept: list[str] = []
    run: list[list[str]] = []  # frames of the current run; a Python frame is its File line + source
    for line in lines:
        if _FRAME.match(line):
            run.append([line])
        elif run and run[-1][0].lstrip().startswith("File ") and len(run[-1]) == 1 and line.startswith("  "):
            run[-1].append(line)
        else:
            kept.extend(_shortened_run(run, max_frames))
            run = []
            kept.append(line)
    kept.extend(_shortened_run(run, max_frames))
    return "\n".join(kept)


def _shortened_run(frames: list[list[str]], max_frames: int) -> list[str]:
    if len(frames) > max_frames:
        frames = [*frames[:2], [f"[... {len(frames) - 3} frames ...]"], frames[-1]]
    return [line for frame in frames for line in frame]


def shorten_links(text: str) -> str:
    """Images become ``[image]``, links their host name: long URLs are many tokens of little meaning."""
    return _URL.sub(r"\1", _IMAGE.sub("[image]", text))


def normalise_whitespace(text: str) -> str:
    """Trailing spaces, runs of spaces and of blank lines collapsed."""
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    return _BLANK_RUNS.sub("\n\n", _SPACE_RUNS.sub(" ", text)).strip()


def prepare_texts(texts: list[str], tokenizer, recipe: InputRecipe, masker: Masker = mask_text) -> list[str]:
    """Texts as the model reads them: cleaned and masked (by `masker`) if the recipe says so, and for
    ``head_tail``, cut to their first and last tokens so that the tokenizer's own truncation no longer
    has to cut."""
    if recipe.clean:
        texts = [clean_text(text) for text in texts]
    if recipe.mask:
        # After cleaning: links are host names by then, so their paths (ids, versions, hashes) cannot
        # be mistaken for customer data, and no placeholder's "]" can end a link early.
        texts = [masker(text, recipe.mask) for text in texts]
    if recipe.truncation != "head_tail":
        return list(texts)
    budget = recipe.max_length - tokenizer.num_special_tokens_to_add()
    return _cut_to_head_and_tail(list(texts), tokenizer, budget, recipe.head_share)


WINDOW_CHARS_PER_TOKEN = 12
"""A long text is measured in two windows of this many characters per token of the budget (a token of
prose is ~4 characters, of code and logs rarely over 10); a window holding too few tokens falls back to
measuring the whole text."""
WINDOW_MARGIN_TOKENS = 16
"""Tokens a window must hold beyond those kept, so that where a window was cut (the word split there)
cannot touch a kept token."""
_WHITESPACE = re.compile(r"\s")


def _cut_to_head_and_tail(texts: list[str], tokenizer, budget: int, head_share: float) -> list[str]:
    """Each text cut to its head and tail tokens (`keep_head_and_tail`), the head at least the title.

    A text much longer than the budget is measured in a window at each end instead of whole (tokenizing
    a 47,000-character issue for its 126 kept tokens took 30 ms). Each window is cut at whitespace,
    where tokenizers split words before finding tokens, and is used only if it holds
    `WINDOW_MARGIN_TOKENS` more tokens than are kept from it (the title included), so that the result
    is the whole-text measurement's (a test compares them); otherwise the whole text is measured."""
    cut: list[str | None] = [None] * len(texts)
    windowed = {index: ends for index, text in enumerate(texts) if (ends := _window_ends(text, budget))}
    window_texts = [
        part
        for index, (head_end, tail_start) in windowed.items()
        for part in (texts[index][:head_end], texts[index][tail_start:])
    ]
    window_spans = _token_spans(tokenizer, window_texts)
    for number, (index, (_, tail_start)) in enumerate(windowed.items()):
        head_spans, tail_spans = window_spans[2 * number], window_spans[2 * number + 1]
        cut[index] = _cut_from_windows(texts[index], head_spans, tail_spans, tail_start, budget, head_share)
    whole = [index for index, text in enumerate(cut) if text is None]
    for index, spans in zip(whole, _token_spans(tokenizer, [texts[i] for i in whole]), strict=True):
        text = texts[index]
        cut[index] = keep_head_and_tail(text, spans, budget, _head_tokens(text, spans, budget, head_share))
    return cut


def _token_spans(tokenizer, texts: list[str]) -> list[list[tuple[int, int]]]:
    """Each text's tokens as character spans (no special tokens)."""
    if not texts:
        return []
    # Whole texts are measured on purpose, to cut them; verbose=False silences the tokenizer's "longer
    # than the specified maximum sequence length ... indexing errors" warning, untrue here.
    return tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True, verbose=False)[
        "offset_mapping"
    ]


def _head_tokens(text: str, token_spans: list[tuple[int, int]], budget: int, head_share: float) -> int:
    """Tokens kept from the start: the head's share of the budget, or the whole title if longer."""
    return max(round(budget * head_share), _title_tokens(text, token_spans))


def _window_ends(text: str, budget: int) -> tuple[int, int] | None:
    """Where the head window ends and the tail window starts (at whitespace), for a text long enough
    to have two windows that do not meet; None: measure it whole."""
    window = WINDOW_CHARS_PER_TOKEN * budget
    title_end = len(text.partition("\n")[0])
    if len(text) <= title_end + 3 * window:
        return None
    head_end = max(text.rfind(" ", 0, title_end + window), text.rfind("\n", 0, title_end + window))
    tail_space = _WHITESPACE.search(text, len(text) - window)
    if head_end <= title_end or tail_space is None:
        return None  # no whitespace to cut at (one long token run): measured whole
    return head_end, tail_space.start()


def _cut_from_windows(
    text: str,
    head_spans: list[tuple[int, int]],
    tail_spans: list[tuple[int, int]],
    tail_start: int,
    budget: int,
    head_share: float,
) -> str | None:
    """`text` cut as `keep_head_and_tail` cuts it, from the spans of its two windows; None when a window
    holds too few tokens to be sure (then the text is measured whole)."""
    head_tokens = min(_head_tokens(text, head_spans, budget, head_share), budget)
    tail_tokens = budget - head_tokens
    title_end = len(text.partition("\n")[0])
    tokens_after_title = sum(1 for start, _ in head_spans if start >= title_end)
    if (
        len(head_spans) < head_tokens + WINDOW_MARGIN_TOKENS
        or tokens_after_title < WINDOW_MARGIN_TOKENS
        or len(tail_spans) < tail_tokens + WINDOW_MARGIN_TOKENS
    ):
        return None
    head = text[: head_spans[head_tokens - 1][1]] if head_tokens else ""
    if not tail_tokens:
        return head
    tail = text[tail_start + tail_spans[len(tail_spans) - tail_tokens][0] :]
    return f"{head}\n{tail}"


def _title_tokens(text: str, token_spans: list[tuple[int, int]]) -> int:
    """How many of a text's tokens lie within its title (first line)."""
    title_end = len(text.partition("\n")[0])
    return sum(1 for _, end in token_spans if end <= title_end)


def keep_head_and_tail(text: str, token_spans: list[tuple[int, int]], budget: int, head_tokens: int) -> str:
    """`text` cut to its first `head_tokens` and its last ``budget - head_tokens`` tokens (character
    spans from the tokenizer); unchanged when it already fits the budget."""
    if len(token_spans) <= budget:
        return text
    head_tokens = min(head_tokens, budget)
    tail_tokens = budget - head_tokens
    head = text[: token_spans[head_tokens - 1][1]] if head_tokens else ""
    tail = text[token_spans[len(token_spans) - tail_tokens][0] :] if tail_tokens else ""
    return f"{head}\n{tail}" if tail else head


def encode(
    texts: list[str], tokenizer, recipe: InputRecipe, masker: Masker = mask_text, **tokenizer_arguments
):
    """Tokenize `texts` as `recipe` says (the one way both training and scoring encode text), masked by
    `masker`."""
    tokenizer.truncation_side = "left" if recipe.truncation == "tail" else "right"
    return tokenizer(
        prepare_texts(texts, tokenizer, recipe, masker),
        truncation=True,
        max_length=recipe.max_length,
        **tokenizer_arguments,
    )


def join_title(title: object, body: object) -> str:
    """One ticket text from a title and a body: the title on the first line, either may be missing."""
    parts = [str(part).strip() for part in (title, body) if isinstance(part, str) and part.strip()]
    return "\n".join(parts)
