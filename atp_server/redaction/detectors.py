"""Find personal data and secrets in text: precompiled patterns, then checksums and range rules.

Each detector is a cheap guard (a substring or character test that rules most texts out without a
regex pass), one compiled pattern, and an optional validator that accepts or rejects a match
(Luhn for cards, mod-97 for IBANs, the SSA's invalid ranges for SSNs, `ipaddress` for IPv6). Only
what passes the validator is reported. Everything here is pure: text in, spans out.
"""
import ipaddress
import re
from typing import NamedTuple

# The fixed type names: configuration keys, placeholder stems and metric labels (bounded set).
EMAIL, PHONE, CARD, IBAN, SSN, IP, SECRET = "email", "phone", "card", "iban", "ssn", "ip", "secret"
TYPES = (SECRET, EMAIL, IBAN, CARD, SSN, IP, PHONE)   # also the precedence when spans overlap


class Span(NamedTuple):
    start: int
    end: int
    kind: str


# ---- validators ----------------------------------------------------------------------------------

def luhn_ok(digits: str) -> bool:
    total, double = 0, False
    for ch in reversed(digits):
        d = ord(ch) - 48
        if double:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
        double = not double
    return total % 10 == 0


# Card brand prefixes (IIN ranges): a Luhn-valid 16-digit number that starts elsewhere (1, 7, 8,
# 9, 0) is far more likely an account, order or tracking number than a card in the wild.
_CARD_IIN = re.compile(r"4|5[1-5]|2[2-7]|3[47]|3[0689]|6(?:011|5|4[4-9]|22)|35|62")
_CARD_LENGTHS = {"3": (14, 15, 16, 19), "4": (13, 16, 19), "5": (16,), "2": (16,), "6": (16, 19)}


def card_ok(text: str) -> bool:
    digits = text.replace(" ", "").replace("-", "")
    if not 13 <= len(digits) <= 19 or not _CARD_IIN.match(digits):
        return False
    if len(digits) not in _CARD_LENGTHS[digits[0]]:
        return False
    seps = {c for c in text if c in " -"}
    if len(seps) > 1:                  # "4111 1111-1111 1111": mixed separators are not a card
        return False
    if seps:                           # grouped as printed on cards: 4-4-4-4(-3), 4-6-5, 4-6-4
        groups = tuple(len(g) for g in re.split(r"[ -]", text))
        if groups not in ((4, 4, 4, 4), (4, 4, 4, 4, 3), (4, 6, 5), (4, 6, 4), (4, 4, 4, 1),
                          (4, 4, 4, 2), (4, 4, 4, 3)):
            return False
    return luhn_ok(digits)


# IBAN length per country (SWIFT IBAN registry); a country missing here is not accepted.
_IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22,
    "BR": 29, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "DO": 28, "EE": 20,
    "ES": 24, "FI": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27,
    "GT": 28, "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30,
    "KZ": 20, "LB": 28, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "MC": 27, "MD": 24, "ME": 22,
    "MK": 19, "MR": 27, "MT": 31, "MU": 30, "NL": 18, "NO": 15, "PK": 24, "PL": 28, "PS": 29,
    "PT": 25, "QA": 29, "RO": 24, "RS": 22, "SA": 24, "SE": 24, "SI": 19, "SK": 24, "SM": 27,
    "TN": 24, "TR": 26, "UA": 29, "VG": 24, "XK": 20,
}


def iban_ok(text: str) -> bool:
    s = text.replace(" ", "")
    if _IBAN_LENGTHS.get(s[:2]) != len(s):
        return False
    moved = s[4:] + s[:4]
    # int() of the letter-expanded string is one C call; mod 97 == 1 is the ISO 13616 check.
    return int("".join(str(int(c, 36)) for c in moved)) % 97 == 1


def ssn_ok(text: str) -> bool:
    """The SSA never issues area 000, 666 or 900–999, group 00 or serial 0000."""
    area, group, serial = text[:3], text[4:6], text[7:]
    return (area != "000" and area != "666" and area[0] != "9" and group != "00"
            and serial != "0000")


def ipv6_ok(text: str) -> bool:
    # A colon-hex run is an address only when `ipaddress` agrees and it has a digit and three
    # groups: "dead:beef" and C++'s "a::b" are not, "fe80::1ff:fe23:4567:890a" is.
    if text.count(":") < 3 or not any(c.isdigit() for c in text):
        return False
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


# A dotted quad after a version word (at most one word between: "version 1.2.3.4", "release
# candidate 2.0.1.3", '"version": "1.0.0.1"'), a pin (==, >=), a product token ("Chrome/120.0.0.0")
# or a "v" is a version number, not an address.
_VERSION_BEFORE = re.compile(
    r"(?:(?:\b|_)(?:version|ver|release|tag|build|firmware|sdk|rev|revision|update|upgrade|versión|"
    r"versao|versão)\b\W*(?:\w+\W+)?|[=<>~!]=\s*|[A-Za-z]/|\bv)\Z", re.IGNORECASE)


def ipv4_ok(text: str, before: str) -> bool:
    return not _VERSION_BEFORE.search(before)


# Words that make a phone-shaped number something else when they come right before it.
_NOT_PHONE = re.compile(
    r"\b(?:order|invoice|ticket|case|serial|s/n|sn|part|tracking|ref|reference|account|acct|id|"
    r"sku|lot|batch|build|version|isbn|po|rma|auftrag|rechnung|commande|facture|pedido|n[o°º]\.?)"
    r"(?:\s*(?:number|num|no\.?|nr\.?|n[°º]|#|id|code))?[\s:#.-]*$", re.IGNORECASE)


