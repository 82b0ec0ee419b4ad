"""The id index's steps as tasks (`retrainer.id_index`): describing the batches a run parsed, and locating
ticket ids for an erasure."""

from retrainer.id_index import index_batches, whereabouts
from tasks.common import read_task

whereabouts_task = read_task(whereabouts, "locate-ticket-ids")
index_batches_task = read_task(index_batches, "index-batch-ids")  # a new part each try: a retry adds a copy
