"""Masking customer data in ticket text: each kind found becomes a typed placeholder (``[email]``, ...).

Part of text preparation (`retrainer.core.text`), so training and scoring mask alike; the kinds a model
masks are saved in its input recipe. A false positive costs the model a word it could have read, so
each kind is a pattern plus a check, and the ambiguous cases are decided as follows:

- ``secret``: PEM private-key blocks (an unterminated one up to its last base64 line), AWS access key
  ids, JWTs, GitHub and Slack tokens by their format; otherwise a value only after a name that says
  what it is (``Authorization:``, ``Bearer``, ``password=``, ``aws_secret_access_key =``, ...) and only
  when it looks like a credential (a digit in it, or 20 characters or more): ``password: required`` is
  prose. A bare 40-character AWS secret key is not recognised: it reads like a path or a hash.
- ``email``: ``local@domain.tld`` ending in a country's two letters or a common generic domain (so
  ``react@18.2.0`` is a package version and ``Transpose@ai.onnx`` an ONNX operator).
- ``card``: 13-19 digits, contiguous or in the printed groups (4-4-4-4, 4-6-5, 4-6-4), not after
  ``/`` (a link's path), with the first digits and the length of a card network's numbers (so
  timestamps, ``2024...`` dates and a 14-digit number starting with 4 are not) and a valid Luhn check
  digit. Order numbers, ids and other digit runs are left alone.
- ``ip``: IPv4 with every part at most 255, not inside a longer dotted number, not right after
  ``version``/``v``/``build``/``release``/``==``/``=>`` or a product name (``Chrome/120.0.0.0``), not
  before a ``-suffix`` (``5.15.90.1-microsoft``), and not 0.x, 127.x or 255.x (addresses of no one's
  machine; 0.x is also how 4-part versions such as 0.9.1.2 read). A bare ``1.2.3.4`` is masked: it
  cannot be told from an address, so a version after a bare name (``cuDNN 8.6.0.163``, as ``pip
  list`` prints them) is masked too. IPv6 as Python's ``ipaddress`` reads it, with at least three
  groups written (``a[1::2]`` and ``fe80::1`` are kept).
- ``iban``: an International Bank Account Number (a country's two letters, two check digits, the
  account, maybe grouped by spaces) that `python-stdnum` accepts: the country's length and format and
  the mod-97 check digits, so a part number that only looks like one stays.
- ``phone``: decided by Google's numbering plans (`phonenumbers`) on a number written as phone numbers
  are: with a ``+`` country code (a length that country's numbers can have); North American with
  separators (``(555) 123-4567``, ``555-123-4567``, ``555.123.4567``); national with a trunk ``0`` and
  a space, slash or dash after the area code (``(030) 1234567``, ``0171 2345678``, ``0151/12345678``)
  that is a valid number in one of the countries dialling that way; or any 7-15 digits right after
  ``phone``/``tel``/``mobile``/``cell``/``fax``. Bare digit runs are never phones: they are order
  numbers, timestamps and ids far more often; nor are dotted ones (``07.064824``: log timestamps).

Placeholders match no pattern, so masking twice changes nothing.
"""

import ipaddress
import re
from collections.abc import Callable, Iterable
from functools import cache, lru_cache
from typing import Literal, get_args

import phonenumbers
from stdnum import iban

MaskKind = Literal["secret", "email", "iban", "card", "ip", "phone"]
"""A kind of customer data that masking replaces with ``[kind]``."""
MASK_KINDS: tuple[MaskKind, ...] = get_args(MaskKind)
"""Every kind, in the order they are masked: secrets first (a key block holds digit runs and more),
IBANs before cards (an IBAN's digits can pass a card's Luhn check), cards and IPs before phones (a
number is claimed by its most specific kind)."""

_Replacement = str | Callable[[re.Match], str]
_Hint = re.Pattern | tuple[str, ...]
"""What a text must hold before a pattern is tried: a match of a cheap pattern (a literal, or one that
starts with a digit), or one of these words in its lower-cased text. Most tickets hold none, and the
search for a hint is many times faster than the pattern's own lookarounds and alternatives."""
_Rule = tuple[_Hint, re.Pattern, _Replacement]


def _rule(hint: _Hint | str, pattern: str, replacement: _Replacement) -> _Rule:
    return (re.compile(hint) if isinstance(hint, str) else hint, re.compile(pattern), replacement)