def labelled_otherwise(before: str) -> bool:
    """Whether the words just before a number say it is an order, ticket, serial… number."""
    return before.endswith("#") or _NOT_PHONE.search(before[-24:]) is not None


def phone_ok(text: str, before: str) -> bool:
    digits = sum(c.isdigit() for c in text)
    if not 7 <= digits <= 15:          # E.164 allows at most 15 digits
        return False
    return not labelled_otherwise(before)


# ---- patterns ------------------------------------------------------------------------------------

_SECRET = re.compile(
    r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----[\s\S]{16,}?-----END (?:[A-Z0-9]+ )*PRIVATE KEY-----"
    r"|\bsk-(?:proj-|ant-(?:api\d\d-)?|live-)?[A-Za-z0-9_-]{20,}"
    r"|\b[sr]k_(?:live|test)_[A-Za-z0-9]{16,}"
    r"|\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"
    r"|\bgh[pousr]_[A-Za-z0-9]{36,}\b|\bgithub_pat_[A-Za-z0-9_]{40,}"
    r"|\bxox[abposr]-[A-Za-z0-9-]{10,}"
    r"|\bAIza[0-9A-Za-z_-]{35}"
    r"|\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}")
_SECRET_MARKS = ("-----BEGIN", "sk-", "k_live_", "k_test_", "AKIA", "ASIA", "gh", "github_pat_",
                 "xox", "AIza", "eyJ")

_EMAIL = re.compile(r"(?<![\w.%+-])[A-Za-z0-9][A-Za-z0-9._%+-]*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*"
                    r"\.[A-Za-z]{2,24}\b")
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b")
_CARD = re.compile(r"(?<![\w.-])\d{4}(?:[ -]?\d){9,15}(?![\w-]|\.\d)")
_SSN = re.compile(r"(?<![\w-])\d{3}([- ])\d{2}\1\d{4}(?![\w-])")
_IPV4 = re.compile(r"(?<![\w.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}"
                   r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?![\w]|\.\d)")
_IPV6 = re.compile(r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9A-Fa-f]{1,4}|(?:\d{1,3}\.){3}\d{1,3})?"
                   r"(?![\w:])")
# International (+CC …) or national forms: US (555) 123-4567 / 555-123-4567 / 555.123.4567, and
# trunk-prefixed European numbers 030 1234567, 020 7946 0958, 06 12 34 56 78, 0171/1234567.
_PHONE = re.compile(
    r"(?<![\w+/.-])(?<!\d[ .-])(?:"     # not the tail of a longer run of digit groups
    r"\+\d{1,3}(?:[ .-]?\(0?\d{1,4}\))?(?:[ .-]?\d{1,4}){2,5}"
    r"|\(\d{3}\) ?\d{3}[ .-]\d{4}"
    r"|\d{3}([.-])\d{3}\1\d{4}"
    r"|0\d(?:[ .]\d{2}){4}"
    r"|0\d{1,4}[ /-]\d{3,8}(?:[ -]\d{2,4})?"
    r")(?![\w-]|[.,]\d)")


def find(text: str, kinds: frozenset = frozenset(TYPES)) -> list[Span]:
    """Every accepted span of the wanted kinds, in text order, without overlaps.

    When two detectors claim overlapping text the earlier kind in TYPES wins (a secret's digits are
    not also a phone number; an IBAN's digits are not also a card).
    """
    found: list[Span] = []
    if SECRET in kinds and any(m in text for m in _SECRET_MARKS):
        found += [Span(m.start(), m.end(), SECRET) for m in _SECRET.finditer(text)]
    if EMAIL in kinds and "@" in text:
        found += [Span(m.start(), m.end(), EMAIL) for m in _EMAIL.finditer(text)]
    if IBAN in kinds:
        found += [Span(m.start(), m.end(), IBAN) for m in _IBAN.finditer(text) if iban_ok(m[0])]
    if CARD in kinds:
        found += [Span(m.start(), m.end(), CARD) for m in _CARD.finditer(text) if card_ok(m[0])]
    if SSN in kinds:
        found += [Span(m.start(), m.end(), SSN) for m in _SSN.finditer(text)
                  if ssn_ok(m[0]) and not labelled_otherwise(text[max(0, m.start() - 24):m.start()])]
    if IP in kinds:
        if "." in text:
            found += [Span(m.start(), m.end(), IP) for m in _IPV4.finditer(text)
                      if ipv4_ok(m[0], text[max(0, m.start() - 32):m.start()])]
        if "::" in text or text.count(":") >= 7:
            found += [Span(m.start(), m.end(), IP) for m in _IPV6.finditer(text) if ipv6_ok(m[0])]
    if PHONE in kinds:
        found += [Span(m.start(), m.end(), PHONE) for m in _PHONE.finditer(text)
                  if phone_ok(m[0], text[max(0, m.start() - 24):m.start()])]
    if len(found) < 2:
        return found
    return _without_overlaps(found)


def _without_overlaps(found: list[Span]) -> list[Span]:
    rank = {k: i for i, k in enumerate(TYPES)}
    found.sort(key=lambda s: (s.start, rank[s.kind]))
    kept: list[Span] = []
    for span in found:
        if kept and span.start < kept[-1].end:
            last = kept[-1]
            if rank[span.kind] < rank[last.kind]:
                kept[-1] = span
            continue
        kept.append(span)
    return kept
