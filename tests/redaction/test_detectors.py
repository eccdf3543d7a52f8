"""Detectors: each type found in its usual forms, validators reject the look-alikes."""
import pytest

from atp_server.redaction.detectors import (TYPES, card_ok, find, iban_ok, ipv6_ok, luhn_ok,
                                            ssn_ok)


def kinds_in(text, kinds=frozenset(TYPES)):
    return [(s.kind, text[s.start:s.end]) for s in find(text, kinds)]


@pytest.mark.parametrize("text, kind, value", [
    ("mail me at ana.silva+tag@mail.example.co.uk today", "email", "ana.silva+tag@mail.example.co.uk"),
    ("Tel. +49 30 1234567 (Büro)", "phone", "+49 30 1234567"),
    ("ring +44 (0)20 7946 0958 please", "phone", "+44 (0)20 7946 0958"),
    ("call (415) 555-0132 after 5", "phone", "(415) 555-0132"),
    ("cell 415.555.0199.", "phone", "415.555.0199"),
    ("appelez le 06 12 34 56 78 svp", "phone", "06 12 34 56 78"),
    ("Festnetz 030 12345678", "phone", "030 12345678"),
    ("card 4111-1111-1111-1111 exp 12/27", "card", "4111-1111-1111-1111"),
    ("amex 3782 822463 10005", "card", "3782 822463 10005"),
    ("pan=5555555555554444;", "card", "5555555555554444"),
    ("IBAN: GB82 WEST 1234 5698 7654 32.", "iban", "GB82 WEST 1234 5698 7654 32"),
    ("iban FR1420041010050500013M02606", "iban", "FR1420041010050500013M02606"),
    ("SSN 219-09-9999 on file", "ssn", "219-09-9999"),
    ("from 203.0.113.77 port 443", "ip", "203.0.113.77"),
    ("src=2001:db8:85a3::8a2e:370:7334 dst", "ip", "2001:db8:85a3::8a2e:370:7334"),
    ("OPENAI_API_KEY=sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8t", "secret", "sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8t"),
    ("aws AKIAIOSFODNN7EXAMPLE x", "secret", "AKIAIOSFODNN7EXAMPLE"),
    ("token ghp_" + "a1B2c3D4e5" * 4, "secret", "ghp_" + "a1B2c3D4e5" * 4),
    ("slack xoxb-1234567890-abcdefghij done", "secret", "xoxb-1234567890-abcdefghij"),
    ("Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
     "secret", "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"),
])
def test_each_type_is_found(text, kind, value):
    assert kinds_in(text) == [(kind, value)]


def test_a_pem_private_key_is_one_secret():
    pem = ("-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA0Z3VS5JJcds3xfn/ygWyF8PbnGy0AHB7\n"
           "-----END RSA PRIVATE KEY-----")
    assert kinds_in(f"key:\n{pem}\nthanks") == [("secret", pem)]


@pytest.mark.parametrize("text", [
    "order #4839-2291-0044 shipped",
    "Order number 555-123-4567 confirmed",
    "at 2024-03-15 14:22:01.123 UTC",
    "upgrade to version 1.2.3.4 first",
    "requires numpy>=1.26.4 and v2.0.0.1",
    "uuid 123e4567-e89b-12d3-a456-426614174000",
    "sha 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
    "ISBN 978-3-16-148410-0",
    "card-like 4111 1111 1111 1112 fails Luhn",
    "tracking 1Z999AA10123456784",
    "serial SN 4829-1039-2281",
    "12:34:56 and MAC 00:1a:2b:3c:4d:5e",
    "std::vector<int> a::b",
    "user@localhost and npm i left-pad@1.3.0",
    "SSN-shaped 666-12-3456 and 900-12-3456 and 123-00-4567 are never issued",
    "IBAN-shaped DE89 3704 0044 0532 0130 01 fails mod 97",
])
def test_hard_negatives_are_left_alone(text):
    assert kinds_in(text) == []


def test_only_the_wanted_kinds_are_reported():
    text = "ana@example.org, 203.0.113.7"
    assert kinds_in(text, frozenset({"ip"})) == [("ip", "203.0.113.7")]


def test_an_overlap_goes_to_the_stronger_kind():
    # The digits of an IBAN are also card-shaped: the IBAN wins, one span.
    text = "NL91ABNA0417164300"
    assert kinds_in(text) == [("iban", text)]


def test_validators():
    assert luhn_ok("79927398713") and not luhn_ok("79927398710")
    assert card_ok("4012888888881881") and not card_ok("1234567812345670")   # Luhn ok, no IIN
    assert not card_ok("4111 1111-1111 1111")                                 # mixed separators
    assert iban_ok("DE89370400440532013000") and not iban_ok("DE8937040044053201300")
    assert ssn_ok("123-45-6789") and not ssn_ok("000-45-6789") and not ssn_ok("123-45-0000")
    assert ipv6_ok("::ffff:192.0.2.1") and not ipv6_ok("dead:beef:cafe")


def test_the_fast_path_equals_the_reference_on_the_corpus_and_on_noise():
    import json
    import random
    from pathlib import Path

    from atp_server.redaction.detectors import find_reference
    rows = [json.loads(line) for line in
            (Path(__file__).with_name("corpus.jsonl")).read_text().splitlines()]
    texts = [r["text"] for r in rows]
    rng = random.Random(7)
    alphabet = "0123456789 .-:()/+@abcdefxyzABZ_é\n"
    texts += ["".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 120))) for _ in range(3000)]
    for text in texts:
        assert find(text) == find_reference(text), text
        assert find(text, frozenset({"ip"})) == find_reference(text, frozenset({"ip"})), text
