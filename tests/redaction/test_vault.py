"""Placeholders: stable per value, restored whole and in streams split at any point."""
import itertools

from atp_server.redaction import TYPES, StreamRestorer, Vault

ALL = frozenset(TYPES)
TEXT = "Write to ana@example.org or bo@example.net, again ana@example.org; card 4111111111111111."


def test_same_value_same_placeholder_and_counts_every_occurrence():
    v = Vault()
    out = v.redact(TEXT, ALL)
    assert out == ("Write to [EMAIL_1] or [EMAIL_2], again [EMAIL_1]; card [CARD_1].")
    assert v.counts == {"email": 3, "card": 1}
    assert v.restore(out) == TEXT


def test_placeholders_the_client_sent_are_not_restored_into_values():
    v = Vault()
    v.reserve("my template says [EMAIL_1] and [EMAIL_3]")
    out = v.redact("ana@example.org", ALL)
    assert out == "[EMAIL_4]"
    assert v.restore("[EMAIL_1] [EMAIL_4] [PHONE_9]") == "[EMAIL_1] ana@example.org [PHONE_9]"


def _stream(restorer, chunks):
    return "".join(restorer.feed(c) for c in chunks) + restorer.flush()


def test_every_split_point_of_an_answer_restores_the_same():
    v = Vault()
    v.redact(TEXT, ALL)
    answer = "Sure: [EMAIL_1], [EMAIL_2] and [CARD_1]. [Note] [EMAIL_] [EMAIL_12x [E"
    expected = ("Sure: ana@example.org, bo@example.net and 4111111111111111. [Note] [EMAIL_] "
                "[EMAIL_12x [E")
    assert v.restore(answer) == expected
    for i, j in itertools.combinations(range(1, len(answer)), 2):   # every pair of cuts
        chunks = [answer[:i], answer[i:j], answer[j:]]
        assert _stream(StreamRestorer(v), chunks) == expected, chunks
    assert _stream(StreamRestorer(v), list(answer)) == expected      # one character per chunk


def test_the_restorer_holds_back_only_a_possible_placeholder_prefix():
    v = Vault()
    v.redact("ana@example.org", ALL)
    r = StreamRestorer(v)
    assert r.feed("hello [") == "hello "
    assert r.feed("EMA") == ""
    assert r.feed("IL_1] bye") == "ana@example.org bye"
    assert r.feed("see [docs]") == "see [docs]"            # not a placeholder prefix: sent at once
    assert r.feed("[EMAIL_1234567") == "[EMAIL_1234567"    # longer than any index: sent
    assert r.held == ""
