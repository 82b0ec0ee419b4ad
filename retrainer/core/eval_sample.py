"""A bounded eval set: once the eval split passes a size, both models are scored on a stratified sample.

The sample always holds every eval ticket new in this run (the gate's new-data figures and the label
check read them), and fills the rest of the bound with the other eval tickets, per label in proportion
to the label's share of them (largest remainders): those whose ticket id hashes lowest (SHA-256). The
draw depends on the ids alone, so it is the same for both models, a rerun draws it again, and it stays
the same night after night but for the tickets new since: a champion's predictions stored the night it
was the challenger cover tonight's sample, and it is scored only on what is new to it
(`retrainer.core.known_predictions`). `salt` draws another sample (the decision simulation uses it).
"""

import hashlib

import numpy as np
import pandas as pd
from pydantic import BaseModel, Field


class EvalSampling(BaseModel):
    """How the eval set was bounded (recorded with the run)."""

    eval_tickets: int = Field(description="the eval split's tickets")
    scored: int = Field(description="tickets both models were scored on")
    new: int = Field(description="of them, new in this run (always all of those)")
    max_tickets: int

    @property
    def sampled(self) -> bool:
        """Whether the eval set was bounded (fewer scored than the split holds)."""
        return self.scored < self.eval_tickets


def bounded_eval(
    eval_rows: pd.DataFrame, new_rows: list[bool], max_tickets: int, salt: str = ""
) -> tuple[pd.DataFrame, list[bool], EvalSampling]:
    """The eval rows to score (all of them when within `max_tickets`), their new-row flags, and how they
    were chosen. Rows keep their order in `eval_rows`."""
    is_new = np.asarray(new_rows, dtype=bool)
    sampling = EvalSampling(
        eval_tickets=len(eval_rows), scored=len(eval_rows), new=int(is_new.sum()), max_tickets=max_tickets
    )
    if len(eval_rows) <= max_tickets:
        return eval_rows, list(new_rows), sampling
    others = eval_rows[~is_new]
    room = max(max_tickets - int(is_new.sum()), 0)
    chosen = is_new.copy()
    positions = np.flatnonzero(~is_new)
    rank = _id_hashes(others["ticket_id"], salt)
    for label, count in _quotas(others["label"], room).items():
        of_label = np.flatnonzero((others["label"] == label).to_numpy())
        lowest = of_label[np.argsort(rank[of_label], kind="stable")[:count]]
        chosen[positions[lowest]] = True
    sample = eval_rows[chosen]
    kept_new = [flag for flag, keep in zip(new_rows, chosen, strict=True) if keep]
    return sample, kept_new, sampling.model_copy(update={"scored": len(sample)})


def _id_hashes(ticket_ids: pd.Series, salt: str) -> np.ndarray:
    """Each id's place in the draw: the first 8 bytes of the SHA-256 of `salt` and the id."""
    digests = (hashlib.sha256(f"{salt}{ticket_id}".encode()).digest()[:8] for ticket_id in ticket_ids)
    return np.array([int.from_bytes(digest, "big") for digest in digests], dtype=np.uint64)


def _quotas(labels: pd.Series, room: int) -> dict[str, int]:
    """`room` places shared among the labels in proportion to their counts (largest remainders)."""
    counts = labels.value_counts().sort_index()
    exact = counts / counts.sum() * room
    quotas = np.floor(exact).astype(int)
    remainders = (exact - quotas).sort_values(ascending=False, kind="stable")
    for label in remainders.index[: room - int(quotas.sum())]:
        quotas[label] += 1
    return {label: int(min(quota, counts[label])) for label, quota in quotas.items() if quota}
