"""``vital study``: the paper's human studies (§4.3, Appendix D) as a product: a results folder becomes a study,
served to participants on a network, answers in SQLite, the paper's figures out.

- ``design``: ``create_study`` (stimuli under opaque ids, Latin-square subsets, unprimed labels, attention checks,
  the participants' texts, trial lists)
- ``queries``: the 2AFC's queries, the extremes of a scan of an image folder
- ``store``: the study's SQLite database (WAL; answers committed when given, stored once; pilots flagged)
- ``server``: the FastAPI app (pages in ``assets/``), ``serve``
- ``wordnet``: Wu–Palmer label scores offline (WordNet 3.0)
- ``report``: status, label cosines by a sentence encoder, the export, the figures and tables; ``simulate``:
  classifier participants over HTTP (pilots)

It reads what the other commands write; nothing outside it imports it.
"""

from .design import PARTS, create_study
from .store import Store

__all__ = ["PARTS", "Store", "create_study"]
