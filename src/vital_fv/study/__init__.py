"""``vital study``: the paper's human studies (§4.3, Appendix D) as a product: a results folder becomes a study,
served to participants on a network, answers in SQLite, the paper's figures out.

- ``design``: ``create_study`` (stimuli under opaque ids, Latin-square subsets, attention checks, trial lists)
- ``store``: the study's SQLite database (WAL; answers committed when given, stored once)
- ``server``: the FastAPI app (pages in ``assets/``), ``serve``, the CSV export
- ``wordnet``: label scoring offline (WordNet 3.0, Wu–Palmer)
- ``report``: status, the figures and tables; ``simulate``: classifier participants over HTTP

It reads what the other commands write; nothing outside it imports it.
"""

from .design import PARTS, create_study
from .store import Store

__all__ = ["PARTS", "Store", "create_study"]
