"""ticket-retrainer: keeps a support-ticket classifier fresh (see README.md).

`retrainer.core` is the ML core (no Prefect, no boto3); the rest of this package is what the layers
share, one kind per module: settings, the store contract and its stores (`retrainer.storage`), the run
record and the steps' values, reports, provenance, retention rules. Nothing here imports Prefect
(`tests/test_architecture.py` holds the layout).
"""

__version__ = "0.1.0"
