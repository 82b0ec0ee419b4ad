"""Masking customer data in ticket text: each kind found becomes a typed placeholder (``[email]``, ...).

Part of text preparation (`retrainer.core.text`), so training and scoring mask alike; the kinds a model
masks are saved in its input recipe. A false positive costs the model a word it could have read, so
each kind is a pattern plus a check, and the ambiguous cases are decided as follows:

- ``secret``: PEM private-key blocks (an unterminated one up to its last base64 line), AWS access key
  ids, JWTs, GitHub and Slack tokens by their format; otherwise a value only after a name that says
  what it is (``Authorization:``, ``Bearer``, ``password=``, ``aws_secret_access_key =``, ...) and only
  when it looks like a credential (a digit in it, or 20 characters or more): ``password: required`` is
  prose. A bare 40-character AWS secret key is not recognised: it reads like a path or a hash.
- ``email``: ``local@domain.tld`` with a letters-only top-level domain (so ``react@18.2.0`` is a
  package version).
- ``card``: 13-19 digits, contiguous or in the printed groups (4-4-4-4, 4-6-5, 4-6-4), with a card
  network's first digits (2, 3, 4, 5, 6: so timestamps and ``2024...`` dates are not) that pass the
  Luhn check. Order numbers, ids and other digit runs are left alone.
- ``ip``: IPv4 with every part at most 255, not inside a longer dotted number, not right after
  ``version``/``v``/``build``/``release``/``==`` or a product name (``Chrome/120.0.0.0``), and not
  0.x, 127.x or 255.x (addresses of no one's machine; 0.x is also how 4-part versions such as 0.9.1.2
  read). A bare ``1.2.3.4`` is masked: it cannot be told from an address. IPv6 as Python's
  ``ipaddress`` reads it, with at least three groups written (``a[1::2]`` and ``fe80::1`` are kept).
- ``phone``: an international number (``+`` and 8-15 digits), a North American one written with
  separators (``(555) 123-4567``, ``555-123-4567``, ``555.123.4567``), or any 7-15 digits right after
  ``phone``/``tel``/``mobile``/``cell``/``fax``. Bare digit runs are never phones: they are order
  numbers, timestamps and ids far more often.

Placeholders match no pattern, so masking twice changes nothing.
"""

import ipaddress
import re
from collections.abc import Callable, Iterable
from typing import Literal, get_args

MaskKind = Literal["secret", "email", "card", "ip", "phone"]
"""A kind of customer data that masking replaces with ``[kind]``."""
MASK_KINDS: tuple[MaskKind, ...] = get_args(MaskKind)
"""Every kind, in the order they are masked: secrets first (a key block holds digit runs and more),
cards before phones and IPs before phones (a number is claimed by its most specific kind)."""

_CREDENTIAL_NAMES = (
    r"(?:aws_?)?secret_?access_?key|aws_?secret_?key|secret_?key|client_?secret|api_?key|apikey"
    r"|access_?token|auth_?token|refresh_?token|password|passwd|pwd|secret|token"
)
_SECRET_FORMATS = re.compile(
    r"-----BEGIN ((?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?)-----"
    r"(?:[\s\S]*?-----END \1-----|(?:\r?\n[A-Za-z0-9+/=]{16,})*)"
    r"|\b(?:AKIA|ASIA|ABIA|ACCA|AGPA|AIDA|AIPA|ANPA|ANVA|AROA|APKA|ASCA)[A-Z0-9]{16}\b"
    r"|\beyJ[A-Za-z0-9_-]+\.eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*"
    r"|\b(?:gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{22,255})\b"
    r"|\bxox[abposr]-[A-Za-z0-9-]{10,}"
)
"""Secrets recognisable by their format alone."""
_NAMED_SECRETS = [
    re.compile(
        r"(?i)\bauthorization[\"']?[ \t]*[:=][ \t]*[\"']?(?:(?:bearer|basic|token|digest|bot)[ \t]+)?"
        r"(?P<secret>[^\s\"',;]+)"
    ),
    re.compile(r"(?i)\bbearer[ \t]+(?P<secret>[A-Za-z0-9._~+/-]+=*)"),
    re.compile(
        rf"(?i)(?<![A-Za-z0-9])(?:{_CREDENTIAL_NAMES})[\"']?[ \t]*[:=][ \t]*[\"']?(?P<secret>[^\s\"'`,;<>]+)"
    ),
    re.compile(r"hooks\.slack\.com/services/(?P<secret>[A-Za-z0-9/_-]+)"),
]
"""Secrets recognised by the name before them; only the group ``secret`` is masked."""

_EMAIL = re.compile(r"(?<![\w.%+-])[A-Za-z0-9._%+-]+@(?:[A-Za-z0-9-]+\.)+[A-Za-z]{2,24}(?![\w-])")

_CARD = re.compile(
    r"(?<![\w.,+-])(?:\d{13,19}|\d{4}([ -])\d{4}\1\d{4}\1\d{4}|\d{4}([ -])\d{6}\2\d{4,5})(?![\w]|[.,]\d)"
)
_CARD_NETWORK = re.compile(r"4|5[1-5]|2[2-7]|3[04-9]|6")
"""First digits of the card networks (Visa, Mastercard, Amex, Diners, JCB, Discover, UnionPay)."""

