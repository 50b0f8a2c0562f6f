"""Data: the datasets and the partition schemes that split them over clients.

Importing the package registers every dataset: the image sets (``datasets``), CSV tables (``tabular``) and
everything Hugging Face ``datasets`` reads (``hub``, and the papers' public copies in ``hub_catalog``).
"""

from byzlab.orchestrator.data import datasets, hub, hub_catalog, tabular  # noqa: F401  (each registers its loaders)