def _apply(rules: list[_Rule], text: str) -> str:
    """`text` after each rule whose hint it holds."""
    lowered = None
    for hint, pattern, replacement in rules:
        if isinstance(hint, tuple):
            # Lower-cased once: the rules before only put placeholders in, which no pattern needs to
            # see, so the words of the text as it was are still the words a later rule can match.
            lowered = text.lower() if lowered is None else lowered
            if not any(word in lowered for word in hint):
                continue
        elif not hint.search(text):
            continue
        text = pattern.sub(replacement, text)
    return text


def _masked_group(group: str, check: Callable[[str], bool]) -> Callable[[re.Match], str]:
    """A replacement that masks a match's `group` as ``[group]`` when `check` accepts its text."""

    def replace(match: re.Match) -> str:
        if not check(match.group(group)):
            return match.group()
        start, end = match.span(group)
        whole = match.string
        return f"{whole[match.start() : start]}[{group}]{whole[end : match.end()]}"

    return replace


def _looks_like_credential(value: str) -> bool:
    # Words after "token:" or "password=" are often prose or placeholders ("required", "None"), and
    # short numbers ("token: 5 minutes") are not credentials.
    return len(value) >= 20 or (len(value) >= 6 and any(character.isdigit() for character in value))


_CREDENTIAL_NAMES = (
    r"(?:aws_?)?secret_?access_?key|aws_?secret_?key|secret_?key|client_?secret|api_?key|apikey"
    r"|access_?token|auth_?token|refresh_?token|password|passwd|pwd|secret|token"
)
_NAMED_SECRET = _masked_group("secret", _looks_like_credential)
_SECRET_RULES = [
    # by their format alone
    _rule(
        "-----BEGIN ",
        r"-----BEGIN ((?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?)-----"
        r"(?:[\s\S]*?-----END \1-----|(?:\r?\n[A-Za-z0-9+/=]{16,})*)",
        "[secret]",
    ),
    _rule(
        "A(?:KIA|SIA|BIA|CCA|GPA|IDA|IPA|NPA|NVA|ROA|PKA|SCA)",
        r"\b(?:AKIA|ASIA|ABIA|ACCA|AGPA|AIDA|AIPA|ANPA|ANVA|AROA|APKA|ASCA)[A-Z0-9]{16}\b",
        "[secret]",
    ),
    _rule("eyJ", r"\beyJ[A-Za-z0-9_-]+\.eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*", "[secret]"),
    _rule(
        "gh[pousr]_|github_pat_",
        r"\b(?:gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{22,255})\b",
        "[secret]",
    ),
    _rule("xox", r"\bxox[abposr]-[A-Za-z0-9-]{10,}", "[secret]"),
    # by the name before them: only the value is masked
    _rule(
        ("authorization",),
        r"(?i)\bauthorization[\"']?[ \t]*[:=][ \t]*[\"']?(?:(?:bearer|basic|token|digest|bot)[ \t]+)?"
        r"(?P<secret>[^\s\"',;]+)",
        _NAMED_SECRET,
    ),
    _rule(("bearer",), r"(?i)\bbearer[ \t]+(?P<secret>[A-Za-z0-9._~+/-]+=*)", _NAMED_SECRET),
    _rule(
        ("secret", "key", "token", "pass", "pwd"),
        rf"(?i)(?<![A-Za-z0-9])(?:{_CREDENTIAL_NAMES})[\"']?[ \t]*[:=][ \t]*[\"']?"
        r"(?P<secret>[^\s\"'`,;<>]+)",
        _NAMED_SECRET,
    ),
    _rule("hooks", r"hooks\.slack\.com/services/(?P<secret>[A-Za-z0-9/_-]+)", _NAMED_SECRET),
]

_GENERIC_TOP_LEVEL_DOMAINS = (
    "com|org|net|edu|gov|mil|int|info|biz|name|pro|io|ai|app|dev|cloud|tech|online|site|store|shop|"
    "email|xyz|club|design|digital|agency|company|consulting|solutions|services|group|global|team|"
    "works|media|network|systems|software|studio|life|live|world|health|bank|finance|law|museum|aero|"
    "coop|jobs|mobi|travel|tel"
)
_EMAIL_RULES = [
    _rule(
        "@",
        r"(?<![\w.%+-])[A-Za-z0-9._%+-]+@(?:[A-Za-z0-9-]+\.)+"
        rf"(?i:[a-z]{{2}}|{_GENERIC_TOP_LEVEL_DOMAINS})(?![\w-])",
        "[email]",
    ),
]
"""An address ends in a country's two letters or a common generic domain (``Transpose@ai.onnx``, an
ONNX operator, does not)."""

