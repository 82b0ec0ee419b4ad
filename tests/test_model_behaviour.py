"""Behavioural tests of the published model, after Made-With-ML's: invariance, directional expectations and
minimum functionality, each over a set of tickets with a stated tolerance.

They probe the production model of the session's `retrainer demo` run (the packaged MiniLM really
fine-tuned on generated tickets, two epochs, published through SeaweedFS and downloaded back), through
the product's inference API: `predict_probabilities` blends the lexical half in, as `retrainer predict`
does. The tickets are held-out generated ones (another seed than the demo's batches) and hand-written
ones, short and free-form; none is a smoke-test canary or a copy of a `app.samples` template.
"""

import random
import re
from collections.abc import Callable

import pytest
import torch

from app.samples import generate_tickets
from retrainer.core.labels import LABEL_TO_ID, LABELS
from retrainer.core.scoring import predict_probabilities
from retrainer.settings import TrainingConfig
from tests.demo_run import DemoRun

pytestmark = [pytest.mark.s3, pytest.mark.prefect, pytest.mark.training]  # the demo's own servers

Predict = Callable[[list[str]], torch.Tensor]
"""Texts -> class probabilities (one row per text, columns in label order)."""

# Short, unambiguous tickets of each class: the minimum functionality the model must have.
SHORT_TICKETS: dict[str, tuple[str, ...]] = {
    "bug": (
        "The export button throws a 404 error",
        "Search results page is blank since this morning",
        "Password reset link says it expired the moment I open it",
        "Uploading a 5 MB attachment fails with an error",
        "The app crashed when I rotated my phone",
        "Charts on the dashboard show every value twice",
        "Saving a draft wipes out the text I typed",
        "I get 'permission denied' although I am an admin",
        "The calendar shows every meeting one hour off since the update",
        "Invoices download as empty files",
    ),
    "feature_request": (
        "Please let us schedule reports to be emailed every Monday",
        "Add a way to archive old projects",
        "We need a Trello integration",
        "Could you add a print view for invoices?",
        "It would be nice to upload our own logo for the workspace",
        "Please allow tagging teammates in comments",
        "Would love an option to mute notifications on weekends",
        "Feature idea: templates for recurring tasks",
        "Please support importing contacts from Google",
        "Add a setting to change the default currency",
    ),
    "general_inquiry": (
        "How much does the Business plan cost per user?",
        "Where do I update our billing address?",
        "Do you have a status page?",
        "Can I pay by bank transfer instead of card?",
        "What happens to our data if we cancel?",
        "Is there a student discount?",
        "Which browsers do you support?",
        "Can two people share one licence?",
        "When does my free trial end?",
        "Do you sign a data processing agreement?",
    ),
}

# Tickets as customers write them: longer, chatty, with context; {name}, {email} and {number} are filled
# with one set of values and then another (the invariance to names, numbers and addresses).
FREE_FORM_TEMPLATES: dict[str, tuple[str, ...]] = {
    "bug": (
        "Hi, this is {name}. Since Tuesday every time I try to print an invoice the page goes white and "
        "nothing happens. Tried two laptops, same thing. Invoice {number}.",
        "Our sales team ({number} people) can't open the pipeline view anymore, it just says 'something "
        "went wrong' and reloading doesn't help. Contact me at {email}.",
        "When {name} edits a contact and presses save, the changes are gone after a refresh. This is the "
        "third time this week we lost data.",
        "The import stopped halfway at row {number} and now half our customers are missing from the list",
        "After updating the desktop app it won't start at all, the window flashes and closes. Reinstalling "
        "did not fix it. Reach me at {email}.",
    ),
    "feature_request": (
        "Hello, {name} here from the finance team. It would really help us if invoices could be split "
        "across two cost centres. Right now we do it by hand every month.",
        "We have {number} users and managing them one by one is painful. Could you give admins a way to "
        "import users from a spreadsheet? You can reach me at {email}.",
        "Love the product! One thing we miss is a kanban board for tasks, we'd use it every day.",
        "Our auditors keep asking for a history of who changed what. Could you add a change log per "
        "record? Thanks, {name}",
        "It'd be great to have a Spanish version of the interface for our team in Madrid, {number} "
        "people would benefit.",
    ),
    "general_inquiry": (
        "Hi, I'm {name} and I'm evaluating your tool for our school. Do you offer a plan for "
        "{number} teachers, and is there a trial we can start?",
        "Quick one: where can I see how many seats we are paying for? My email is {email}.",
        "Hello, our legal team wants to know in which country your servers are located and whether you "
        "are GDPR compliant. Thanks, {name}",
        "Can I change the owner of our account to my colleague? I am leaving the company next month. "
        "Account {number}.",
        "Good morning, what are the payment terms for annual plans, and can we get a quote for {number} "
        "users? Please reply to {email}.",
    ),
}
ENTITIES = (
    {"name": "Maria Lopez", "email": "maria.lopez@acme-corp.com", "number": "12"},
    {"name": "Kwame Mensah", "email": "k.mensah@northwind.io", "number": "4821"},
)
"""Two sets of names, addresses and numbers: a ticket must read the same with either."""

