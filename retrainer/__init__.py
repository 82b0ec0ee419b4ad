"""ticket-retrainer: keeps a support-ticket classifier fresh (see README.md).

`retrainer.core` is the ML core (no Prefect, no boto3); the rest of this package is what the layers
share: settings, the storage interface, logging, provenance.
"""

__version__ = "0.1.0"
