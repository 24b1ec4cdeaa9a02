"""Answer text policy for descriptions: no statement is made twice, and none is contradicted.

The generation loop already bans the ids that would end an exact token-for-token copy of an earlier sentence
(`generation.ban_repeated_sentences`). A small model still restates itself in other spellings: a clause after ";"
and then the same clause as a sentence with a capital letter, the same clause inside "..., and ...", or the same
fact in a synonym ("hanging down" / "pointing down"), or says the opposite of an earlier clause about the same
body part. So a description keeps only the first clause of each kind: a clause is dropped when it reads like an
earlier one (case, spacing and the closing mark ignored) or, given `facts_of`, when everything it finds in the
clause was found before (the Describer passes what each clause is about, `describer.stated_topics`, so a clause
about an arm already described goes whether it agrees or not).

A small model is also unsure of much of what it says about an image, and it says it all the same; what it is
sure of is true more often. `confident_sentences` keeps the sentences of an answer whose tokens the model gave a
mean log-probability of at least a floor (the Describer's `min_sentence_logprob`, by default the model's
`image_description_min_sentence_logprob`): a description that states less, and less of it wrong.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Collection, Hashable, Sequence

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


def confident_sentences(token_ids: Sequence[int], token_logprobs: Sequence[float], sentence_end_ids: Collection[int],
                        min_mean_logprob: float) -> list[int]:
    """The ids of the sentences (each up to an id of `sentence_end_ids`, the last one possibly unfinished) whose
    ids have a mean log-probability (`generation.GenerationResult.token_logprobs`; NaN ones skipped) of at least
    `min_mean_logprob`, in order; when none has, the surest one, so an answer never goes silent."""
    sentences: list[tuple[list[int], float]] = []
    ids: list[int] = []
    logprobs: list[float] = []
    for token, logprob in zip(token_ids, token_logprobs, strict=True):
        ids.append(token)
        if not math.isnan(logprob):
            logprobs.append(logprob)
        if token in sentence_end_ids:
            sentences.append((ids, sum(logprobs) / len(logprobs) if logprobs else 0.0))
            ids, logprobs = [], []
    if ids:
        sentences.append((ids, sum(logprobs) / len(logprobs) if logprobs else 0.0))
    if not sentences:
        return []
    kept = [ids for ids, mean in sentences if mean >= min_mean_logprob]
    if not kept:
        kept = [max(sentences, key=lambda sentence: sentence[1])[0]]
    return [token for ids in kept for token in ids]
