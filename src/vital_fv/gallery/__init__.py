"""``vital gallery``: browse a results folder or an atlas job as a static site (opens from disk, no server).

- ``index``: what is there (records found recursively, an atlas job's unmade items, figures, unreadable records)
- ``build``: the site (thumbnails and data files made incrementally; the pages are the files in ``assets/``)

It reads what the other commands write; nothing outside it imports it.
"""

from .build import build_gallery, make_server, serve
from .index import scan

__all__ = ["build_gallery", "make_server", "scan", "serve"]