HELD_OUT_SEED = 2026
"""Generated tickets from another seed than the demo's batches (1 and 2): templates seen, tickets not."""
GENERATED_COUNT = 60


def free_form_tickets(entities: dict[str, str]) -> list[tuple[str, str]]:
    """The free-form tickets (text, label), their names, addresses and numbers from `entities`."""
    return [
        (template.format(**entities), label)
        for label, templates in FREE_FORM_TEMPLATES.items()
        for template in templates
    ]


def short_tickets() -> list[tuple[str, str]]:
    """The short tickets (text, label)."""
    return [(text, label) for label, texts in SHORT_TICKETS.items() for text in texts]


def generated_tickets() -> list[tuple[str, str]]:
    """Held-out generated tickets (text, label)."""
    tickets = generate_tickets(GENERATED_COUNT, seed=HELD_OUT_SEED)
    return list(zip(tickets["text"], tickets["label"], strict=True))


def all_tickets() -> list[tuple[str, str]]:
    """Every probe ticket (text, label): generated, short and free-form."""
    return generated_tickets() + short_tickets() + free_form_tickets(ENTITIES[0])


# --- invariance: perturbations that must not change the predicted label ---


def swap_letters(text: str, rng: random.Random) -> str:
    """Two neighbouring letters of one word (of four letters or more) swapped: a typo."""
    return _in_one_word(text, rng, lambda word, at: word[:at] + word[at + 1] + word[at] + word[at + 2 :])


def drop_letter(text: str, rng: random.Random) -> str:
    """One letter inside one word (of four letters or more) dropped: a typo."""
    return _in_one_word(text, rng, lambda word, at: word[:at] + word[at + 1 :])


def _in_one_word(text: str, rng: random.Random, change: Callable[[str, int], str]) -> str:
    words = list(re.finditer(r"[A-Za-z]{4,}", text))
    if not words:
        return text
    word = rng.choice(words)
    changed = change(word.group(), rng.randrange(1, len(word.group()) - 2))
    return text[: word.start()] + changed + text[word.end() :]


def spread_whitespace(text: str, rng: random.Random) -> str:
    """Words two or three spaces apart, with spaces around the ticket."""
    return " " + "".join(word + " " * rng.choice((2, 3)) for word in text.split()) + " "


def renumber(text: str, rng: random.Random) -> str:
    """Every digit changed (so ids, order numbers, counts and sizes all read differently)."""
    return re.sub(r"\d", lambda digit: str((int(digit.group()) + rng.randint(1, 9)) % 10), text)


def pairs_with_other_entities() -> list[tuple[str, str]]:
    """(ticket, the same ticket) with other names, e-mail addresses and numbers: the free-form tickets
    with either set of entities, and the generated ones renumbered."""
    rng = random.Random(0)
    first, second = (free_form_tickets(entities) for entities in ENTITIES)
    free_form = [(a, b) for (a, _), (b, _) in zip(first, second, strict=True)]
    numbered = [(text, renumber(text, rng)) for text, _ in generated_tickets() if re.search(r"\d", text)]
    return free_form + numbered


