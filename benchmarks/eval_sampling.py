"""The bounded eval set against the full eval split: does the gate decide the same on the sample?

A simulated night: an eval split of `--eval-tickets` tickets (bug / feature_request / general_inquiry,
an uneven mix) from many earlier batches, `--new` of them from tonight's batch; a champion of accuracy
~0.85 (per-class recall 0.88 / 0.84 / 0.79) whose per-ticket predictions are drawn once; and, per
scenario, challengers whose true accuracy (or one class's recall) differs from the champion's by a set
amount, their errors correlated with the champion's as a fine-tune's are: on a share `--churn` of the
tickets exactly one of two equally good models is right, and a better (worse) challenger gets that
many more (fewer) right on top; when both are wrong they mostly say the same wrong label.

Each challenger draw is gated twice through the product's own functions, as `flows/retrain.py
score_both` does it: `bounded_eval` (the full split when within the bound, else every new eval ticket
plus, per label, the others whose id hashes lowest), `rows_from_sources` for the new and the
established rows, `evaluate_predictions` for both models, the champion's label agreement
(`measure_agreement`, on the eval tickets), and `decide_promotion` with the default `GatePolicy` (or
`--require-significance`): once on the full split (`max_eval_tickets` = the split) and once per
sample (`--samples` of them, the same for every draw and scenario: `bounded_eval`'s `salt`, here a
dataset-version-shaped string, draws another) of `--max-eval-tickets`. Every (draw, version) pair is
one comparison of the two decisions. Which check caused a disagreement is read from the gate's own
reasons (the checks that block on one side only).

The gate's compute is timed per decision (bounded_eval, both evaluations, the label agreement, the
decision); scoring the models' texts is not simulated (its cost scales with the tickets scored).

    .venv/bin/python benchmarks/eval_sampling.py [--eval-tickets 200000 --max-eval-tickets 50000
        --trials 1 --samples 6 --churn 0.03 --workers 2 --seed 0 --scenarios 3,9 --out FILE.json]
    .venv/bin/python benchmarks/eval_sampling.py --report PART.json ...   # runs made in parts, merged

Each draw's randomness is keyed by the seed, the scenario and the draw, and the samples by the seed and
their index, so runs of the same night in parts (`--scenarios`) merge into the figures of one run.
Results and the trade: docs/experiments/2026-12-06-bounded-eval.md.
"""

import argparse
import hashlib
import json
import multiprocessing
import time
from collections import Counter
from dataclasses import dataclass

import numpy as np
import pandas as pd

from retrainer.core.agreement import LabelAgreement, measure_agreement
from retrainer.core.eval_sample import EvalSampling, bounded_eval
from retrainer.core.evaluation import ModelEvaluation
from retrainer.core.gate import Decision, decide_promotion
from retrainer.core.labels import LABEL_TO_ID, LABELS
from retrainer.core.scoring import evaluate_predictions
from retrainer.settings import GatePolicy
from tasks.dataset import rows_from_sources

MIX = {"bug": 0.5, "feature_request": 0.3, "general_inquiry": 0.2}
"""The eval split's label shares (uneven, as support queues are)."""
CHAMPION_RECALL = {"bug": 0.88, "feature_request": 0.84, "general_inquiry": 0.79}
"""The champion's true per-class recall: accuracy 0.85 with `MIX`."""
SAME_WRONG_LABEL = 0.8
"""When both models are wrong, the chance the challenger says the champion's wrong label."""
BATCH_TICKETS = 1000
"""Eval tickets per earlier batch (source object)."""


@dataclass(frozen=True)
class Scenario:
    """A challenger: its true per-class recall minus the champion's (points of 1.0)."""

    name: str
    recall_deltas: dict[str, float]

    @property
    def accuracy_delta(self) -> float:
        return sum(MIX[label] * delta for label, delta in self.recall_deltas.items())


def uniform(points: float) -> Scenario:
    """A challenger better (worse) by `points` accuracy points on every class alike."""
    return Scenario(f"accuracy {points:+g}", {label: points / 100 for label in LABELS})


