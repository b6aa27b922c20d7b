"""Scoring a participant's label against the hidden class offline: WordNet 3.0 (Debian's ``wordnet-base``, read by
nltk) and Wu–Palmer similarity between the label's noun senses and the class's synset, as the paper's label part.

ImageNet classes are WordNet noun synsets (timm ships their ids, ``n07920052`` = espresso). A label is tried whole
(``german shepherd`` -> ``german_shepherd``), then word by word; a word WordNet does not know is replaced by its
closest noun lemma (typos: ``expresso`` -> ``espresso``). The best similarity over all senses is the score.
"""

from __future__ import annotations

import difflib
import functools
import gzip
import os
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

from ..errors import VitalError

DEBIAN_WORDNET = Path("/usr/share/wordnet")
DEBIAN_LEXNAMES = Path("/usr/share/man/man5/lexnames.5WN.gz")
_CATEGORY = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}


def _lexnames(man_page: Path) -> str:
    """nltk needs the ``lexnames`` file, which Debian ships only as its man page: the same table, read from it."""
    rows = []
    with gzip.open(man_page, "rt", errors="replace") as f:
        for line in f:
            m = re.match(r"(\d\d)\t(\w+)\.(\w+)\s", line)
            if m:
                rows.append(f"{m[1]}\t{m[2]}.{m[3]}\t{_CATEGORY[m[2]]}\n")
    if len(rows) < 40:
        raise VitalError(f"cannot read WordNet's lexicographer file table from {man_page}")
    return "".join(rows)


@functools.lru_cache(maxsize=2)
def wordnet(root: str | os.PathLike[str] | None = None, cache: str | os.PathLike[str] | None = None) -> Any:
    """An nltk WordNet reader over Debian's WordNet 3.0 (or ``root``), made once per process."""
    import nltk
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    from ..cache import cache_root

    src = Path(root) if root else DEBIAN_WORDNET
    if not (src / "data.noun").is_file():
        raise VitalError(f"WordNet 3.0 is not at {src}: install it (apt-get install wordnet-base)")
    folder = Path(cache) if cache else cache_root(None) / "wordnet"
    folder.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():  # a folder nltk accepts (it refuses links out of its root): copies, plus lexnames
        copy = folder / f.name
        if f.is_file() and not copy.exists():
            tmp = folder / f".{f.name}.tmp"
            shutil.copyfile(f, tmp)
            os.replace(tmp, copy)
    if not (folder / "lexnames").exists():
        lex = src / "lexnames"
        (folder / "lexnames").write_text(lex.read_text() if lex.is_file() else _lexnames(DEBIAN_LEXNAMES))
    if str(folder) not in nltk.data.path:
        nltk.data.path.append(str(folder))  # nltk only reads corpora under its data path
    class Reader(WordNetCorpusReader):
        def map_wn(self, version: str = "wordnet") -> None:
            # nltk maps other WordNet versions to 3.0 through its downloadable 'wordnet' corpus (for the
            # multilingual OMW data); this is WordNet 3.0 itself, in English only: nothing to map.
            return None

    with warnings.catch_warnings():  # "multilingual functions are not available": we use English only
        warnings.simplefilter("ignore", UserWarning)
        return Reader(str(folder), None)


def synset_of(wn: Any, wnid: str) -> Any:
    """The synset of an ImageNet class id (``n07920052``)."""
    if not re.fullmatch(r"[nvar]\d{8}", wnid):
        raise VitalError(f"not a WordNet id: {wnid!r}")
    return wn.synset_from_pos_and_offset(wnid[0], int(wnid[1:]))


@functools.lru_cache(maxsize=4)
def _noun_lemmas(wn: Any) -> list[str]:
    return sorted({name.lower() for name in wn.all_lemma_names("n")})


def _senses(wn: Any, phrase: str) -> list[Any]:
    """The noun senses of ``phrase``, and of its closest noun lemma when it is not one itself (a typo)."""
    key = phrase.replace(" ", "_")
    senses = list(wn.synsets(key, "n"))
    if key not in _lemma_set(wn):
        for near in difflib.get_close_matches(key, _noun_lemmas(wn), n=3, cutoff=0.8):
            senses += [s for s in wn.synsets(near, "n") if s not in senses]
    return senses


@functools.lru_cache(maxsize=4)
def _lemma_set(wn: Any) -> frozenset[str]:
    return frozenset(_noun_lemmas(wn))


def _wup(sense: Any, target: Any) -> float:
    # nltk's wup_similarity gives a synset less than 1 with itself when its hypernym paths differ in length
    # (german_shepherd.n.01: 0.76, below dog.n.01's 0.84): the same sense is the perfect answer.
    return 1.0 if sense == target else float(sense.wup_similarity(target) or 0.0)


def label_score(wn: Any, label: str, target: Any) -> dict[str, Any]:
    """Wu–Palmer similarity (0..1) of ``label`` to the ``target`` synset: the best over the label whole and its
    words, each with its noun senses; which sense matched is returned for the report."""
    words = re.findall(r"[a-z]+(?:'[a-z]+)?", label.lower())[:12]
    if not words:
        return {"score": 0.0, "matched": None}
    phrases = [" ".join(words)] + ([" ".join(words[i : i + 2]) for i in range(len(words) - 1)] if len(words) > 1
                                   else []) + (words if len(words) > 1 else [])
    best: dict[str, Any] = {"score": 0.0, "matched": None}
    for phrase in phrases:
        for sense in _senses(wn, phrase):
            sim = _wup(sense, target)
            if sim > best["score"]:
                best = {"score": round(sim, 4), "matched": sense.name(), "phrase": phrase}
    return best