PERTURBATIONS: dict[str, Callable[[str, random.Random], str]] = {
    "swapped letters": swap_letters,
    "dropped letter": drop_letter,
    "upper case": lambda text, _: text.upper(),
    "lower case": lambda text, _: text.lower(),
    "extra whitespace": spread_whitespace,
}


def perturbed_pairs(perturbation: Callable[[str, random.Random], str]) -> list[tuple[str, str]]:
    """(ticket, the ticket perturbed) for every probe ticket the perturbation changes."""
    rng = random.Random(0)
    pairs = [(text, perturbation(text, rng)) for text, _ in all_tickets()]
    return [(text, changed) for text, changed in pairs if changed != text]


def unchanged_label_rate(predict: Predict, pairs: list[tuple[str, str]]) -> float:
    """Share of pairs whose two texts get the same predicted label."""
    probabilities = predict([text for pair in pairs for text in pair]).argmax(dim=-1)
    return (probabilities[0::2] == probabilities[1::2]).float().mean().item()


# --- directional expectations: an addition that must move one class's probability up ---

STACK_TRACE = (
    "\nNow it crashes with this:\n"
    "Traceback (most recent call last):\n"
    '  File "/srv/app/reports/export.py", line 88, in export_report\n'
    "    rows = build_rows(report)\n"
    '  File "/srv/app/reports/rows.py", line 41, in build_rows\n'
    "    return [row.total for row in report.rows]\n"
    "AttributeError: 'NoneType' object has no attribute 'rows'"
)
WISHES = (
    "a Gantt chart view",
    "an export to Google Sheets",
    "a way to pin important comments",
    "a read-only role for our accountants",
    "a dark background for the editor",
)
QUESTIONS = (
    "How do I find out which plan we are on?",
    "Where can I read how this is supposed to work?",
    "Who should I talk to about our contract?",
    "Is there a guide for new admins?",
    "Can you tell me what your opening hours are?",
)
DIRECTIONS: dict[str, Callable[[str, int], str]] = {
    "bug": lambda text, _: text + STACK_TRACE,
    "feature_request": lambda text, n: (
        f"{text} It would be great if you could add {WISHES[n % len(WISHES)]}."
    ),
    "general_inquiry": lambda text, n: f"{text} {QUESTIONS[n % len(QUESTIONS)]}",
}


def probability_rises(predict: Predict, label: str) -> torch.Tensor:
    """For each probe ticket not labelled `label`: how much its addition raises P(`label`)."""
    texts = [text for text, truth in all_tickets() if truth != label]
    added = [DIRECTIONS[label](text, index) for index, text in enumerate(texts)]
    probabilities = predict(texts + added)[:, LABEL_TO_ID[label]]
    return probabilities[len(texts) :] - probabilities[: len(texts)]


# --- minimum functionality ---


def accuracy_on(predict: Predict, tickets: list[tuple[str, str]]) -> float:
    """Share of `tickets` (text, label) predicted right."""
    predicted = predict([text for text, _ in tickets]).argmax(dim=-1).tolist()
    return sum(LABELS[p] == label for p, (_, label) in zip(predicted, tickets, strict=True)) / len(tickets)


# --- the tests, on the demo's production model ---


@pytest.fixture(scope="module")
def production_model(demo_run: DemoRun) -> Predict:
    """The demo's production model, as `retrainer predict` scores with it (lexical half blended in)."""
    assert demo_run.result.returncode == 0, (
        "the demo failed: see test_demo_runs_both_cycles_on_the_packaged_model"
    )
    (model_dir,) = demo_run.production_models()
    # With the demo's short recipe (14 steps: two epochs of 112 tickets) the transformer half stays near
    # uniform (its largest probability over the probe tickets: 0.39); the blend's lexical half decides.
    return lambda texts: predict_probabilities(model_dir, texts, TrainingConfig().max_length)


