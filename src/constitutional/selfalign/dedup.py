"""Near-duplicate instructions by ROUGE-L, fast enough for tens of thousands of them.

Self-Instruct keeps a new instruction only if its ROUGE-L F-measure against every kept one is
at most 0.7. Scoring each new one against all kept ones is quadratic and slow in Python, so a
bound cuts the work first: ROUGE-L F = 2 LCS / (|a| + |b|), and the LCS cannot exceed the
number of tokens the two share (as multisets). An inverted index from token to instructions
gives that shared count for every instruction that shares a token at all; only those whose
bound reaches the threshold are scored exactly, by the `rouge_score` package (Google's
implementation that Self-Instruct used), with its tokenizer. The result is the same set
of duplicates as scoring every pair (tested against brute force).

Candidates come from prefix filtering: F > t needs a shared count above t n / (2 - t) for a
new text of n tokens (since the LCS is also at most the other text's length), so a match
must share at least one of the new text's n - that + 1 rarest token occurrences. Only
those occurrences' postings are read, and the common words ("the", "a") are never walked.
"""

from __future__ import annotations

from collections import Counter, defaultdict


class RougeIndex:
    """Instructions kept so far; `near_duplicate(text)` before `add(text)`."""

    def __init__(self, threshold: float = 0.7):
        from rouge_score import rouge_scorer, tokenize

        self.threshold = threshold
        self._scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
        self._tokenize = lambda t: tokenize.tokenize(t, None)
        self.texts: list[str] = []
        self._counts: list[Counter] = []
        self._lengths: list[int] = []
        self._postings: dict[str, list[int]] = defaultdict(list)
        self.exact_scored = 0          # how many pairs needed the exact score

    def __len__(self) -> int:
        return len(self.texts)

    def near_duplicate(self, text: str) -> tuple[int, float] | None:
        """(index, score) of a kept instruction with ROUGE-L F above the threshold, or None."""
        tokens = self._tokenize(text)
        counts = Counter(tokens)
        n = len(tokens)
        need = int(self.threshold * n / (2 - self.threshold)) + 1    # shared tokens at least
        if not n or need > n:
            return None
        by_rarity = sorted(tokens, key=lambda t: len(self._postings.get(t, ())))
        prefix = set(by_rarity[:n - need + 1])
        candidates = sorted({k for tok in prefix for k in self._postings.get(tok, ())})
        for k in candidates:
            overlap = sum((counts & self._counts[k]).values())
            if 2 * overlap / (n + self._lengths[k]) <= self.threshold:
                continue                # even a perfect LCS could not pass the threshold
            self.exact_scored += 1
            f = self._scorer.score(self.texts[k], text)["rougeL"].fmeasure
            if f > self.threshold:
                return k, f
        return None

    def add(self, text: str) -> None:
        counts = Counter(self._tokenize(text))
        k = len(self.texts)
        self.texts.append(text)
        self._counts.append(counts)
        self._lengths.append(sum(counts.values()))
        for tok in counts:
            self._postings[tok].append(k)
