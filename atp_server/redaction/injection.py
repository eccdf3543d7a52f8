"""A prompt-injection heuristic: weighted phrase patterns per attack family, combined into one score.

Each family is one compiled pattern (English, German, French, Spanish phrasings). A text's score
is 1 - Π(1 - w) over the families that match, so one strong signal alone reaches the default
threshold of 0.5 and weak ones only add up. It is a heuristic for tagging and blocking the obvious
— measured on tests/redaction/injection.jsonl (README) — not a classifier against a determined
attacker.
"""
import re

_F = re.IGNORECASE | re.DOTALL

_VERB = (r"(?:ignore|disregard|forget|override|bypass|skip|discard|abandon|"
         r"ignoriere|vergiss|missachte|ignorez?|oublie[zr]?|ignora|olvida)")
# Words that say "the rules you already have" (a bare "the" does not: "skip the boring rules").
_EARLIER = (r"(?:previous|prior|above|earlier|preceding|original|initial|system|developer|"
            r"your|vorherigen?|bisherigen?|obigen?|deine|tus|tes|vos)")
_EARLIER_AFTER = r"(?:pr[ée]c[ée]dentes?|anteriores?|previas?|ci-dessus|vorherigen?)"   # Romance order
_RULES = (r"(?:instructions?|prompts?|rules|directions|guidelines|directives|guardrails|"
          r"restrictions|constraints|safety|programming|context|Anweisungen|Regeln|Vorgaben|"
          r"r[èe]gles|consignes|instrucciones|reglas|indicaciones)")

# (family, weight, pattern). Weights: 0.6 for explicit overrides and exfiltration requests (each
# enough on its own), 0.5 for tool abuse and encoded instructions, 0.35 for role play and fake
# role markers, 0.2 for zero-width characters — values chosen on the labelled set so benign look-alikes stay below 0.5.
FAMILIES = (
    ("ignore_instructions", 0.6, re.compile(
        rf"\b{_VERB}\b(?:\s+\S+){{0,3}}?\s+{_EARLIER}\b(?:\s+\S+){{0,3}}?\s+{_RULES}\b"
        rf"|\b{_VERB}\s+(?:all|any|every)\s+(?:of\s+)?(?:the\s+|your\s+|my\s+)?{_RULES}\b"
        rf"|\b{_VERB}\b(?:\s+\S+){{0,3}}?\s+{_RULES}\s+{_EARLIER_AFTER}"
        rf"|\b{_VERB}\s+(?:the|everything|all|anything)(?:\s+(?:said|written))?\s+(?:above|before this)\b"
        r"|\bnew (?:system )?instructions?\s*:"
        r"|\b(?:do not|don't|never) follow (?:the|your|any) (?:previous|prior|system|original) "
        r"(?:instructions?|rules|prompt)", _F)),
    ("prompt_exfiltration", 0.6, re.compile(
        r"\b(?:reveal|show|print|repeat|output|display|leak|dump|tell me|give me|what (?:is|are|was|were)|"
        r"copy|recite|write out|zeige?|gib|r[ée]v[èe]le|affiche|muestra|revela)\b"
        r"(?:\s+\S+){0,5}?\s+(?:(?:system|hidden|secret|developer|internal|System|syst[èe]me|"
        r"sistema)[\s-]*(?:prompt|instructions?|message|Prompt|Anweisungen|consignes|instrucciones)"
        r"|pre-?prompt|prompt (?:syst[èe]me|du syst[èe]me|del sistema))"
        r"|\b(?:repeat|print|output) (?:all |everything |the (?:text|words) )?(?:above|before this)"
        r"|\binstructions you were given\b|\byour (?:initial|original|hidden) (?:prompt|instructions)",
        _F)),
    ("tool_abuse", 0.5, re.compile(
        r"\b(?:call|invoke|use|run|execute|trigger)\b(?:\s+\S+){0,4}?\s+(?:tools?|functions?|shell|"
        r"terminal|commands?|browser|plugin)\b(?:\s+\S+){0,12}?\s+(?:send|post|upload|forward|"
        r"exfiltrate|email|transfer|delete|wipe)"
        r"|\b(?:send|post|upload|forward|exfiltrate|leak|email)\b(?:\s+\S+){0,4}?\s+(?:all|every|the)\s+"
        r"(?:\S+\s+){0,3}?(?:credentials|passwords|api keys|secrets|tokens|private keys|"
        r"customer data|files|conversation|chat history)\b(?:\s+\S+){0,5}?\s+to\b"
        r"|\bcurl\s+\S+\s*\|\s*(?:ba|z)?sh\b|\brm\s+-rf\s+/(?:\s|$)", _F)),
    ("role_override", 0.35, re.compile(
        r"\byou are (?:now|no longer)\b|\bfrom now on,? you (?:are|will|must)\b"
        r"|\b(?:act|behave|respond) as (?:an? )?(?:unfiltered|unrestricted|uncensored|jailbroken|"
        r"evil|rogue)\b|\bpretend (?:you are|to be|that you)\b|\bdeveloper mode\b|\bDAN\b"
        r"|\bjailbr(?:eak|oken)\b|\bdu bist (?:jetzt|nun)\b|\btu es maintenant\b|\bahora eres\b"
        r"|<\|im_start\|>\s*system|\[/?INST\]|^\s*#{2,3}\s*(?:system|instruction)s?\s*:?\s*$"
        r"|(?:^|\n)\s*(?:system|assistant)\s*:\s", _F | re.MULTILINE)),
    ("encoded_instructions", 0.5, re.compile(
        r"\b(?:decode|base64|rot13|reverse)\b(?:\s+\S+){0,6}?\s+(?:and |then |and then )"
        r"(?:follow|execute|run|obey|do what)", _F)),
    ("hidden_characters", 0.2, re.compile(r"[\u200b\u200c\u200d\u2060\ufeff]")),
)