_CARD_NETWORKS = re.compile(
    r"4(?:\d{12}|\d{15}|\d{18})"  # Visa: 13, 16 or 19 digits
    r"|(?:5[1-5]|2[2-7])\d{14}"  # Mastercard: 16
    r"|3[47]\d{13}"  # American Express: 15
    r"|3(?:0[0-5]\d{11,16}|[5689]\d{12,17})"  # Diners Club, JCB: 14-19
    r"|6\d{15,18}"  # Discover, UnionPay, Maestro: 16-19
)
"""The first digits and lengths of the card networks' numbers (so a 14-digit number starting with 4,
which no Visa card has, is not masked)."""


def is_card_number(number: str) -> bool:
    """Whether `number` (digits, maybe grouped by spaces or dashes) reads as a payment card's."""
    digits = re.sub(r"[ -]", "", number)
    return bool(_CARD_NETWORKS.fullmatch(digits)) and luhn_valid(digits)


def luhn_valid(digits: str) -> bool:
    """The Luhn check that every card number's last digit satisfies."""
    total = 0
    for position, digit in enumerate(reversed(digits)):
        value = int(digit) * (2 if position % 2 else 1)
        total += value - 9 if value > 9 else value
    return total % 10 == 0


_CARD_RULES = [
    _rule(
        r"\d{4}[ -]?\d{4}",
        # not after "/": digits in a link's path are ids
        r"(?<![\w.,+/-])(?:\d{13,19}|\d{4}([ -])\d{4}\1\d{4}\1\d{4}|\d{4}([ -])\d{6}\2\d{4,5})"
        r"(?![\w]|[.,]\d)",
        lambda match: "[card]" if is_card_number(match.group()) else match.group(),
    ),
]

_VERSION_BEFORE = re.compile(
    r"(?i)(?:\b(?:version|ver|v|release|build|firmware|fw|rev)\b[ \t:=#\"']*|(?:[=<>~!]=|=>)[ \t]*)$"
)
"""What ends the text before a 4-part version number: ``version "1.10.0.1"``, ``foo==1.2.3.4``,
``OpenCV => 4.5.5.64``."""
_NOT_A_HOST = ("0.", "127.", "255.")
"""How IPv4 addresses of no one's machine start: this network, loopback, masks and broadcast."""
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"


def _masked_ipv4(match: re.Match) -> str:
    """``[ip]``, unless the dotted number is a version or no one's address."""
    address = match.group()
    before = match.string[max(0, match.start() - 24) : match.start()]
    if address.startswith(_NOT_A_HOST) or _VERSION_BEFORE.search(before):
        return address
    return "[ip]"


def _masked_ipv6(match: re.Match) -> str:
    """``[ip]`` for an IPv6 address of three groups or more (``1::2`` is a slice more often)."""
    candidate = match.group()
    try:
        ipaddress.IPv6Address(candidate)
    except ValueError:
        return candidate
    return "[ip]" if len([group for group in candidate.split(":") if group]) >= 3 else candidate


_IP_RULES = [
    _rule(":[0-9A-Fa-f]{0,4}:", r"(?<![\w:.])[0-9A-Fa-f]{0,4}:[0-9A-Fa-f:.]*[0-9A-Fa-f]", _masked_ipv6),
    _rule(
        r"\d\.\d{1,3}\.\d{1,3}\.\d",
        rf"(?<![\w.])(?<!\w/){_OCTET}(?:\.{_OCTET}){{3}}(?![\w]|\.\d|-[A-Za-z])",  # 5.15.90.1-microsoft
        _masked_ipv4,
    ),
]


_IBAN_RULES = [
    _rule(
        r"[A-Za-z]{2}\d\d",
        r"(?<![\w-])[A-Za-z]{2}\d\d(?:[ ]?[A-Za-z0-9]{4}){2,7}(?:[ ]?[A-Za-z0-9]{1,3})?(?![\w-])",
        lambda match: "[iban]" if iban.is_valid(match.group().upper()) else match.group(),
    ),
]


def _phone_digits(number: str) -> bool:
    """Whether `number` holds as many digits as a phone number does (7-15; 8-15 with a country code)."""
    count = sum(character.isdigit() for character in number)
    return (8 if number.startswith("+") else 7) <= count <= 15


def _possible_phone(number: str, region: str | None) -> bool:
    """Whether `number` has a length the numbering plan allows (`region` None: it starts with ``+``)."""
    try:
        return phonenumbers.is_possible_number(phonenumbers.parse(number, region))
    except phonenumbers.NumberParseException:
        return False


