"""Text as token ids: character vocabularies for next-character prediction (LEAF's Shakespeare, LASA
Table 4) and word vocabularies for classification (Amazon reviews in residual reweighting §4.1, MIND news
topics in FedRA §5.1).

A vocabulary is built from the training texts only and lists its tokens by id: id 0 pads, id 1 stands for
any token outside the vocabulary (a test text may contain such tokens; they are not an error). Words are
split with scikit-learn's ``CountVectorizer`` analyzer (lower-cased, tokens of two or more word
characters); its ``max_features`` keeps the most frequent words.

Every text becomes a row of exactly ``max_length`` ids. A longer text is cut when ``truncate`` is set (a
word text keeps its first words, a character context its last characters: the ones the next character
follows) and is otherwise an error naming the row and its length.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np

PAD, UNKNOWN = "<pad>", "<unk>"
RESERVED = (PAD, UNKNOWN)  # ids 0 and 1


def character_vocabulary(texts: Sequence[str]) -> tuple[str, ...]:
    """The characters of ``texts``, most frequent first (ties by code point), after the two reserved ids."""
    counts = np.bincount(_code_points(texts).ravel())
    counts[0] = 0  # the padding of shorter texts
    present = np.flatnonzero(counts)
    ordered = present[np.lexsort((present, -counts[present]))]
    return (*RESERVED, *(chr(code) for code in ordered))


def encode_characters(texts: Sequence[str], vocabulary: tuple[str, ...], max_length: int, truncate: bool,
                      column: str) -> np.ndarray:
    """(N, max_length) int64 ids, each text right-aligned (padding first: a recurrent model reads the
    context up to the character to predict last). Vectorised over code points: Shakespeare has 4.2 million
    contexts."""
    _check_lengths([len(text) for text in texts], max_length, truncate, column, "characters")
    codes = _code_points([text[-max_length:] for text in texts], max_length)
    lengths = (codes != 0).sum(axis=1)
    source = np.arange(max_length)[None, :] - (max_length - lengths)[:, None]  # right-aligned column -> left one
    aligned = np.where(source >= 0, np.take_along_axis(codes, np.clip(source, 0, None), axis=1), 0)
    return _ids_of_code_points(aligned, vocabulary)


def _code_points(texts: Sequence[str], width: int | None = None) -> np.ndarray:
    """(N, width) uint32 Unicode code points, zero-padded on the right."""
    if not len(texts):
        return np.zeros((0, width or 0), dtype=np.uint32)
    array = np.array(texts, dtype=f"<U{width or max(1, max(map(len, texts)))}")
    return array.view(np.uint32).reshape(len(texts), -1)


def _ids_of_code_points(codes: np.ndarray, vocabulary: tuple[str, ...]) -> np.ndarray:
    """Vocabulary ids of code points: 0 stays padding, a character outside the vocabulary is ``<unk>``."""
    known = np.array([ord(char) for char in vocabulary[len(RESERVED):]], dtype=np.uint32)
    order = np.argsort(known)
    position = np.clip(np.searchsorted(known[order], codes), 0, max(len(known) - 1, 0))
    found = known[order][position] == codes if len(known) else np.zeros(codes.shape, dtype=bool)
    ids = np.where(found, order[position] + len(RESERVED), 1)
    return np.where(codes == 0, 0, ids).astype(np.int64)


def character_labels(targets: Sequence[str], vocabulary: tuple[str, ...], column: str) -> np.ndarray:
    """The id of each one-character target (the class to predict); an unseen character is ``<unk>``."""
    bad = next((target for target in targets if len(target) != 1), None)
    if bad is not None:
        raise ValueError(f"label column '{column}' must hold single characters, found {bad!r}")
    ids = {char: index for index, char in enumerate(vocabulary) if index >= len(RESERVED)}
    return np.fromiter((ids.get(target, 1) for target in targets), dtype=np.int64, count=len(targets))


def word_analyzer():
    """scikit-learn's word splitter: lower-cased tokens of two or more word characters."""
    from sklearn.feature_extraction.text import CountVectorizer  # here: slow to import, text data only

    return CountVectorizer().build_analyzer()


def word_vocabulary(texts: Sequence[str], vocab_size: int, min_count: int) -> tuple[str, ...]:
    """The ``vocab_size - 2`` most frequent words of ``texts`` seen at least ``min_count`` times (in how many
    texts, as ``CountVectorizer``'s ``min_df``), in alphabetical order after the two reserved ids."""
    from sklearn.feature_extraction.text import CountVectorizer

    vectorizer = CountVectorizer(max_features=vocab_size - len(RESERVED), min_df=min_count)
    try:
        vectorizer.fit(texts)
    except ValueError:  # no word survives min_count
        raise ValueError(f"no word occurs in at least {min_count} training texts; lower min_count") from None
    return (*RESERVED, *vectorizer.get_feature_names_out().tolist())


def encode_words(texts: Sequence[str], vocabulary: tuple[str, ...], max_length: int, truncate: bool,
                 column: str) -> np.ndarray:
    """(N, max_length) int64 ids, each text's words from the left, padded at the end."""
    analyze = word_analyzer()
    tokens = [analyze(text) for text in texts]
    _check_lengths([len(words) for words in tokens], max_length, truncate, column, "words")
    ids = {word: index for index, word in enumerate(vocabulary) if index >= len(RESERVED)}
    encoded = np.zeros((len(texts), max_length), dtype=np.int64)
    for row, words in enumerate(tokens):
        kept = words[:max_length]
        encoded[row, : len(kept)] = [ids.get(word, 1) for word in kept]
    return encoded


def _check_lengths(lengths: list[int], max_length: int, truncate: bool, column: str, unit: str) -> None:
    if truncate or not lengths:
        return
    longest = int(np.argmax(lengths))
    if lengths[longest] > max_length:
        raise ValueError(
            f"column '{column}' row {longest} has {lengths[longest]} {unit}, more than max_length {max_length}; "
            "raise max_length or set truncate: true"
        )
