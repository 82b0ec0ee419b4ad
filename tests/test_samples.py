"""The demo's ticket generator."""

from app.samples import generate_tickets, tickets_to_csv
from retrainer.core.batch_files.formats import parse_batch
from retrainer.core.labels import LABELS


def test_same_seed_same_tickets_and_balanced_labels():
    first = generate_tickets(300, seed=7)

    assert first.equals(generate_tickets(300, seed=7))
    assert not first.equals(generate_tickets(300, seed=8))
    assert first["label"].value_counts().to_dict() == dict.fromkeys(LABELS, 100)
    assert first["ticket_id"].is_unique
    assert first["text"].str.len().between(10, 200).all()


def test_tickets_are_varied():
    tickets = generate_tickets(300, seed=7)

    assert tickets["text"].nunique() > 250


def test_csv_batches_parse_back_unchanged():
    tickets = generate_tickets(50, seed=1)

    parsed = parse_batch(tickets_to_csv(tickets), "incoming/batch.csv")
    assert list(parsed.pop("_row")) == list(range(1, 51))  # 1-based record numbers for error messages
    assert parsed.equals(tickets)