# The thresholds below were measured on the demo's production model. Two demo runs publish the same
# model (the data seeds and the training seed are fixed: probabilities equal to the last bit); a run
# with another training seed (7) changed no predicted label and no measured rate below.
# Measured: typos keep the label for 97% of tickets (3 flips of 101 and 105), case, whitespace and
# other names, numbers and addresses for 100%. Case and whitespace hold by construction today (the
# tokenizer is uncased, TF-IDF lower-cases, both split on whitespace): they guard against a cased or
# whitespace-aware base model or vectorizer (the pipeline made case-sensitive, tokenizer and TF-IDF,
# kept the label of 47% of upper-cased tickets). A random-initialised transformer of the same config,
# without a lexical half, kept 85% and 90% (typos) and 87% (names and numbers).
MIN_UNCHANGED_LABEL_RATE = 0.9


@pytest.mark.parametrize("perturbation", PERTURBATIONS)
def test_typos_case_and_whitespace_keep_the_label(production_model, perturbation):
    pairs = perturbed_pairs(PERTURBATIONS[perturbation])

    rate = unchanged_label_rate(production_model, pairs)

    assert len(pairs) >= 100  # (nearly) every probe ticket: a few swaps of double letters change nothing
    assert rate >= MIN_UNCHANGED_LABEL_RATE, f"{perturbation}: label unchanged for {rate:.0%} of tickets"


def test_names_numbers_and_addresses_keep_the_label(production_model):
    pairs = pairs_with_other_entities()

    rate = unchanged_label_rate(production_model, pairs)

    assert len(pairs) >= 40
    assert rate >= MIN_UNCHANGED_LABEL_RATE, f"label unchanged for {rate:.0%} of tickets"


# Measured (70 tickets each): each addition raised P(its label) for 100% of the other tickets, by a
# median of 0.15 (crash + stack trace -> bug), 0.36 (feature wish) and 0.15 (question). A neutral
# sentence of the same length moves them by a median of 0.01, 0.01 and 0.08 (unfamiliar words drift
# towards general_inquiry), a random-initialised transformer by 0.001, and a model with its classes
# permuted lowers them.
MIN_RAISED_SHARE = 0.9
MIN_MEDIAN_RISE = 0.1


@pytest.mark.parametrize("label", DIRECTIONS)
def test_an_addition_raises_its_class_probability(production_model, label):
    rises = probability_rises(production_model, label)

    raised = (rises > 0).float().mean().item()
    assert raised >= MIN_RAISED_SHARE, f"P({label}) rose for {raised:.0%} of the other tickets"
    assert rises.median() >= MIN_MEDIAN_RISE, f"P({label}) rose by a median of {rises.median():.3f}"


# Measured: 90% of the short bugs, 80% of the short feature requests, 90% of the short inquiries and
# 93% of the free-form tickets right (the misses: "We need a Trello integration", "Add a setting to
# change the default currency", "I get 'permission denied' although I am an admin", "When does my free
# trial end?", the auditors' change log). A random-initialised transformer calls most tickets bugs
# (0% of the feature requests and 20% of the inquiries right); the permuted model gets 0-20% right.
MIN_SHORT_TICKET_ACCURACY = 0.7
MIN_FREE_FORM_ACCURACY = 0.8


@pytest.mark.parametrize("label", LABELS)
def test_short_unambiguous_tickets_are_classified_right(production_model, label):
    tickets = [(text, label) for text in SHORT_TICKETS[label]]

    accuracy = accuracy_on(production_model, tickets)

    assert accuracy >= MIN_SHORT_TICKET_ACCURACY, f"{label}: {accuracy:.0%} of short tickets right"


def test_free_form_tickets_are_classified_right(production_model):
    accuracy = accuracy_on(production_model, free_form_tickets(ENTITIES[1]))

    assert accuracy >= MIN_FREE_FORM_ACCURACY, f"{accuracy:.0%} of free-form tickets right"