_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_IPV4 = re.compile(rf"(?<![\w.])(?<!\w/){_OCTET}(?:\.{_OCTET}){{3}}(?![\w]|\.\d)")
_VERSION_BEFORE = re.compile(
    r"(?i)(?:\b(?:version|ver|v|release|build|firmware|fw|rev)\b[ \t:=#]*|[=<>~!]=[ \t]*)$"
)
"""What ends the text before a 4-part version number."""
_NOT_A_HOST = ("0.", "127.", "255.")
_IPV6 = re.compile(r"(?<![\w:.])[0-9A-Fa-f]{0,4}:[0-9A-Fa-f:.]*[0-9A-Fa-f]")

_PHONE_INTERNATIONAL = re.compile(r"(?<![\w+])\+\d++(?:[ .-]?\(\d++\)|[ .-]\d++|(?<=\))\d++){0,6}(?!\w)")
_PHONE_NORTH_AMERICAN = re.compile(
    r"(?<![\w+.-])(?:\([2-9]\d\d\)[ ]?[2-9]\d\d[-. ]|[2-9]\d\d([-.])[2-9]\d\d\1)\d{4}(?![\w]|[.-]\d)"
)
_PHONE_NAMED = re.compile(
    r"(?i)\b(?:phone|telephone|tel|mobile|mob|cell|fax|whatsapp)\b\.?[ \t]*"
    r"(?:no\.?|number|#)?[ \t]*[:=]?[ \t]*"
    r"(?P<phone>\+?\(?\d[\d ()./-]{5,22}\d)(?!\w)"
)


def mask_text(text: str, kinds: Iterable[MaskKind] = MASK_KINDS) -> str:
    """`text` with every `kinds` of customer data replaced by its placeholder (``[email]``, ...)."""
    kinds = set(kinds)
    for kind in MASK_KINDS:
        if kind in kinds:
            text = _MASKERS[kind](text)
    return text


def mask_secrets(text: str) -> str:
    """Private-key blocks, cloud and service tokens, and credentials after their name, as ``[secret]``."""
    text = _SECRET_FORMATS.sub("[secret]", text)
    for pattern in _NAMED_SECRETS:
        text = pattern.sub(lambda match: _masked_group(match, "secret", _looks_like_credential), text)
    return text


def _looks_like_credential(value: str) -> bool:
    # Words after "token:" or "password=" are often prose or placeholders ("required", "None"), and
    # short numbers ("token: 5 minutes") are not credentials.
    return len(value) >= 20 or (len(value) >= 6 and any(character.isdigit() for character in value))


def _masked_group(match: re.Match, group: str, check: Callable[[str], bool]) -> str:
    """The match with its `group` replaced by ``[group]`` when `check` accepts the group's text."""
    if not check(match.group(group)):
        return match.group()
    start, end = match.span(group)
    whole = match.string
    return f"{whole[match.start() : start]}[{group}]{whole[end : match.end()]}"


def mask_emails(text: str) -> str:
    """E-mail addresses as ``[email]``."""
    return _EMAIL.sub("[email]", text) if "@" in text else text


def mask_cards(text: str) -> str:
    """Card numbers (a network's first digits and a valid Luhn check digit) as ``[card]``."""
    return _CARD.sub(lambda match: "[card]" if is_card_number(match.group()) else match.group(), text)


def is_card_number(number: str) -> bool:
    """Whether `number` (digits, maybe grouped by spaces or dashes) reads as a payment card's."""
    digits = re.sub(r"[ -]", "", number)
    return 13 <= len(digits) <= 19 and bool(_CARD_NETWORK.match(digits)) and luhn_valid(digits)


def luhn_valid(digits: str) -> bool:
    """The Luhn check that every card number's last digit satisfies."""
    total = 0
    for position, digit in enumerate(reversed(digits)):
        value = int(digit) * (2 if position % 2 else 1)
        total += value - 9 if value > 9 else value
    return total % 10 == 0


def mask_ips(text: str) -> str:
    """IPv6 and IPv4 addresses as ``[ip]``, versions and addresses of no one's machine left alone."""
    if ":" in text:
        text = _IPV6.sub(lambda match: "[ip]" if _is_ipv6_address(match.group()) else match.group(), text)
    return _IPV4.sub(_masked_ipv4, text) if "." in text else text


def _masked_ipv4(match: re.Match) -> str:
    address = match.group()
    before = match.string[max(0, match.start() - 24) : match.start()]
    if address.startswith(_NOT_A_HOST) or _VERSION_BEFORE.search(before):
        return address
    return "[ip]"


def _is_ipv6_address(candidate: str) -> bool:
    try:
        ipaddress.IPv6Address(candidate)
    except ValueError:
        return False
    return len([group for group in candidate.split(":") if group]) >= 3


def mask_phones(text: str) -> str:
    """Phone numbers as ``[phone]``: international, North American with separators, or after a label."""
    if not any(character.isdigit() for character in text):
        return text
    text = _PHONE_INTERNATIONAL.sub(
        lambda match: "[phone]" if _phone_digits(match.group()) else match.group(), text
    )
    text = _PHONE_NORTH_AMERICAN.sub("[phone]", text)
    return _PHONE_NAMED.sub(lambda match: _masked_group(match, "phone", _phone_digits), text)


def _phone_digits(number: str) -> bool:
    """Whether `number` holds as many digits as a phone number does (7-15; 8-15 with a country code)."""
    count = sum(character.isdigit() for character in number)
    return (8 if number.startswith("+") else 7) <= count <= 15


_MASKERS: dict[MaskKind, Callable[[str], str]] = {
    "secret": mask_secrets,
    "email": mask_emails,
    "card": mask_cards,
    "ip": mask_ips,
    "phone": mask_phones,
}