@cache
def trunk_zero_regions() -> tuple[str, ...]:
    """The regions whose national numbers are dialled with a leading ``0`` (Germany, the UK, France, ...)."""
    return tuple(
        region
        for region in sorted(phonenumbers.SUPPORTED_REGIONS)
        if getattr(phonenumbers.PhoneMetadata.metadata_for_region(region), "national_prefix", None) == "0"
    )


def _written_like_a_national_phone(number: str) -> bool:
    """Whether `number` is grouped as national phone numbers are, not as dates, times and hex dumps.

    8 digits or more; a dash only before groups of three digits or more (``023-08-14`` is a date and
    ``09-52-40`` a time); pairs alone only as five of them (the French ``01 42 68 53 00``, not the
    ``01 00 00 00`` of a hex dump); and not zeros after the area code.
    """
    groups = re.findall(r"\d+", number)
    after_area_code = groups[1:]
    if sum(map(len, groups)) < 8 or not "".join(after_area_code).strip("0"):
        return False
    if "-" in number and any(len(group) < 3 for group in after_area_code):
        return False
    return not (all(len(group) == 2 for group in groups) and len(groups) != 5)


@lru_cache(maxsize=4096)
def _national_phone(number: str) -> bool:
    """Whether `number`, dialled with ``00`` and a country code or with a trunk ``0``, is grouped like a
    phone number and a valid one: in that country, or in a country that dials a trunk ``0``.

    Cached: logs repeat their numbers, and a number no country has costs a parse per such country.
    """
    if not _written_like_a_national_phone(number):
        return False
    international = re.sub(r"^\(?00", "+", number)
    if international != number:
        return _valid_phone(international.replace(")", "", 1), None)
    return any(_valid_phone(number, region) for region in trunk_zero_regions())


def _valid_phone(number: str, region: str | None) -> bool:
    try:
        return phonenumbers.is_valid_number(phonenumbers.parse(number, region))
    except phonenumbers.NumberParseException:
        return False


_PHONE_RULES = [
    _rule(
        r"\+\d",
        r"(?<![\w+])\+\d++(?:[ .-]?\(\d++\)|[ .-]\d++|(?<=\))\d++){0,6}(?!\w)",
        lambda match: "[phone]" if _possible_phone(match.group(), None) else match.group(),
    ),
    _rule(
        r"\d{3}(?:[-.]\d{3}[-.]\d|\))",
        r"(?<![\w+.-])(?:\([2-9]\d\d\)[ ]?[2-9]\d\d[-. ]|[2-9]\d\d([-.])[2-9]\d\d\1)\d{4}(?![\w]|[.-]\d)",
        lambda match: "[phone]" if _possible_phone(match.group(), "US") else match.group(),
    ),
    _rule(
        r"(?<![\w.])\(?0\d{1,5}\)?[ /-]\d\d",
        # a trunk 0 and the area code, or 00 and a country code: "00" alone is a hex dump's byte
        r"(?<![\w.+/:-])(?:\(00?[1-9]\d{0,4}\)[ ]?|00?[1-9]\d{0,4}[ /-])\d{2,}(?:[ -]\d{2,}){0,3}"
        r"(?![\w]|[.:/-]\d)",
        lambda match: "[phone]" if _national_phone(match.group()) else match.group(),
    ),
    _rule(
        ("phone", "tel", "mob", "cell", "fax", "whatsapp"),
        r"(?i)\b(?:phone|telephone|tel|mobile|mob|cell|fax|whatsapp)\b\.?[ \t]*"
        r"(?:no\.?|number|#)?[ \t]*[:=]?[ \t]*(?P<phone>\+?\(?\d[\d ()./-]{5,22}\d)(?!\w)",
        _masked_group("phone", _phone_digits),
    ),
]

_RULES: dict[MaskKind, list[_Rule]] = {
    "secret": _SECRET_RULES,
    "email": _EMAIL_RULES,
    "iban": _IBAN_RULES,
    "card": _CARD_RULES,
    "ip": _IP_RULES,
    "phone": _PHONE_RULES,
}
"""Each kind's rules, applied in order (IPv6 before IPv4: ``64:ff9b::192.0.2.1`` is one address)."""


def mask_text(text: str, kinds: Iterable[MaskKind] = MASK_KINDS) -> str:
    """`text` with every `kinds` of customer data replaced by its placeholder (``[email]``, ...)."""
    kinds = set(kinds)
    for kind in MASK_KINDS:
        if kind in kinds:
            text = _apply(_RULES[kind], text)
    return text


Masker = Callable[[str, tuple[MaskKind, ...]], str]
"""What masks a text of the given kinds: `mask_text`, or a memo of it shared by the two halves of a
model when scoring (`retrainer.core.scoring`), so a text both read is masked once."""
