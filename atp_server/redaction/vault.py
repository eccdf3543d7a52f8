"""Reversible placeholders: replace found values by [KIND_n] and put them back in the answer.

Why `[EMAIL_1]`: plain ASCII in a shape models see constantly (template slots, citations), which
instruction-tuned models copy verbatim, token for token; exotic brackets (⟦ ⟧, «») tokenize into
rare byte pieces that small models drop or rewrite. The same value gets the same placeholder within
one request, so the model can refer to "the email" consistently. Only placeholders this vault
issued are restored; anything else in brackets is left as it is.
"""
import re

from .detectors import TYPES, find

STEMS = {kind: kind.upper() for kind in TYPES}          # email -> EMAIL
_STEM_KIND = {stem: kind for kind, stem in STEMS.items()}
_ALT = "|".join(sorted(STEMS.values(), key=len, reverse=True))
# At most 6 digits: a request with a million values of one kind does not exist (the prompt cap
# is 400k chars), and the bound keeps what a stream restorer holds back short.
MAX_INDEX_DIGITS = 6
PLACEHOLDER = re.compile(rf"\[({_ALT})_([1-9]\d{{0,{MAX_INDEX_DIGITS - 1}}})\]")


class Vault:
    """One request's mapping placeholder <-> original value, and the counts by kind."""

    __slots__ = ("values", "placeholders", "counts", "_next")

    def __init__(self):
        self.values: dict[str, str] = {}           # "[EMAIL_1]" -> "ana@example.org"
        self.placeholders: dict[tuple, str] = {}   # ("email", "ana@example.org") -> "[EMAIL_1]"
        self.counts: dict[str, int] = {}           # kind -> values replaced (every occurrence)
        self._next: dict[str, int] = {}            # kind -> the last index issued or seen

    def reserve(self, text: str) -> None:
        """Placeholder-shaped text the client itself sent must not be restored into a value:
        numbering for that kind continues after the highest index found."""
        for m in PLACEHOLDER.finditer(text):
            kind = _STEM_KIND[m[1]]
            self._next[kind] = max(self._next.get(kind, 0), int(m[2]))

    def placeholder(self, kind: str, value: str) -> str:
        key = (kind, value)
        ph = self.placeholders.get(key)
        if ph is None:
            n = self._next[kind] = self._next.get(kind, 0) + 1
            ph = self.placeholders[key] = f"[{STEMS[kind]}_{n}]"
            self.values[ph] = value
        self.counts[kind] = self.counts.get(kind, 0) + 1
        return ph

    def redact(self, text: str, kinds: frozenset) -> str:
        spans = find(text, kinds)
        if not spans:
            return text
        out, pos = [], 0
        for start, end, kind in spans:
            out.append(text[pos:start])
            out.append(self.placeholder(kind, text[start:end]))
            pos = end
        out.append(text[pos:])
        return "".join(out)

    def restore(self, text: str) -> str:
        """The whole answer with every issued placeholder replaced by its value."""
        if "[" not in text or not self.values:
            return text
        values = self.values
        return PLACEHOLDER.sub(lambda m: values.get(m[0], m[0]), text)


def _prefixes() -> str:
    """Alternation matching every proper prefix of a placeholder after its '[':
    'E', 'EM', …, 'EMAIL', 'EMAIL_', 'EMAIL_12' (at most MAX_INDEX_DIGITS digits)."""
    parts = set()
    for stem in STEMS.values():
        parts.update(re.escape(stem[:i]) for i in range(1, len(stem) + 1))
    alt = "|".join(sorted(parts, key=len, reverse=True))
    return rf"\[(?:(?:{_ALT})_(?:[1-9]\d{{0,{MAX_INDEX_DIGITS - 1}}})?|{alt})?\Z"


_OPEN_PREFIX = re.compile(_prefixes())


class StreamRestorer:
    """Restores placeholders in a streamed answer whose chunks may split one anywhere.

    `feed(chunk)` returns what can be sent now; it holds back only a tail that could still become
    a placeholder ('[', '[EM', '[EMAIL_1' — at most 1 + 6 + 1 + 6 characters), so text reaches the
    client as soon as it cannot be part of one. `flush()` returns the held tail at the end.
    """

    __slots__ = ("vault", "held")

    def __init__(self, vault: Vault):
        self.vault = vault
        self.held = ""

    def feed(self, chunk: str) -> str:
        if not self.held and "[" not in chunk:
            return chunk                         # the common case: nothing to look at
        text = self.held + chunk
        cut = text.rfind("[")
        if cut >= 0 and _OPEN_PREFIX.match(text, cut):
            self.held, text = text[cut:], text[:cut]
        else:
            self.held = ""
        # A placeholder has one '[' (its first character), so everything before the held tail
        # holds only whole placeholders.
        return self.vault.restore(text) if "[" in text else text

    def flush(self) -> str:
        tail, self.held = self.held, ""
        return tail