def loses_recall(label: str, points: float, gain: float = 1.0) -> Scenario:
    """A challenger `gain` points better overall that loses `points` of recall on `label` (the other
    classes gain enough to make up for it)."""
    others = [other for other in LABELS if other != label]
    rise = (gain / 100 + MIX[label] * points / 100) / sum(MIX[other] for other in others)
    deltas = {other: rise for other in others} | {label: -points / 100}
    return Scenario(f"{gain:+g} overall, {label} recall -{points:g}", deltas)


SCENARIOS = [
    *(uniform(points) for points in (-2, -1, -0.5, 0, 0.25, 0.5, 1, 2)),
    *(loses_recall("general_inquiry", points) for points in (4, 4.8, 5.2, 6)),
]
"""The grid: accuracy differences around the margin (0: strictly better), and a better challenger losing
recall on the smallest class around the guardrail (`max_recall_drop`, 5 points)."""


@dataclass(frozen=True)
class Night:
    """Tonight's eval split and champion, as the flow holds them before `bounded_eval`."""

    rows: pd.DataFrame  # ticket_id, text, label, source_key, source_etag; a RangeIndex
    new_rows: list[bool]  # from tonight's batch (`ingestion.sources`)
    seen: set[tuple[str, str]]  # the champion's training lineage: every earlier batch
    labels: np.ndarray  # label ids, in eval order
    champion: np.ndarray  # the champion's predicted label ids, in eval order


@dataclass(frozen=True)
class EvalView:
    """One eval set (the full split or a sample) with everything in it that does not depend on the
    challenger: computed once per dataset version, as the flow computes it once per run."""

    rows: pd.DataFrame
    positions: np.ndarray  # the rows' places in the full split
    new_rows: list[bool]
    established: list[bool]
    sampling: EvalSampling
    champion: ModelEvaluation
    agreement: LabelAgreement
    seconds: tuple[float, float]  # wall, CPU: bounded_eval, the champion's evaluation and label agreement


@dataclass(frozen=True)
class Gated:
    """One decision of the gate on one eval set."""

    decision: Decision
    challenger: ModelEvaluation
    seconds: tuple[float, float]  # wall, CPU: the view's own included


def make_night(eval_tickets: int, new: int, seed: int) -> Night:
    """An eval split of `eval_tickets` from earlier batches of `BATCH_TICKETS` and `new` from tonight's,
    labels drawn with `MIX`; the champion's predictions drawn with `CHAMPION_RECALL`."""
    rng = np.random.default_rng([seed, 0])
    labels = rng.choice(len(LABELS), size=eval_tickets, p=[MIX[label] for label in LABELS])
    batch = np.arange(eval_tickets) // BATCH_TICKETS
    tonight = np.arange(eval_tickets) >= eval_tickets - new
    keys = np.where(tonight, "batches/tonight.jsonl", np.char.add("batches/night-", batch.astype(str)))
    etags = np.where(tonight, "etag-tonight", np.char.add("etag-", batch.astype(str)))
    rows = pd.DataFrame(
        {
            "ticket_id": [f"T-{index}" for index in range(eval_tickets)],
            "text": "",  # not read: the predictions are simulated
            "label": np.asarray(LABELS)[labels],
            "source_key": keys,
            "source_etag": etags,
        }
    )
    sources = set(zip(keys.tolist(), etags.tolist(), strict=True))
    tonight_sources = {("batches/tonight.jsonl", "etag-tonight")}
    recall = np.array([CHAMPION_RECALL[label] for label in LABELS])[labels]
    champion = np.where(rng.random(eval_tickets) < recall, labels, _wrong(labels, rng))
    return Night(
        rows=rows,
        new_rows=rows_from_sources(rows, tonight_sources),
        seen=sources - tonight_sources,
        labels=labels,
        champion=champion,
    )


