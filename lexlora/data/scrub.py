"""Personal-data scrubbing with regular expressions: typed placeholders such as ``[EMAIL]``.

Tuned for US-centric professional text (contracts, court filings, clinical notes) and checked
against the licence corpus, where version numbers, section numbers and ordinary dates must survive.
Labelled items (MRN, DOB, labelled SSN) keep their label: ``"MRN: 00123456"`` -> ``"MRN: [MRN]"``.

Rules run in a fixed order (EMAIL, MRN, DOB, SSN, CARD, IP, ADDRESS, PHONE) on the text as
rewritten so far; placeholders contain no digits, so a later rule never matches inside one.

Speed: a pattern that starts with a lookbehind makes ``re`` try a match at every position, so the
digit patterns start with a character class and check their left edge right after it, as in
``\\d(?<![\\w-]\\d)`` ("a digit not preceded by a word character or a dash"); ``re`` then skips
ahead to the next digit. Labels are matched without a lookbehind and vetted by ``_at_word_start``.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from lexlora.errors import LexloraError
from lexlora.recipe import PII_TYPES


@dataclass(frozen=True)
class ScrubResult:
    """Scrubbed text and the number of replacements per type (every type of PII_TYPES, sorted)."""

    text: str
    counts: dict[str, int]


@dataclass(frozen=True)
class _Rule:
    """One pattern for one type: the span of its ``value`` group is replaced, the rest is kept.

    ``accept`` vets a match the pattern cannot (checksums, ranges, context); ``needs`` is a
    substring without which the rule cannot match, so the rule is skipped on texts without it.
    """

    kind: str
    pattern: re.Pattern[str]
    accept: Callable[[re.Match[str]], bool] | None = None
    needs: str = ""


def _at_word_start(match: re.Match[str]) -> bool:
    """The match does not begin inside a word ("Osborn 3/4/60" is no "born" label)."""
    start = match.start()
    return start == 0 or not match.string[start - 1].isalnum()


# Words after which a number is a reference ("version 1.0.0.0", "Section 3.1.2.1", "Table 2 Chi
# Square"), not an IP address or a street number.
_REFERENCE_WORD = re.compile(
    r"(?<![A-Za-z])(?:version|ver\.|release|build|rev\.|revision|section|§|clause|article"
    r"|paragraph|para\.|chapter|rule|exhibit|schedule|appendix|annex|table|figure|fig\.|page"
    r"|count|title|item|part|step|claim|no\.)\s*:?\s*$",
    re.IGNORECASE,
)


def _after_reference_word(match: re.Match[str]) -> bool:
    """The match directly follows a reference word such as "version" or "Section"."""
    start = match.start()
    return _REFERENCE_WORD.search(match.string, max(0, start - 25), start) is not None


# --- EMAIL -----------------------------------------------------------------------------------

_EMAIL = re.compile(
    r"(?<![\w.%+-])(?P<value>[A-Za-z0-9][A-Za-z0-9._%+-]*@"
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24})(?![\w-]|\.\w)"
)

# --- MRN, DOB, SSN: labelled values ----------------------------------------------------------

_LABEL_SEPARATOR = r"[ \t]*(?:[:#-][ \t]*){0,2}"
_MRN = re.compile(
    r"(?:MRN|MR\#|Medical[ \t]+Record[ \t]+(?:Number|No\b\.?|\#)"
    r"|Med\.?[ \t]*Rec\.?(?:[ \t]*(?:Number|No\b\.?|\#))?)"
    rf"{_LABEL_SEPARATOR}(?P<value>[A-Z]{{0,3}}-?\d{{3,}}(?:-\d+)*)(?![\w-])",
    re.IGNORECASE,
)

_MONTH = (
    r"(?:Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|June?|July?|Aug(?:ust)?"
    r"|Sep(?:t(?:ember)?)?|Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?)\.?"
)
_DATE = (
    r"(?:\d{4}-\d{1,2}-\d{1,2}"  # 1962-03-14
    r"|\d{1,2}[/.-]\d{1,2}[/.-](?:\d{4}|\d{2})"  # 03/14/1962, 14.03.62
    rf"|{_MONTH}[ \t]+\d{{1,2}}(?:st|nd|rd|th)?,?[ \t]+\d{{4}}"  # March 14, 1962
    rf"|\d{{1,2}}(?:st|nd|rd|th)?[ \t]+(?:of[ \t]+)?{_MONTH},?[ \t]+\d{{4}})"  # 14 March 1962
    r"(?![\w/-])"
)
# Words allowed between a label and its date: "born on", "Date of Birth confirmed as".
_DOB_FILLER = r"(?:is|was|on|as|confirmed|verified|listed|recorded|given|stated|reported)"


def _dob_pattern(labels: str) -> re.Pattern[str]:
    """A date after one of ``labels``: all labels of one pattern start with the same letter, which
    lets ``re`` skip ahead to that letter (a mixed alternation is five times slower)."""
    return re.compile(
        rf"{labels}{_LABEL_SEPARATOR}(?:{_DOB_FILLER}[ \t]+){{0,3}}(?P<value>{_DATE})",
        re.IGNORECASE,
    )


_DOB_D = _dob_pattern(r"(?:DOB|D\.O\.B\.?|Date[ \t]+of[ \t]+Birth)")
_DOB_B = _dob_pattern(r"(?:Birth[ \t]*Date|Born)")

_SSN_LABELLED = re.compile(
    r"(?:SSN|SS\#|Soc(?:ial)?\.?[ \t]+Sec(?:urity)?\.?[ \t]+(?:No\b\.?|Number|\#))"
    rf"{_LABEL_SEPARATOR}(?P<value>\d{{9}}|\d{{3}}(?P<sep>[- ])\d{{2}}(?P=sep)\d{{4}})(?![\w-])",
    re.IGNORECASE,
)
# Unlabelled SSNs need separators; area 000, 666 and 9xx, group 00, serial 0000 are never issued.
_SSN = re.compile(
    r"(?P<value>[0-8](?<![\w-][0-8])\d{2}(?<!000)(?<!666)(?P<sep>[- ])"
    r"(?!00)\d{2}(?P=sep)(?!0000)\d{4})(?![\w-]|\.\d)"
)

# --- CARD ------------------------------------------------------------------------------------

# 13-19 digits starting 2-6 (Mastercard, Amex, Visa, Discover...): contiguous, 4-4-4-4(-3),
# or Amex/Diners 4-6-5 / 4-6-4; the Luhn checksum decides.
_CARD = re.compile(
    r"(?P<value>[2-6](?<![\w-][2-6])(?:\d{12,18}"
    r"|\d{3}(?P<sep>[ -])\d{4}(?P=sep)\d{4}(?P=sep)\d{4}(?:(?P=sep)\d{3})?"
    r"|\d{3}(?P<amex>[ -])\d{6}(?P=amex)\d{4,5}))"
    r"(?![\w-]|\.\d)"
)


def luhn_valid(digits: str) -> bool:
    """True when a string of digits passes the Luhn checksum."""
    total = 0
    for i, char in enumerate(reversed(digits)):
        d = int(char)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _is_card(match: re.Match[str]) -> bool:
    """The digits, without spaces and dashes, pass the Luhn checksum."""
    return luhn_valid(re.sub(r"[ -]", "", match["value"]))


# --- IP --------------------------------------------------------------------------------------

_IPV4 = re.compile(r"(?P<value>\d(?<![\w.]\d)\d{0,2}(?:\.\d{1,3}){3})(?![\w-]|\.\d)")
_HEADING_TAIL = re.compile(r"\.?[ \t]+\S")
# A run of hex digits and colons (validated by ipaddress), with an optional embedded IPv4 tail.
_IPV6 = re.compile(
    r"(?P<value>[0-9A-Fa-f:](?<![\w:.][0-9A-Fa-f:])[0-9A-Fa-f]{0,3}:[0-9A-Fa-f:]{2,38}"
    r"(?:\.\d{1,3}){0,3})(?![\w:]|\.\d)"
)


def _is_ipv4(match: re.Match[str]) -> bool:
    """Octets 0-255 without leading zeros; not a version or section ("version 1.0.0.0",
    "section 3.1.2.1") nor a numbered heading ("2.1.3.1. Source Code" at the start of a line)."""
    octets = match["value"].split(".")
    if any(int(o) > 255 or (len(o) > 1 and o[0] == "0") for o in octets):
        return False
    if _after_reference_word(match):
        return False
    text, start, end = match.string, match.start(), match.end()
    line_start = text.rfind("\n", 0, start) + 1
    at_line_start = not text[line_start:start].strip()
    return not (at_line_start and _HEADING_TAIL.match(text, end))


def _is_ipv6(match: re.Match[str]) -> bool:
    """A valid IPv6 address with a digit and at least two non-empty groups (not "::1", "a::b",
    "12:30:45")."""
    value = match["value"]
    if sum(1 for g in value.split(":") if g) < 2 or not any(c.isdigit() for c in value):
        return False
    try:
        ipaddress.IPv6Address(value)
    except ValueError:
        return False
    return True


# --- ADDRESS ---------------------------------------------------------------------------------

_SUFFIX = (
    r"(?:Street|St|Avenue|Ave|Road|Rd|Boulevard|Blvd|Lane|Ln|Drive|Dr|Court|Ct|Place|Pl|Way"
    r"|Parkway|Pkwy|Highway|Hwy|Freeway|Expressway|Turnpike|Pike|Terrace|Ter|Circle|Cir"
    r"|Square|Sq|Plaza|Plz|Trail|Alley|Row|Crescent|Loop)\b\.?"
)
_DIRECTION = r"(?:N|S|E|W|NE|NW|SE|SW)\b\.?"
# A title-case word ("Main", "McDonald", "O'Farrell") or an ordinal ("5th"); not "PM", "NE".
_NAME_WORD = r"(?:[A-Z](?:[a-z]|'?[A-Z][a-z])[A-Za-z'-]*|\d+(?:st|nd|rd|th))"
_STREET = rf"(?:{_DIRECTION}[ \t]+)?(?:{_NAME_WORD}[ \t]+){{1,4}}?{_SUFFIX}(?:[ \t]+{_DIRECTION})?"
_UNIT = (
    r"(?:,\s*|[ \t]+[-/][ \t]+|\s+)"
    r"(?:(?:(?:Suite|Ste|Apt|Apartment|Unit|Room|Rm|Bldg|Building|Floor|Fl)\.?[ \t]*\#?|\#)"
    r"[ \t]*(?:[A-Za-z-]*\d[A-Za-z0-9-]*|[A-Z]\b)"
    r"|(?:\d+(?:st|nd|rd|th)|First|Second|Third|Fourth|Fifth|Sixth|Seventh|Eighth|Ninth|Tenth)"
    r"[ \t]+Floor)"
)
_STATE_ABBR = (
    r"(?:A[KLRZ]|C[AOT]|D[CE]|FL|GA|HI|I[ADLN]|K[SY]|LA|M[ADEINOST]|N[CDEHJMVY]|O[HKR]|PA|PR"
    r"|RI|S[CD]|T[NX]|UT|V[AT]|W[AIVY])\b"
)
_ZIP = r"\d{5}(?:-\d{4})?(?![\w-])"
_CITY = r"[A-Z][A-Za-z.'-]*(?:[ \t]+[A-Z][A-Za-z.'-]*){0,3}"
_STATE_NAME = r"[A-Z][a-z]+(?:[ \t]+[A-Z][a-z]+)?"
# ", Boston, MA 02111-1307 USA" or a new line "Sunnyvale, CA 94089"; a full state name needs a ZIP.
_CITY_STATE_ZIP = (
    rf"(?:,\s*|[ \t]*\n[ \t]*){_CITY}(?:,\s*|\s+)"
    rf"(?:{_STATE_ABBR}(?:,?\s+{_ZIP})?|{_STATE_NAME},?\s+{_ZIP})"
    r"(?:,?[ \t]+(?:USA|U\.S\.A\.|United[ \t]+States(?:[ \t]+of[ \t]+America)?)\b)?"
)
_ADDRESS_TAIL = rf"{_STREET}(?:{_UNIT}){{0,3}}"
_STREET_ADDRESS = re.compile(
    rf"(?P<value>\d(?<![\w-]\d)\d{{0,5}}[A-Z]?(?:-\d{{1,6}})?[ \t]+{_ADDRESS_TAIL}"
    rf"(?:{_CITY_STATE_ZIP})?)"
)
_COURT_NAME = re.compile(
    r"\b(?:Supreme|District|Circuit|Superior|Appellate|Appeals|Bankruptcy|Family|Probate|County"
    r"|Municipal|Claims|Tax|Juvenile|Housing|Criminal|Civil|Federal|State|City)[ \t]+(?:Court|Ct)\b"
)


def _is_street_address(match: re.Match[str]) -> bool:
    """Not a reference ("Table 2 Chi Square") nor a court ("Chapter 11 Bankruptcy Court")."""
    return not (_after_reference_word(match) or _COURT_NAME.search(match["value"]))


# "One Microsoft Way, Redmond, WA 98052": a spelled-out number needs the city line.
_WORD_NUMBER_ADDRESS = re.compile(
    r"(?P<value>(?:One|Two|Three|Four|Five|Six|Seven|Eight|Nine|Ten)"
    rf"[ \t]+{_ADDRESS_TAIL}{_CITY_STATE_ZIP})"
)

_PO_BOX = re.compile(
    r"(?P<value>P(?<!\wP)(?:\.?[ \t]?O\.?[ \t]*|ost[ \t]+Office[ \t]+)(?i:box)[ \t]*\#?[ \t]*\d+"
    rf"(?!\w)(?:{_CITY_STATE_ZIP})?)"
)

# --- PHONE -----------------------------------------------------------------------------------

_EXTENSION = r"(?:[ \t]*,?[ \t]*(?:ext\.?|extension|x)[ \t]*\d{1,6}\b)?"
_PHONE_END = rf"{_EXTENSION}(?![\w-]|\.\d)"
# A US number after the area code's first digit: "55-123-4567", "55.123.4567", "55 123 4567",
# "55 123-4567". Mixed "252.227-7013" is a DFARS clause, not a phone number.
_AREA_REST = r"\d{2}(?:(?P<sep>[.-])\d{3}(?P=sep)|[ ]\d{3}[ -])\d{4}"
_PAREN_REST = r"[2-9]\d{2}\)[ \t]?\d{3}[ .-]\d{4}"  # after "(": 555) 123-4567
# "+1 555 123 4567", "1-800-555-0199", "+1 (847) 631-1100"
_PHONE_COUNTRY = re.compile(
    rf"(?P<value>(?:\+1|1)[ .-]?(?:\({_PAREN_REST}|[2-9]{_AREA_REST}){_PHONE_END})", re.IGNORECASE
)
_PHONE_PAREN = re.compile(rf"(?P<value>\((?<![\w+]\(){_PAREN_REST}{_PHONE_END})", re.IGNORECASE)
_PHONE_PLAIN = re.compile(
    rf"(?P<value>[2-9](?<![\w+][2-9])(?<!\d[.-][2-9])(?<!FARS [2-9])(?<!FAR [2-9]){_AREA_REST}"
    rf"{_PHONE_END})",
    re.IGNORECASE,
)
# "+44 20 7946 0958", "+44 (0)20 7946 0958", "+442079460958"; 8-15 digits checked by _is_intl.
_PHONE_INTL = re.compile(
    r"(?P<value>\+(?<![\w+]\+)"
    r"(?:[2-9]\d{0,2}(?:[ .-]\(0\))?(?:[ .\-–]\(?\d{1,6}\)?){1,5}|[2-9]\d{7,14})"
    rf"{_PHONE_END})",
    re.IGNORECASE,
)


def _is_intl(match: re.Match[str]) -> bool:
    """An international number has 8-15 digits (E.164), not counting the extension."""
    number = re.split(r"(?i)[ \t,]*(?:ext|x)", match["value"], maxsplit=1)[0]
    return 8 <= sum(c.isdigit() for c in number) <= 15


_RULES: tuple[_Rule, ...] = (
    _Rule("EMAIL", _EMAIL, needs="@"),
    _Rule("MRN", _MRN, _at_word_start),
    _Rule("DOB", _DOB_D, _at_word_start),
    _Rule("DOB", _DOB_B, _at_word_start),
    _Rule("SSN", _SSN_LABELLED, _at_word_start),
    _Rule("SSN", _SSN),
    _Rule("CARD", _CARD, _is_card),
    _Rule("IP", _IPV4, _is_ipv4),
    _Rule("IP", _IPV6, _is_ipv6, needs=":"),
    _Rule("ADDRESS", _STREET_ADDRESS, _is_street_address),
    _Rule("ADDRESS", _WORD_NUMBER_ADDRESS, _at_word_start),
    _Rule("ADDRESS", _PO_BOX),
    _Rule("PHONE", _PHONE_INTL, _is_intl, needs="+"),
    _Rule("PHONE", _PHONE_COUNTRY, _at_word_start),
    _Rule("PHONE", _PHONE_PAREN),
    _Rule("PHONE", _PHONE_PLAIN),
)


def _apply(rule: _Rule, text: str) -> tuple[str, int]:
    """Replace the ``value`` span of every accepted match of ``rule``; return text and count."""
    placeholder = f"[{rule.kind}]"
    parts: list[str] = []
    pos = 0
    for match in rule.pattern.finditer(text):
        if rule.accept is not None and not rule.accept(match):
            continue
        start, end = match.span("value")
        parts += (text[pos:start], placeholder)
        pos = end
    if not parts:
        return text, 0
    parts.append(text[pos:])
    return "".join(parts), len(parts) // 2


def _check_types(types: Iterable[str] | None) -> frozenset[str]:
    """The requested type names; a bare string counts as one name."""
    if types is None:
        return frozenset(PII_TYPES)
    wanted = frozenset([types] if isinstance(types, str) else types)
    unknown = sorted(wanted.difference(PII_TYPES), key=str)
    if unknown:
        raise LexloraError(
            f"unknown PII type {', '.join(map(repr, unknown))}; "
            f"expected one of: {', '.join(PII_TYPES)}"
        )
    return wanted


def scrub_text(text: str, types: Iterable[str] | None = None) -> ScrubResult:
    """Replace personal data of the given types (default: all PII_TYPES) by placeholders."""
    wanted = _check_types(types)
    counts = dict.fromkeys(sorted(PII_TYPES), 0)
    for rule in _RULES:
        if rule.kind not in wanted:
            continue
        if rule.needs not in text:
            continue
        text, n = _apply(rule, text)
        counts[rule.kind] += n
    return ScrubResult(text=text, counts=counts)
