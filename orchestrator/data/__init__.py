"""Data: the datasets and the partition schemes that split them over clients."""
