"""A worker keeps the tokenized data of the current dataset version only: token ids read back into ticket
text, and an older version may hold tickets erased since."""

import os
import time

from retrainer.core.tokenized_cache import prune_tokenized_caches


def test_other_dataset_versions_idle_caches_are_deleted_and_the_current_and_busy_ones_kept(tmp_path):
    current, idle, busy = (tmp_path / name for name in ("ds-3", "ds-1", "ds-2"))
    for folder in (current, idle, busy):
        folder.mkdir()
        (folder / "train-abc.arrow").write_bytes(b"token ids")
    two_hours_ago = time.time() - 7200
    os.utime(idle, (two_hours_ago, two_hours_ago))
    os.utime(current, (two_hours_ago, two_hours_ago))  # the current one is kept however old

    deleted = prune_tokenized_caches(tmp_path, keep="ds-3")

    assert deleted == [idle]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["ds-2", "ds-3"]


def test_no_cache_folder_yet_is_nothing_to_prune(tmp_path):
    assert prune_tokenized_caches(tmp_path / "tokenized", keep="ds-1") == []
