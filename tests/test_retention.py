"""Retention: the lifecycle rules `retrainer setup --retention` applies, and the tag that lets the rule
for curated data expire replaced versions only (SeaweedFS over HTTP; nothing here waits for expiry)."""

import pytest

from app.samples import generate_tickets, tickets_to_csv
from flows.retrain import ingest_new_batches
from retrainer.retention import SUPERSEDED_TAG, retention_rules
from retrainer.settings import S3Settings
from tasks.dataset import parts_prefix, version_key


def test_the_default_rules_expire_scratch_quarantine_replaced_datasets_and_old_versions_but_not_incoming():
    rules = {rule.name: rule for rule in retention_rules(S3Settings())}

    assert {name: rule.days for name, rule in rules.items()} == {
        "expire-runs": 14,
        "expire-quarantine": 30,
        "expire-superseded-datasets": 90,
        "expire-noncurrent-versions": 30,
    }  # incoming/ belongs to the producers: no rule unless asked for
    assert rules["expire-superseded-datasets"].as_s3()["Filter"] == {
        "And": {"Prefix": "datasets/", "Tags": [{"Key": "ticket-retrainer", "Value": "superseded"}]}
    }
    assert rules["expire-noncurrent-versions"].as_s3()["NoncurrentVersionExpiration"] == {
        "NoncurrentDays": 30
    }


def test_a_setting_of_zero_days_sets_no_rule_and_incoming_gets_one_when_asked():
    settings = S3Settings(quarantine_expire_days=0, incoming_expire_days=45)

    rules = {rule.name: rule.days for rule in retention_rules(settings)}

    assert "expire-quarantine" not in rules
    assert rules["expire-incoming"] == 45


@pytest.mark.prefect
def test_the_run_that_replaces_a_curated_version_tags_it_and_never_the_current_one_nor_a_part(
    run_resources, store
):
    store.put("incoming/first.csv", tickets_to_csv(generate_tickets(40, seed=1)))
    first = ingest_new_batches(run_resources, "run-1").dataset_version
    store.put("incoming/second.csv", tickets_to_csv(generate_tickets(40, seed=2)))
    second = ingest_new_batches(run_resources, "run-2").dataset_version

    assert first != second
    assert store.tags(version_key(store, first)) == dict([SUPERSEDED_TAG])
    assert store.tags(version_key(store, second)) == {}
    ingest_new_batches(run_resources, "run-3")  # nothing new: the current version stays untagged
    assert store.tags(version_key(store, second)) == {}
    # Parts may be shared between versions: never tagged (unlisted ones go with `retrainer datasets gc`).
    assert [store.tags(info.key) for info in store.list_objects(parts_prefix(store))] == [{}, {}]
