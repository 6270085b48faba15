"""BMC's diff masks: which tokens of the pseudo-winner and the loser a targeted rewrite changed,
stop words excluded. Computed once per pair by the rewrite stage; the trainer weights the marked
tokens (align/train/bmc.py).

Jiang et al., "Bridging and Modeling Correlations in Pairwise Data for Direct Preference
Optimization", arXiv 2408.07471 (ICLR 2025).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from typing import Any

# English function words: pronouns, determiners, prepositions, conjunctions, auxiliaries and
# the pieces tokenizers split contractions into. Edits confined to these rarely decide which
# response is better, so they are never up-weighted. Negations ("no", "not", "nor") stay in
# the list because the paper's filter (NLTK's list) has them.
ENGLISH_STOPWORDS: tuple[str, ...] = (
    # pronouns, possessives, demonstratives, interrogatives
    "i", "me", "my", "mine", "myself", "we", "us", "our", "ours", "ourselves",
    "you", "your", "yours", "yourself", "yourselves", "he", "him", "his", "himself",
    "she", "her", "hers", "herself", "it", "its", "itself", "they", "them", "their",
    "theirs", "themselves", "this", "that", "these", "those", "what", "which", "who",
    "whom", "whose",
    # auxiliaries, copulas, modals
    "am", "is", "are", "was", "were", "be", "been", "being", "have", "has", "had",
    "having", "do", "does", "did", "doing", "will", "would", "shall", "should", "can",
    "could", "may", "might", "must",
    # articles, determiners, quantifiers, negation
    "a", "an", "the", "some", "any", "each", "every", "either", "neither", "few",
    "many", "much", "more", "most", "other", "another", "such", "both", "all", "own",
    "same", "no", "nor", "not", "only",
    # conjunctions and subordinators
    "and", "but", "or", "if", "because", "as", "since", "until", "unless", "while",
    "whether", "although", "though", "so", "than", "then", "yet", "once",
    # prepositions and particles
    "of", "at", "by", "for", "with", "without", "within", "about", "against", "among",
    "between", "into", "onto", "upon", "through", "during", "before", "after", "above",
    "below", "to", "from", "up", "down", "in", "out", "on", "off", "over", "under",
    # adverbs of place, time and degree
    "here", "there", "when", "where", "why", "how", "again", "further", "also", "very",
    "too", "just", "now",
    # contraction pieces as tokenizers split them ("don't" -> "don" + "'" + "t")
    "s", "t", "d", "ll", "m", "re", "ve", "don", "doesn", "didn", "isn", "aren",
    "wasn", "weren", "hasn", "haven", "hadn", "won", "wouldn", "couldn", "shouldn",
)  # fmt: skip


def stopword_token_ids(tokenizer: Any, words: Iterable[str] = ENGLISH_STOPWORDS) -> set[int]:
    """Token ids of the stop words (and their capitalised forms) that are a single token.

    The paper's filter, with our own word list in place of NLTK's (no NLTK dependency).

    Each form is tried with and without a leading space, since BPE vocabularies hold " the" and
    "the" as different tokens. Multi-token words are skipped: a piece of a word cannot be told
    apart from the same piece inside a content word. ``tokenizer`` needs
    ``encode(text, add_special_tokens=False)`` returning ids (HF tokenizers) or an object with
    ``.ids`` (``tokenizers.Tokenizer``); its ``unk_token_id``, if any, is never returned.
    """
    forms = set(words)
    # Capitalise words, not contraction pieces: "A" and "I" are stop words, "T" and "S" are not.
    forms |= {w.capitalize() for w in forms if len(w) > 1 or w in ("a", "i")}
    # A word the vocabulary lacks may come back as the lone unknown token; that is not a match.
    unknown = getattr(tokenizer, "unk_token_id", None)
    ids: set[int] = set()
    for form in sorted(forms):
        for text in (form, " " + form):
            encoded = tokenizer.encode(text, add_special_tokens=False)
            token_ids = list(getattr(encoded, "ids", encoded))
            if len(token_ids) == 1 and token_ids[0] != unknown:
                ids.add(int(token_ids[0]))
    return ids


def bmc_diff_masks(
    chosen_ids: Sequence[int],
    rejected_ids: Sequence[int],
    stopword_ids: set[int],
    *,
    autojunk: bool = True,
) -> tuple[list[int], list[int]]:
    """Mark the tokens that differ between the pseudo-winner and the loser.

    ``difflib.SequenceMatcher(a=rejected_ids, b=chosen_ids)``: chosen positions inside
    ``replace``/``insert`` opcodes and rejected positions inside ``replace``/``delete`` opcodes
    get 1, except stop-word ids, which always get 0. Returns ``(chosen_mask, rejected_mask)``,
    lists of 0/1 as long as the inputs. Pass the response ids whose per-token log-probs the
    masks will weight. ``autojunk=True`` is difflib's default, which the official code keeps
    (for sequences of 200+ tokens very frequent ids cannot anchor a match).
    """
    matcher = difflib.SequenceMatcher(None, list(rejected_ids), list(chosen_ids), autojunk=autojunk)
    chosen_mask = [0] * len(chosen_ids)
    rejected_mask = [0] * len(rejected_ids)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag in ("replace", "delete"):
            for i in range(i1, i2):
                rejected_mask[i] = int(rejected_ids[i] not in stopword_ids)
        if tag in ("replace", "insert"):
            for j in range(j1, j2):
                chosen_mask[j] = int(chosen_ids[j] not in stopword_ids)
    return chosen_mask, rejected_mask
