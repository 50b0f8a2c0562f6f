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


@pytest.fixture
def loan_csv(tmp_path):
    """Factory of a small Lending-Club-style CSV (the real column names; synthetic rows whose status follows
    the grade and interest rate): ``make(rows=600, seed=0) -> path``. ``addr_state`` is the natural
    partition column (6 states of different sizes)."""
    import csv

    import numpy as np

    def make(rows: int = 600, seed: int = 0, name: str = "loan.csv"):
        rng = np.random.default_rng(seed)
        states = rng.choice(["CA", "NY", "TX", "FL", "IL", "WA"], size=rows, p=[0.3, 0.2, 0.2, 0.1, 0.1, 0.1])
        grade = rng.integers(0, 7, size=rows)
        rate = 5 + 3 * grade + rng.normal(0, 1, size=rows)
        income = rng.lognormal(11, 0.5, size=rows)
        score = -grade + 0.3 * np.log(income / 60_000) + rng.normal(0, 0.4, size=rows)
        status = np.where(score < -4, "Charged Off", np.where(score < -1.5, "Current", "Fully Paid"))
        path = tmp_path / name
        with open(path, "w", newline="") as file:
            writer = csv.writer(file)
            writer.writerow(["id", "loan_amnt", "term", "int_rate", "grade", "home_ownership", "annual_inc",
                             "addr_state", "loan_status"])
            for i in range(rows):
                writer.writerow([i, int(rng.integers(1, 40)) * 1000, rng.choice([" 36 months", " 60 months"]),
                                 round(rate[i], 2), "ABCDEFG"[grade[i]], rng.choice(["RENT", "OWN", "MORTGAGE"]),
                                 round(income[i], 2), states[i], status[i]])
        return path

    return make
