"""Worker reuse end to end (actors/pool.py): a run on actors that another run used first gives bit for bit
the numbers stored for a run on new actors, and a pool replaces actors that died or that do not fit."""

from __future__ import annotations

import os

import pyarrow.parquet as pq
import pytest
import ray
import yaml

from byzlab.actors.pool import WorkerPool
from byzlab.actors.resources import plan_resources
from byzlab.orchestrator.config import build_config
from byzlab.orchestrator.run.experiment import execute, prepare
from byzlab.orchestrator.specs.inputs import resolve_inputs
from test_behaviour_unchanged import FIXTURES, TABLES, differences_from_every_set

pytestmark = pytest.mark.usefixtures("ray_cluster")

# The first run leaves as much state behind as a run can: poisoned labels in the client actor, another
# seed, population and partition, FoolsGold's history and FedAvgM's velocity in the server.
FIRST_RUN = ["threat.attack=label_flip", "threat.fraction=0.3", "run.seed=3", "clients.num_clients=12",
             "partition.beta=0.3", "server.aggregator=foolsgold", "server.momentum=0.9", "run.rounds=3"]
PLACEMENT = ["run.client_actors=1", "run.client_actor_cpus=1", "run.server_cpus=1", "tracking.enabled=false"]


_pid = lambda actor: os.getpid()  # noqa: E731  a lambda travels by value: workers cannot import this module


class LendingLog(WorkerPool):
    """A pool that notes the processes of the actors it lends, server first."""

    def __init__(self) -> None:
        super().__init__()
        self.lent: list[list[int]] = []

    def borrow(self, inputs, resources):
        server, clients = super().borrow(inputs, resources)
        self.lent.append(ray.get([actor.__ray_call__.remote(_pid) for actor in [server, *clients]]))
        return server, clients


def _config(overrides: list[str], output_dir, raw: dict | None = None):
    return build_config(raw or {}, [*PLACEMENT, *overrides, f"run.output_dir={output_dir}"])


@pytest.mark.slow  # 7 s; the default suite resets workers in process (tests/unit/actors/test_worker_reuse.py)
def test_a_run_on_actors_another_run_used_has_the_numbers_of_new_actors(tmp_path):
    pool = LendingLog()
    try:
        execute(prepare(_config(FIRST_RUN, tmp_path / "first")), workers=pool)
        stored = "digits_fedra_signflip_quantity"
        raw = yaml.safe_load((FIXTURES / f"{stored}.yaml").read_text())
        result = execute(prepare(_config([], tmp_path / "second", raw)), workers=pool)
    finally:
        pool.discard()
    assert pool.lent[1] == pool.lent[0]  # the same server and client processes
    tables = {}
    for table in TABLES:
        actual = pq.read_table(result.run_dir / f"{table}.parquet")
        tables[table] = actual.drop_columns([c for c in actual.column_names if c.endswith("_seconds")])
    assert differences_from_every_set(stored, tables, view=lambda table: table) is None


@pytest.mark.slow  # 14 s: seven actor processes start
def test_a_pool_replaces_actors_that_died_or_do_not_fit_the_run(tmp_path):
    cfg = _config([], tmp_path)
    inputs, resources = resolve_inputs(cfg), plan_resources(cfg.run, 0)
    pool = LendingLog()
    try:
        server, _ = pool.borrow(inputs, resources)
        pool.borrow(inputs, resources)
        assert pool.lent[1] == pool.lent[0]
        ray.kill(server)
        with pytest.raises(ray.exceptions.RayActorError):
            ray.get(server.__ray_call__.remote(_pid))
        pool.borrow(inputs, resources)  # the reset finds the server dead: every actor is new
        assert set(pool.lent[2]).isdisjoint(pool.lent[1])
        two_clients = plan_resources(_config(["run.client_actors=2", "run.client_actor_cpus=0.5",
                                              "run.server_cpus=0.5"], tmp_path).run, 0)
        pool.borrow(inputs, two_clients)  # other bundles: new actors, as many as the run asks for
        assert len(pool.lent[3]) == 3 and set(pool.lent[3]).isdisjoint(pool.lent[2])
    finally:
        pool.discard()
