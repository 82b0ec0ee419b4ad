"""The label check through the real retrain flow: a batch whose bugs were relabelled feature requests is
blocked and alerted on, naming the batch; an ordinary batch is not (real SeaweedFS, a real Prefect API,
the tiny model).

The tiny model learns the generated tickets well enough through its lexical half, but how well is not
the point here. So that the effect does not hang on it, the poisoned tickets are chosen with the
champion: bugs it calls bug, now labelled feature_request (what a poisoner flipping bugs produces on the
tickets a good champion gets right). The effect on a real model and real issues is measured by
`benchmarks/experiments/poisoning.py` (docs/experiments/2026-12-06-label-poisoning.md).
"""

import pandas as pd

from app.samples import generate_tickets, tickets_to_csv
from flows.retrain import retrain
from retrainer.core.scoring import predict_label_ids
from retrainer.resources import Resources
from tasks.alerts import LABELS_SUSPECT_EVENT
from tasks.registry import fetch_production_model, read_history
from tests.test_retrain_flow import LEARNS, _event_payloads

POISONED = "incoming/night-3-poisoned.csv"


def _poisoned(tickets: pd.DataFrame, resources: Resources, share: float) -> pd.DataFrame:
    """`tickets` with `share` of the bugs the champion calls bug relabelled feature_request."""
    _, champion_dir = fetch_production_model(resources.store, resources.settings.model_cache_dir)
    predicted = predict_label_ids(
        champion_dir, tickets["text"].tolist(), resources.settings.training.max_length
    )
    targets = [
        index
        for index, (label, guess) in enumerate(zip(tickets["label"], predicted, strict=True))
        if label == "bug" and guess == 0
    ]
    flipped = targets[: round(share * len(targets))]
    return tickets.assign(
        label=["feature_request" if i in flipped else v for i, v in enumerate(tickets["label"])]
    )


def test_a_relabelled_batch_is_blocked_and_alerted_naming_it_while_an_ordinary_batch_is_not(
    run_resources, webhook
):
    store = run_resources.store
    resources = Resources(
        run_resources.settings.model_copy(update={"notification_block": webhook.block}), store
    )
    store.put("incoming/night-1.csv", tickets_to_csv(generate_tickets(300, seed=1, id_prefix="n1")))
    assert retrain(resources=resources, training=LEARNS).status == "promoted"  # the champion

    store.put("incoming/night-2.csv", tickets_to_csv(generate_tickets(300, seed=2, id_prefix="n2")))
    ordinary = retrain(resources=resources, training=LEARNS)

    assert ordinary.status in ("promoted", "kept")  # whatever the gate's ordinary rule says
    assert not ordinary.suspect_batches
    assert ordinary.label_agreement.new_tickets == 300  # every split of the new batch
    assert ordinary.label_agreement.extra_predictions == 300 - ordinary.champion_new_data.examples
    assert ordinary.label_agreement.established_tickets == ordinary.champion_established.examples >= 20
    assert not [reason for reason in ordinary.reasons if reason.startswith("label") and "EXCEEDS" in reason]

    tickets = _poisoned(generate_tickets(300, seed=3, id_prefix="n3"), resources, share=0.6)
    store.put(POISONED, tickets_to_csv(tickets))
    blocked = retrain(resources=resources, training=LEARNS)

    assert blocked.status == "kept"
    assert blocked.suspect_batches[0] == POISONED  # the lowest agreement first
    assert any(
        r.startswith("label flips:") and "labelled feature_request" in r and "EXCEEDS" in r
        for r in blocked.reasons
    )
    assert blocked.production_version == ordinary.production_version  # production unchanged
    assert blocked.label_agreement.batches[POISONED].agreement < blocked.label_agreement.established_agreement
    [history] = [entry for entry in read_history(store) if entry.run_id == blocked.run_id]
    assert history.action == "kept" and history.suspect_batches[0] == POISONED
    [event] = _event_payloads(LABELS_SUSPECT_EVENT, POISONED)
    assert (
        event["run_id"] == blocked.run_id
        and event["tickets"] == blocked.label_agreement.batches[POISONED].tickets
    )
    [alert] = [payload for payload in webhook.payloads if "SUSPECT LABELS" in payload["subject"]]
    assert "promotion blocked" in alert["subject"] and "recall" not in alert["text"]  # the label reasons
    body = " ".join(str(payload) for payload in webhook.payloads)
    assert POISONED in body and not any(text[:40] in body for text in tickets["text"])  # no ticket text
