"""Word error rate: (substitutions + deletions + insertions) / words in the reference."""

from __future__ import annotations


def word_error_rate(reference: str, hypothesis: str) -> float:
    """The word-level Levenshtein distance over the reference's word count (1.0 if empty
    reference and a non-empty hypothesis, 0.0 if both are empty)."""
    ref, hyp = reference.split(), hypothesis.split()
    if not ref:
        return float(bool(hyp))
    previous = list(range(len(hyp) + 1))
    for i, word in enumerate(ref, 1):
        current = [i]
        for j, guess in enumerate(hyp, 1):
            current.append(
                min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (word != guess))
            )
        previous = current
    return previous[-1] / len(ref)


def corpus_error_rate(pairs: list[tuple[str, str]]) -> float:
    """The word error rate over many (reference, hypothesis) pairs, weighted by length."""
    errors = sum(word_error_rate(ref, hyp) * len(ref.split()) for ref, hyp in pairs)
    words = sum(len(ref.split()) for ref, _ in pairs)
    return errors / words if words else 0.0
