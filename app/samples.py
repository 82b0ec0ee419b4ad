"""A seeded generator of realistic short support tickets: the demo's data source.

Tickets are built from phrase templates with varied products, features, platforms and tone, plus a
little deliberate ambiguity (a bug reported as a question, a request phrased as a complaint), so a
classifier has something to learn rather than a keyword to match.
"""

import io
import random
from datetime import UTC, datetime, timedelta

import pandas as pd

from retrainer.core.labels import LABELS

_FEATURES = [
    "CSV export",
    "dark mode",
    "two-factor login",
    "the search bar",
    "invoice PDFs",
    "the mobile app",
    "Slack integration",
    "SSO with Okta",
    "bulk edit",
    "the dashboard",
    "email notifications",
    "the REST API",
    "calendar sync",
    "file attachments",
    "the billing page",
    "user roles",
    "the reporting module",
    "webhooks",
    "password reset",
    "the onboarding wizard",
    "audit logs",
]
_PLATFORMS = [
    "Chrome on Windows 11",
    "Safari on macOS",
    "Firefox",
    "the iOS app",
    "Android 14",
    "Edge",
    "our staging workspace",
    "the desktop client",
    "an iPad",
]
_BUG_TEMPLATES = [
    "{feature} crashes when I click save on {platform}",
    "Getting a 500 error every time I open {feature}",
    "{feature} is broken since yesterday's update, nothing loads",
    "App freezes and then closes when using {feature} on {platform}",
    "Error 'undefined is not a function' in {feature}",
    "{feature} shows the wrong totals, numbers don't add up",
    "Cannot log in after the update, page just spins forever on {platform}",
    "Data disappeared from {feature} after I refreshed the page",
    "{feature} times out with large files and loses my changes",
    "Clicking the button in {feature} does nothing on {platform}",
    "Duplicate entries keep appearing in {feature}",
    "{feature} sends the same email three times",
    "Layout is completely broken in {feature} on {platform}",
    "Why does {feature} crash every time I upload a photo?",
    "Since the last release {feature} throws an exception and logs me out",
]
_FEATURE_TEMPLATES = [
    "Please add {wish} to {feature}",
    "It would be great if {feature} supported {wish}",
    "Feature request: {wish} for {feature}",
    "Could you add an option for {wish}? Our team really needs it",
    "We'd love to see {wish} in {feature}",
    "Any plans to support {wish}? It would save us hours every week",
    "Suggestion: let admins configure {wish} in {feature}",
    "Would be nice to have {wish} on {platform}",
    "Can you make {feature} support {wish}?",
    "It is really annoying that {feature} has no {wish}, please consider adding it",
    "Requesting {wish} so we can roll {feature} out to the whole company",
]
_WISHES = [
    "keyboard shortcuts",
    "a dark theme",
    "scheduled exports",
    "custom fields",
    "bulk delete",
    "filters by date range",
    "multi-language support",
    "an undo button",
    "recurring reminders",
    "granular permissions",
    "a public API endpoint",
    "drag and drop reordering",
    "offline mode",
    "export to Excel",
    "saved searches",
    "per-user notification settings",
    "a weekly digest",
]
_INQUIRY_TEMPLATES = [
    "How do I change the email address on my account?",
    "Where can I find {feature} in the settings?",
    "Is there a way to share {feature} with people outside my team?",
    "What is the difference between the Pro and Business plans?",
    "How do I connect {feature} to our existing tools?",
    "Can I get an invoice for last month's payment?",
    "Does {feature} work on {platform}?",
    "Who do I contact about a refund for an annual subscription?",
    "How many users can we add before we need to upgrade?",
    "Is my data stored in the EU?",
    "What are your support hours on weekends?",
    "How do I invite a colleague to {feature}?",
    "Is there documentation for {feature}? I couldn't find it",
    "Can I transfer ownership of the workspace to another admin?",
    "Do you offer discounts for non-profits?",
]
# Real queues are noisy: some tickets read alike whatever their label (vague reports, mixed asks).
_AMBIGUOUS_TEMPLATES = [
    "{feature} doesn't work the way I expected",
    "Problem with {feature} on {platform}",
    "Question about {feature} and {wish}",
    "{feature} is confusing, can someone help?",
    "Not sure if this is a bug but {feature} has no {wish}",
]
_AMBIGUOUS_SHARE = 0.08
_OPENERS = ["", "", "", "Hi team, ", "Hello, ", "Hey, ", "Quick question: ", "Urgent: ", "FYI: "]
_CONTEXTS = [
    "",
    "Account {n}.",
    "Workspace {n}.",
    "Ticket ref {n}.",
    "Our team has {small} users.",
    "This started {small} days ago.",
    "Order #{n}.",
    "Seen by {small} colleagues.",
]
_CLOSERS = ["", "", "", " Thanks!", " Thank you.", " Any help appreciated.", " Cheers", " :("]
_TEMPLATES = {
    "bug": _BUG_TEMPLATES,
    "feature_request": _FEATURE_TEMPLATES,
    "general_inquiry": _INQUIRY_TEMPLATES,
}


def generate_tickets(
    count: int, *, seed: int, start: datetime | None = None, id_prefix: str = "T"
) -> pd.DataFrame:
    """`count` labeled tickets (ticket_id, text, label, created_at), balanced over the label set.

    The same `seed` always yields the same tickets; `id_prefix` keeps ids of separate batches apart.
    """
    rng = random.Random(seed)
    start = start or datetime(2026, 1, 1, tzinfo=UTC)
    rows, seen = [], set()
    for index in range(count):
        label = LABELS[index % len(LABELS)]
        text = _ticket_text(rng, label)
        while text in seen:  # real queues rarely hold two identical tickets; validation rejects them
            text = _ticket_text(rng, label)
        seen.add(text)
        rows.append(
            {
                "ticket_id": f"{id_prefix}-{seed}-{index:06d}",
                "text": text,
                "label": label,
                "created_at": (start + timedelta(minutes=rng.randint(0, 60 * 24 * 30))).isoformat(),
            }
        )
    rng.shuffle(rows)
    return pd.DataFrame(rows, columns=["ticket_id", "text", "label", "created_at"])


def tickets_to_csv(tickets: pd.DataFrame) -> bytes:
    """Serialise tickets as a UTF-8 CSV batch file, the format producers drop into ``incoming/``."""
    buffer = io.StringIO()
    tickets.to_csv(buffer, index=False)
    return buffer.getvalue().encode("utf-8")


def _ticket_text(rng: random.Random, label: str) -> str:
    templates = _AMBIGUOUS_TEMPLATES if rng.random() < _AMBIGUOUS_SHARE else _TEMPLATES[label]
    template = rng.choice(templates)
    body = template.format(
        feature=rng.choice(_FEATURES), platform=rng.choice(_PLATFORMS), wish=rng.choice(_WISHES)
    )
    context = rng.choice(_CONTEXTS).format(n=rng.randint(1000, 99999), small=rng.randint(2, 40))
    text = f"{rng.choice(_OPENERS)}{body[0].upper()}{body[1:]}{rng.choice(_CLOSERS)}"
    return f"{text} {context}".strip()
