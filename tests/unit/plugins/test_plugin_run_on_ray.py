"""One short `byzlab run` with a plug-in aggregator and model on digits, through the real Ray path, in a
fresh driver that imports the plug-ins from a sys.path entry of its own (neither its working directory
nor PYTHONPATH, which Ray would hand its local workers anyway): the workers can import them only because
byzlab ships their source as the job's runtime_env py_modules, which the aggregator reports from the
server actor. A cluster started without them is refused in one line before anything is written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
P = "byzlab_fixture_plugins.components:"
CONFIG = f"""\
server: {{aggregator: "{P}TrimmedMeanRule", aggregator_params: {{trim: 1}}}}
model: {{name: "{P}tiny_mlp", width: 12}}
clients: {{num_clients: 4, local_epochs: 1}}
run: {{rounds: 2, output_dir: out, client_actors: 1}}
tracking: {{enabled: false}}
"""
DRIVER = f"""\
import json, sys
sys.path.insert(0, {str(FIXTURES)!r})
import ray
from byzlab.orchestrator.cli import app

def byzlab(*args):
    try:
        app(list(args))
    except SystemExit as exit:
        return exit.code

ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR")  # the user's own, bare
refused = byzlab("run", "exp.yaml")
ray.shutdown()
done = byzlab("run", "exp.yaml", "--address", "local")  # byzlab starts the cluster and ships the plug-ins
print(json.dumps({{"refused": refused, "done": done}}))
"""


def test_a_plugin_run_ships_its_code_to_the_ray_workers(tmp_path):
    (tmp_path / "exp.yaml").write_text(CONFIG)
    env = {key: value for key, value in os.environ.items() if key not in ("RAY_ADDRESS", "PYTHONPATH")}
    done = subprocess.run([sys.executable, "-c", DRIVER], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    codes = json.loads(done.stdout.strip().splitlines()[-1])
    refusal = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert codes == {"refused": 2, "done": 0}, done.stderr[-3000:]
    assert refusal == [
        "error: plug-in module 'byzlab_fixture_plugins.components' (ModuleNotFoundError: No module named "
        "'byzlab_fixture_plugins') does not import in the Ray workers: install it on every node or ship it in "
        "ray.init(runtime_env={'py_modules': [...]}) (README, \"Your own components\")"
    ]
    [run_dir] = (tmp_path / "out").iterdir()  # the refused run wrote nothing; this is the shipped one
    metrics = pq.read_table(run_dir / "metrics.parquet").to_pydict()
    assert metrics["round"] == [1, 2] and all(acc > 0.1 for acc in metrics["test_accuracy"])
    assert metrics["agg_shipped"] == [1.0, 1.0]  # the server actor ran the shipped copy of the rule