# Substrings (lower case) at least one of which every match of the family contains: a family's
# pattern runs only on a text that has one. Its regex over 2 KB costs 0.5–2 ms (word alternations
# at every position); the substring tests ~0.3 µs each. The reference (score_reference) runs every
# pattern; tests check both agree on the labelled sets and the redaction corpus.
TRIGGERS = {
    "ignore_instructions": ("ignor", "disregard", "forget", "override", "bypass", "skip", "discard",
                            "abandon", "vergiss", "missachte", "oubli", "olvida", "new instruction",
                            "new system instruction", "not follow", "n't follow", "never follow"),
    "prompt_exfiltration": ("prompt", "instruction", "message", "anweisung", "consigne", "above",
                            "before this"),
    "tool_abuse": ("tool", "function", "shell", "terminal", "command", "browser", "plugin",
                   "credential", "password", "api key", "secret", "token", "private key",
                   "customer data", "files", "conversation", "chat history", "curl", "-rf"),
    "role_override": ("you are", "from now on", "act as", "behave as", "respond as", "pretend",
                      "developer mode", "dan", "jailbr", "du bist", "tu es", "ahora eres",
                      "<|im_start|>", "inst]", "system", "instruction", "assistant"),
    "encoded_instructions": ("decode", "base64", "rot13", "reverse"),
    "hidden_characters": ("\u200b", "\u200c", "\u200d", "\u2060", "\ufeff"),
}


# A match starts at most this far before its trigger and ends at most this far after it (the
# patterns allow a few words between their parts); only that window is searched.
_BEFORE, _AFTER = 160, 240


def _found(pattern, triggers, text: str, lower: str) -> bool:
    if len(lower) != len(text):          # a case mapping changed the length: indices differ
        return any(t in lower for t in triggers) and pattern.search(text) is not None
    for trigger in triggers:
        i = lower.find(trigger)
        while i >= 0:
            if pattern.search(text, max(0, i - _BEFORE), i + len(trigger) + _AFTER):
                return True
            i = lower.find(trigger, i + 1)
    return False


def score(texts) -> tuple[float, tuple[str, ...]]:
    """(score in [0, 1], the families that matched) over an iterable of message contents."""
    matched: dict[str, float] = {}
    for text in texts:
        lower = text.lower()
        for family, weight, pattern in FAMILIES:
            if family not in matched and _found(pattern, TRIGGERS[family], text, lower):
                matched[family] = weight
    return _combine(matched)


def score_reference(texts) -> tuple[float, tuple[str, ...]]:
    """Every family's pattern over every text: what `score` must equal."""
    matched: dict[str, float] = {}
    for text in texts:
        for family, weight, pattern in FAMILIES:
            if family not in matched and pattern.search(text):
                matched[family] = weight
    return _combine(matched)


def _combine(matched: dict) -> tuple[float, tuple[str, ...]]:
    remaining = 1.0
    for weight in matched.values():
        remaining *= 1.0 - weight
    return 1.0 - remaining, tuple(matched)
