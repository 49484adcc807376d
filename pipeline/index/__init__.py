"""Indexing a video archive (``sam3-stream index``): which files to read, what is already indexed,
and the work left to do.

- :mod:`pipeline.index.inputs`: the archive's files, from paths, globs, manifests or object-store prefixes.
- :mod:`pipeline.index.catalog`: the dataset's ``files`` table and the plan of each run (incremental:
  new, changed and failed files, concepts added to the watchlist, a new model).

The dataset's tables and layout are described in :mod:`operators.index_tables`.
"""
