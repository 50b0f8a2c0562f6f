"""Data: the datasets and the partition schemes that split them over clients.

Importing the package registers every dataset: the image sets (``datasets``) and CSV tables (``tabular``).
"""

from byzlab.orchestrator.data import datasets, tabular  # noqa: F401  (each registers its loaders)
