"""How long the bucket keeps what: the lifecycle rules `retrainer setup --retention` applies.

Customer text lives in quarantine (rows that never reached a model), run scratch, curated dataset
versions and, until producers delete them, the batch files in ``incoming/``. Published models and the
decision history are kept: they are what a rollback and an audit need (a model's files hold no ticket
text: docs/design.md, "Data protection"). S3 lifecycle rules select by prefix and tag, and a curated
version stays current for as long as no run replaces it, so the run that replaces one tags it
(`SUPERSEDED_TAG`, `tasks.dataset.mark_superseded`) and the rule expires tagged versions only. The parts
a version lists are shared with later versions and never tagged: `retrainer datasets gc` deletes those
that no version lists any more.
"""

from retrainer.settings import S3Settings
from retrainer.storage import ExpiryRule

SUPERSEDED_TAG = ("ticket-retrainer", "superseded")
"""The object tag on a curated dataset version that a later version replaced."""


def retention_rules(settings: S3Settings) -> list[ExpiryRule]:
    """The product's lifecycle rules for these settings (a setting of 0 days: no rule)."""
    candidates = [
        ExpiryRule("expire-runs", settings.runs_prefix, settings.runs_expire_days),
        ExpiryRule("expire-quarantine", settings.quarantine_prefix, settings.quarantine_expire_days),
        ExpiryRule(
            "expire-superseded-datasets",
            settings.datasets_prefix,
            settings.superseded_datasets_expire_days,
            tag=SUPERSEDED_TAG,
        ),
        ExpiryRule("expire-incoming", settings.incoming_prefix, settings.incoming_expire_days),
        ExpiryRule(
            "expire-noncurrent-versions", "", settings.noncurrent_versions_expire_days, noncurrent=True
        ),
    ]
    return [rule for rule in candidates if rule.days]
