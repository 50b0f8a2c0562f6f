import pytest
import ray


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray instance for the whole session (2 CPUs, like CI)."""
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=1024**3, logging_level="ERROR")
    yield
    ray.shutdown()


@pytest.fixture
def clustered_updates():
    """Factory of a seeded toy round: ``make(d, n=10, seed=0)`` returns ``(updates, centre)``, n honest-looking
    updates scattered (std 0.01) around a common centre (std 0.05) in d dimensions."""
    import torch

    def make(d: int, n: int = 10, seed: int = 0):
        generator = torch.Generator().manual_seed(seed)
        centre = torch.randn(d, generator=generator) * 0.05
        return centre + 0.01 * torch.randn(n, d, generator=generator), centre

    return make
