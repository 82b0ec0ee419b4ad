"""The id index's steps as tasks (`retrainer.id_index`): describing the batches a run parsed, and locating
ticket ids for an erasure, and merging the index's parts."""

from retrainer.id_index import compact_index, index_batches, whereabouts
from tasks.common import read_task

whereabouts_task = read_task(whereabouts, "locate-ticket-ids")
index_batches_task = read_task(index_batches, "index-batch-ids")  # a new part each try: a retry adds a copy
compact_index_task = read_task(compact_index, "compact-id-index")  # converges: a retry merges what is left
