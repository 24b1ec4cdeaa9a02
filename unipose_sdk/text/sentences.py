"""Answer text policy for descriptions: no statement is made twice, and none is contradicted.

The generation loop already bans the ids that would end an exact token-for-token copy of an earlier sentence
(`generation.ban_repeated_sentences`). A small model still restates itself in other spellings: a clause after ";"
and then the same clause as a sentence with a capital letter, the same clause inside "..., and ...", or the same
fact in a synonym ("hanging down" / "pointing down"), or says the opposite of an earlier clause about the same
body part. So a description keeps only the first clause of each kind: a clause is dropped when it reads like an
earlier one (case, spacing and the closing mark ignored) or, given `facts_of`, when everything it finds in the
clause was found before (the Describer passes what each clause is about, `describer.stated_topics`, so a clause
about an arm already described goes whether it agrees or not).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Hashable

# A sentence ends at ".", "!" or "?" followed by a space or the end ("3.5 cm" stays in one sentence).
_SENTENCE_RE = re.compile(r".+?(?:[.!?]+(?=\s|$)|$)", re.DOTALL)
# Clause separators inside a sentence, kept so the sentence can be put back together.
_SEPARATOR_RE = re.compile(r"(;\s*|,\s*and\s+|,\s*while\s+|\s+and\s+|\s+while\s+|,\s*)")


def _key(clause: str) -> str:
    return " ".join(clause.strip().rstrip(".!?;,").lower().split())


def drop_repeated_sentences(text: str, facts_of: Callable[[str], set[Hashable]] | None = None) -> str:
    """`text` without the clauses that repeat an earlier one (by text, or by the facts `facts_of` finds in it)."""
    seen_text: set[str] = set()
    seen_facts: set[Hashable] = set()
    sentences: list[str] = []
    for sentence in _SENTENCE_RE.findall(text):
        body = sentence.strip()
        if not body:
            continue
        end = re.search(r"[.!?]+$", body)
        mark = end.group(0) if end else ""
        parts = _SEPARATOR_RE.split(body[: len(body) - len(mark)])
        clauses, separators = parts[0::2], parts[1::2]
        kept: list[str] = []
        for i, clause in enumerate(clauses):
            key = _key(clause)
            facts = facts_of(key) if facts_of is not None and key else set()
            repeated = bool(key) and (key in seen_text or (bool(facts) and facts <= seen_facts))
            if key:
                seen_text.add(key)
                seen_facts.update(facts)
            if repeated:
                continue
            if kept and i > 0:
                kept.append(separators[i - 1])
            kept.append(clause.strip() if not kept else clause)
        if kept:
            rebuilt = "".join(kept).strip()
            sentences.append(rebuilt[:1].upper() + rebuilt[1:] + (mark or ""))
    return " ".join(sentences)