def _wrong(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A wrong label for each ticket, the other labels equally likely."""
    return (labels + rng.integers(1, len(LABELS), size=len(labels))) % len(LABELS)


def draw_challenger(night: Night, scenario: Scenario, churn: float, rng: np.random.Generator) -> np.ndarray:
    """A challenger's predicted label ids: per class, `churn`/2 of the tickets are right for the champion
    only and as many for the challenger only, plus the scenario's recall difference on the side it
    favours; the other tickets are right (wrong) for both."""
    champion_right = night.champion == night.labels
    right = np.empty(len(night.labels), dtype=bool)
    for label_id, label in enumerate(LABELS):
        delta, recall = scenario.recall_deltas[label], CHAMPION_RECALL[label]
        only_champion, only_challenger = churn / 2 + max(-delta, 0.0), churn / 2 + max(delta, 0.0)
        if only_champion > recall or only_challenger > 1 - recall:
            raise ValueError(f"{scenario.name}: churn {churn} and delta {delta} do not fit recall {recall}")
        of_label = night.labels == label_id
        chance = np.where(champion_right, 1 - only_champion / recall, only_challenger / (1 - recall))
        right[of_label] = rng.random(int(of_label.sum())) < chance[of_label]
    both_wrong = ~right & ~champion_right
    wrong = np.where(
        both_wrong & (rng.random(len(right)) < SAME_WRONG_LABEL), night.champion, _wrong(night.labels, rng)
    )
    return np.where(right, night.labels, wrong)


def eval_view(night: Night, max_tickets: int, dataset_version: str) -> EvalView:
    """The eval set the flow would score for `dataset_version` (`score_both`: `bounded_eval`, then the
    established rows and the champion's side: its evaluation and label agreement)."""
    started = _clocks()
    rows, new_rows, sampling = bounded_eval(night.rows, night.new_rows, max_tickets, dataset_version)
    established = rows_from_sources(rows, night.seen)
    positions = rows.index.to_numpy()
    champion = evaluate_predictions(night.champion[positions].tolist(), rows, new_rows, established)
    agreement = champion_agreement(champion, rows, established)
    return EvalView(rows, positions, new_rows, established, sampling, champion, agreement, _since(started))


def _clocks() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _since(started: tuple[float, float], plus: tuple[float, float] = (0.0, 0.0)) -> tuple[float, float]:
    """Wall and CPU seconds since `started`, plus `plus`."""
    return tuple(now - then + extra for now, then, extra in zip(_clocks(), started, plus, strict=True))


def champion_agreement(
    champion: ModelEvaluation, rows: pd.DataFrame, established: list[bool]
) -> LabelAgreement:
    """The champion's label agreement on the eval rows, as `tasks.evaluate.champion_label_agreement`
    measures it (new to it: not from its lineage), without the new tickets outside the eval split: those
    are the same whether the eval set is sampled or not."""
    is_new = ~np.asarray(established, dtype=bool)
    predicted = np.asarray(champion.predicted)
    labels = np.array([LABEL_TO_ID[label] for label in rows["label"]])
    return measure_agreement(
        new_predicted=predicted[is_new].tolist(),
        new_labels=labels[is_new].tolist(),
        new_sources=rows["source_key"].to_numpy()[is_new].tolist(),
        established_predicted=predicted[~is_new].tolist(),
        established_labels=labels[~is_new].tolist(),
    )


def gate(view: EvalView, challenger: np.ndarray, policy: GatePolicy) -> Gated:
    """The gate's decision on `view` for the challenger's predictions (`challenger`, full split order)."""
    started = _clocks()
    evaluation = evaluate_predictions(
        challenger[view.positions].tolist(), view.rows, view.new_rows, view.established
    )
    decision = decide_promotion(evaluation, view.champion, policy, None, view.agreement)
    return Gated(decision, evaluation, _since(started, view.seconds))


def checks(decision: Decision) -> dict[str, tuple[bool, bool]]:
    """Check -> (blocks the promotion, its verdict), read from the gate's reasons: `margin` (accuracy),
    `recall <label>` (guardrail), `McNemar` (verdict: significant; blocks only when enforced),
    `established` (the established eval tickets), `label check`."""
    found: dict[str, tuple[bool, bool]] = {}
    for reason in decision.reasons:
        if reason.startswith("accuracy:"):
            passed = "does not beat" not in reason
            found["margin"] = (not passed, passed)
        elif reason.startswith("recall["):
            label = reason[len("recall[") : reason.index("]")]
            passed = "EXCEEDS" not in reason
            found[f"recall {label}"] = (not passed, passed)
        elif reason.startswith("McNemar"):
            significant = "not significant" not in reason
            found["McNemar"] = (not significant and "; enforced)" in reason, significant)
        elif reason.startswith("established eval tickets"):
            passed = "EXCEEDS" not in reason
            found["established"] = (not passed, passed)
        elif reason.startswith("label"):
            blocks = "EXCEEDS" in reason or found.get("label check", (False, True))[0]
            found["label check"] = (blocks, not blocks)
    return found


def figures(gated: Gated) -> dict:
    """The decision and the figures its checks compared."""
    decision = gated.decision
    return {
        "promote": decision.promote,
        "blocked_by": sorted(name for name, (blocks, _) in checks(decision).items() if blocks),
        "mcnemar_significant": checks(decision)["McNemar"][1],
        "accuracy_delta": decision.accuracy_delta,
        "recall_deltas": decision.recall_deltas,
        "p_value": decision.p_value,
        "seconds": gated.seconds[0],
        "cpu_seconds": gated.seconds[1],
    }


def dataset_versions(count: int, seed: int) -> list[str]:
    """`count` dataset version ids shaped as the flow's (`ds-<stamp>-<hash>`)."""
    return [
        f"ds-20261206T02{index // 60:02d}{index % 60:02d}Z-"
        + hashlib.sha256(f"{seed}/{index}".encode()).hexdigest()[:10]
        for index in range(count)
    ]


# The night and its eval views are built once in the parent; forked workers inherit them.
_SHARED: dict = {}


def run_unit(unit: tuple[int, int]) -> tuple[str, dict, list[dict]]:
    """One challenger draw of one scenario: its decision on the full split and on every sample."""
    scenario_index, draw = unit
    night, full_view, views = _SHARED["night"], _SHARED["full"], _SHARED["views"]
    args, policy = _SHARED["args"], _SHARED["policy"]
    scenario = SCENARIOS[scenario_index]
    rng = np.random.default_rng([args.seed, 1, scenario_index, draw])  # the same whatever else runs
    challenger = draw_challenger(night, scenario, args.churn, rng)
    full = figures(gate(full_view, challenger, policy)) | {"draw": draw}
    comparisons = []
    for version, view in views.items():
        sampled = figures(gate(view, challenger, policy))
        comparisons.append(
            {
                "draw": draw,
                "dataset_version": version,
                "agree": full["promote"] == sampled["promote"],
                "mcnemar_agree": full["mcnemar_significant"] == sampled["mcnemar_significant"],
                "flipped_checks": sorted(set(full["blocked_by"]) ^ set(sampled["blocked_by"])),
                "sampled": sampled,
            }
        )
    return scenario.name, full, comparisons


def simulate(args: argparse.Namespace) -> dict:
    """Every (scenario, draw) of `args`: the raw outcomes (one full decision per draw, one comparison per
    draw and dataset version)."""
    policy = GatePolicy(require_significance=args.require_significance)
    started = _clocks()
    night = make_night(args.eval_tickets, args.new, args.seed)
    evaluate_predictions([0], night.rows[:1], [False])  # loads the metric modules: not timed below
    versions = dataset_versions(args.samples, args.seed)
    full_view = eval_view(night, args.eval_tickets, "ds-full")  # within the bound: every eval ticket
    views = {version: eval_view(night, args.max_eval_tickets, version) for version in versions}
    new_ids = set(night.rows["ticket_id"][night.new_rows])
    for view in views.values():
        assert new_ids <= set(view.rows["ticket_id"]), "a new eval ticket left out of the sample"
    _SHARED.update(night=night, full=full_view, views=views, args=args, policy=policy)
    sample_tickets = next(iter(views.values())).sampling.scored
    print(
        f"night ready in {_since(started)[0]:.1f} s: {args.eval_tickets} eval tickets ({len(new_ids)} new), "
        f"champion accuracy {full_view.champion.overall.accuracy:.4f}; samples of {sample_tickets} for "
        f"{len(views)} dataset versions",
        flush=True,
    )
    chosen = [int(index) for index in args.scenarios.split(",")] if args.scenarios else range(len(SCENARIOS))
    units = [(index, draw) for index in chosen for draw in range(args.trials)]
    outcomes: dict[str, dict] = {SCENARIOS[index].name: {"full": [], "comparisons": []} for index in chosen}
    pool = multiprocessing.get_context("fork").Pool(args.workers) if args.workers > 1 else None
    try:
        results = pool.imap_unordered(run_unit, units) if pool else map(run_unit, units)
        for name, full, comparisons in results:
            outcomes[name]["full"].append(full)
            outcomes[name]["comparisons"].extend(comparisons)
            agree = sum(comparison["agree"] for comparison in comparisons)
            print(
                f"  {name}, draw {full['draw']}: full {'promote' if full['promote'] else 'keep'} "
                f"({full['seconds']:.1f} s), {agree}/{len(comparisons)} samples agree",
                flush=True,
            )
    finally:
        if pool:
            pool.close()
            pool.join()
    for outcome in outcomes.values():
        outcome["full"].sort(key=lambda full: full["draw"])
        outcome["comparisons"].sort(
            key=lambda comparison: (comparison["draw"], comparison["dataset_version"])
        )
    wall, cpu = _since(started)
    return {
        "settings": {key: value for key, value in vars(args).items() if key not in ("out", "report")},
        "policy": policy.model_dump(),
        "champion_accuracy": full_view.champion.overall.accuracy,
        "sample_tickets": sample_tickets,
        "seconds": wall,
        "cpu_seconds_parent": cpu,
        "outcomes": outcomes,
    }


def summary(name: str, outcome: dict) -> dict:
    """One scenario's row, from its raw outcomes."""
    full_of = {full["draw"]: full for full in outcome["full"]}
    comparisons = outcome["comparisons"]
    disagreements = [c | {"full": full_of[c["draw"]]} for c in comparisons if not c["agree"]]
    gaps = [c["sampled"]["accuracy_delta"] - full_of[c["draw"]]["accuracy_delta"] for c in comparisons]
    return {
        "scenario": name,
        "draws": len(full_of),
        "comparisons": len(comparisons),
        "full_promote": sum(full["promote"] for full in full_of.values()),
        "sampled_promote": sum(c["sampled"]["promote"] for c in comparisons),
        "agree": sum(c["agree"] for c in comparisons),
        "mcnemar_agree": sum(c["mcnemar_agree"] for c in comparisons),
        "causes": dict(Counter(" + ".join(c["flipped_checks"]) or "?" for c in disagreements)),
        "sd_gap": float(np.std(gaps)),
        "full_seconds": float(np.mean([full["seconds"] for full in full_of.values()])),
        "sampled_seconds": float(np.mean([c["sampled"]["seconds"] for c in comparisons])),
        "full_cpu": float(np.mean([full["cpu_seconds"] for full in full_of.values()])),
        "sampled_cpu": float(np.mean([c["sampled"]["cpu_seconds"] for c in comparisons])),
        "disagreements": disagreements,
    }


def merged(results: list[dict]) -> tuple[dict, dict[str, dict]]:
    """The outcomes of runs of the same night (the same settings but the scenarios, trials and workers),
    per scenario in `SCENARIOS` order: one run split in parts gives the same figures."""
    same = ("eval_tickets", "new", "max_eval_tickets", "samples", "churn", "require_significance", "seed")
    first = results[0]["settings"]
    for result in results[1:]:
        if any(result["settings"][key] != first[key] for key in same):
            raise SystemExit(f"runs of different nights: {first} vs {result['settings']}")
    outcomes: dict[str, dict] = {}
    for result in results:
        for name, outcome in result["outcomes"].items():
            into = outcomes.setdefault(name, {"full": {}, "comparisons": {}})
            into["full"] |= {full["draw"]: full for full in outcome["full"]}
            into["comparisons"] |= {(c["draw"], c["dataset_version"]): c for c in outcome["comparisons"]}
    order = [scenario.name for scenario in SCENARIOS]
    return first, {
        name: {
            "full": list(outcomes[name]["full"].values()),
            "comparisons": list(outcomes[name]["comparisons"].values()),
        }
        for name in sorted(outcomes, key=order.index)
    }


def print_report(results: list[dict]) -> None:
    settings, outcomes = merged(results)
    policy = GatePolicy(require_significance=settings["require_significance"])
    summaries = [summary(name, outcome) for name, outcome in outcomes.items()]
    rows = []
    for item in summaries:
        draws, comparisons = item["draws"], item["comparisons"]
        rows.append(
            {
                "scenario (points)": item["scenario"],
                "full: promote/keep": f"{item['full_promote']}/{draws - item['full_promote']}",
                "sampled: promote/keep": f"{item['sampled_promote']}/{comparisons - item['sampled_promote']}",
                "agreement": f"{item['agree']}/{comparisons} ({item['agree'] / comparisons:.0%})",
                "disagreements by check": ", ".join(f"{k} {v}" for k, v in item["causes"].items()) or "-",
                "McNemar verdict agrees": f"{item['mcnemar_agree']}/{comparisons}",
                "sd sampled-full delta (pts)": f"{100 * item['sd_gap']:.3f}",
                "gate s full": f"{item['full_seconds']:.1f} ({item['full_cpu']:.1f})",
                "gate s sampled": f"{item['sampled_seconds']:.1f} ({item['sampled_cpu']:.1f})",
            }
        )
    print(
        f"\n{settings['eval_tickets']} eval tickets ({settings['new']} new), samples of "
        f"{results[0]['sample_tickets']}, churn {settings['churn']}, seed {settings['seed']}, "
        f"require_significance {settings['require_significance']}; gate seconds: wall (CPU)"
    )
    print(pd.DataFrame(rows).to_string(index=False))
    total = sum(item["comparisons"] for item in summaries)
    agree = sum(item["agree"] for item in summaries)
    seconds = sum(result["seconds"] for result in results)
    print(f"\nall: {agree}/{total} comparisons agree ({agree / total:.1%}); runs took {seconds:.0f} s")
    print(
        f"\nDisagreements: the full split's figure vs the sample's (the gate: accuracy delta > "
        f"{policy.min_accuracy_gain}, recall delta >= -{policy.max_recall_drop}):"
    )
    for item in summaries:
        for c in item["disagreements"]:
            full, sampled = c["full"], c["sampled"]
            parts = [f"accuracy delta {full['accuracy_delta']:+.5f} vs {sampled['accuracy_delta']:+.5f}"]
            parts += [
                f"recall[{label}] {full['recall_deltas'][label]:+.5f} vs "
                f"{sampled['recall_deltas'][label]:+.5f}"
                for label in LABELS
                if f"recall {label}" in c["flipped_checks"]
            ]
            parts.append(f"McNemar p {full['p_value']:.3g} vs {sampled['p_value']:.3g}")
            verdicts = f"full {_verdict(full)}, sampled {_verdict(sampled)}"
            where = f"{item['scenario']}, draw {c['draw']}, {c['dataset_version']}"
            print(f"  {where}: {verdicts}; {'; '.join(parts)}")


def _verdict(figures_: dict) -> str:
    return "promote" if figures_["promote"] else "keep"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--eval-tickets", type=int, default=200_000, help="the eval split's tickets")
    parser.add_argument("--new", type=int, default=1000, help="of them, new tonight")
    parser.add_argument(
        "--max-eval-tickets",
        type=int,
        default=GatePolicy().max_eval_tickets,
        help="the bound (`gate.max_eval_tickets`; default: the setting's default)",
    )
    parser.add_argument("--trials", type=int, default=1, help="challenger draws per scenario")
    parser.add_argument(
        "--samples", type=int, default=6, help="dataset versions (samples), each draw gated on all"
    )
    parser.add_argument(
        "--churn",
        type=float,
        default=0.03,
        help="share of the tickets exactly one of two equally good models gets right",
    )
    parser.add_argument("--scenarios", help="only these (comma-separated indices into SCENARIOS)")
    parser.add_argument("--require-significance", action="store_true", help="enforce McNemar in the gate")
    parser.add_argument("--workers", type=int, default=2, help="processes (forked)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="write the settings and every outcome as JSON here")
    parser.add_argument("--report", nargs="+", metavar="JSON", help="print the table of earlier --out files")
    args = parser.parse_args()
    if args.report:
        results = []
        for path in args.report:
            with open(path) as file:
                results.append(json.load(file))
        print_report(results)
        return
    result = simulate(args)
    if args.out:
        with open(args.out, "w") as out:
            json.dump(result, out, indent=1)
    print_report([result])


if __name__ == "__main__":
    main()
