"""Hub data end to end, one modality at a time, on copies written in the real formats (tests/hub_fixtures.py)
and read through the same code path as the downloaded data: the README's examples reach well above chance,
and under an attack a robust rule keeps the accuracy FedAvg loses."""

from pathlib import Path

import pytest

import hub_fixtures
from byzlab.orchestrator.config import build_config, load_config
from byzlab.orchestrator.run.experiment import run_experiment

pytestmark = pytest.mark.usefixtures("ray_cluster")
REPOSITORY = Path(__file__).resolve().parents[2]


# The two slowest examples are left to `-m slow`; the tests below take their data paths in fewer rounds.
@pytest.mark.parametrize("example, dataset, model, floor", [
    pytest.param("shakespeare-tiny", "shakespeare", "char_lstm", 0.5, marks=pytest.mark.slow),  # top character: 18%
    pytest.param("femnist-tiny", "femnist", "cnn", 0.6, marks=pytest.mark.slow),  # ten classes
    ("amazon-tiny", "amazon-kindle", "fasttext", 0.9),  # two balanced classes
    ("adult-tiny", "adult", "mlp", 0.8),  # the larger class holds 58% of the rows
])
def test_the_readme_examples_run_on_their_tiny_copies(tmp_path, monkeypatch, example, dataset, model, floor):
    monkeypatch.chdir(REPOSITORY)
    cfg = load_config(f"examples/{example}.yaml", [f"run.output_dir={tmp_path}", "tracking.enabled=false"])
    assert (cfg.data.dataset, cfg.model.name) == (dataset, model)
    assert run_experiment(cfg).summary["acc_final"] > floor


def _run(tmp_path, root, name, *overrides):
    cfg = build_config({}, [f"run.output_dir={tmp_path / name}", "tracking.enabled=false", f"data.data_root={root}",
                            *overrides])
    return run_experiment(cfg).summary["acc_final"]


@pytest.mark.slow  # the word path also runs by default in the amazon example and the token-backdoor test
def test_words_a_robust_rule_withstands_what_breaks_fedavg(tmp_path):
    root = tmp_path / "data"
    hub_fixtures.write_amazon_kindle(root)
    setting = ["data.dataset=amazon-kindle", "data.max_length=32", "model.embedding_dim=32", "partition.scheme=iid",
               "clients.lr=0.5", "run.rounds=8", "threat.fraction=0.3", "threat.attack=sign_flip",
               "threat.attack_params.scale=4"]
    fedavg = _run(tmp_path, root, "fedavg", *setting)
    median = _run(tmp_path, root, "median", *setting, "server.aggregator=median")
    assert fedavg < 0.7 and median > 0.9


def test_characters_a_robust_rule_withstands_what_breaks_fedavg(tmp_path):
    root = tmp_path / "data"
    hub_fixtures.write_shakespeare(root, roles=8, per_role=80)  # two roles per line
    setting = ["data.dataset=shakespeare", "partition.scheme=natural", "clients.num_clients=8", "model.hidden_size=32",
               "clients.lr=2.0", "clients.momentum=0.5", "clients.batch_size=16", "clients.local_steps=20",
               "run.rounds=12", "threat.fraction=0.25", "threat.attack=sign_flip", "threat.attack_params.scale=4"]
    fedavg = _run(tmp_path, root, "fedavg", *setting)
    median = _run(tmp_path, root, "median", *setting, "server.aggregator=median")
    assert fedavg < 0.15 and median > 0.4  # the most frequent character is 18% of the labels


def test_images_a_robust_rule_withstands_what_breaks_fedavg(tmp_path):
    root = tmp_path / "data"
    hub_fixtures.write_femnist(root, writers=8, per_writer=60)
    setting = ["data.dataset=femnist", "partition.scheme=natural", "clients.num_clients=8", "model.name=residual_cnn",
               "clients.local_epochs=3", "clients.batch_size=16", "run.rounds=6", "threat.fraction=0.25",
               "threat.attack=sign_flip", "threat.attack_params.scale=4"]
    fedavg = _run(tmp_path, root, "fedavg", *setting)
    median = _run(tmp_path, root, "median", *setting, "server.aggregator=median")
    assert fedavg < 0.3 and median > 0.6


def test_a_token_backdoor_succeeds_against_fedavg(tmp_path):
    """The trigger word turns reviews negative. The control run triggers the same test rows but poisons no
    training row: its rate is what the word alone does to the clean model."""
    root = tmp_path / "data"
    hub_fixtures.write_amazon_kindle(root)
    backdoor = ["data.dataset=amazon-kindle", "data.max_length=32", "model.embedding_dim=32", "partition.scheme=iid",
                "clients.lr=0.5", "run.rounds=8", "threat.fraction=0.3", "threat.attack=token_backdoor",
                "threat.attack_params.tokens=[author, author, author]", "threat.attack_params.target=0",
                "threat.attack_params.local_epochs=5"]
    attacked = run_experiment(build_config({}, [f"run.output_dir={tmp_path / 'a'}", "tracking.enabled=false",
                                                f"data.data_root={root}", *backdoor]))
    control = run_experiment(build_config({}, [f"run.output_dir={tmp_path / 'c'}", "tracking.enabled=false",
                                               f"data.data_root={root}", *backdoor,
                                               "threat.attack_params.poisoned_per_batch=0"]))
    assert attacked.metrics.column("backdoor_asr").to_pylist()[-1] >= 0.8
    assert control.metrics.column("backdoor_asr").to_pylist()[-1] <= 0.3
    assert attacked.summary["acc_final"] >= 0.8


def test_news_topics_with_a_text_cnn_on_glove_embeddings(tmp_path):
    """FedRA's MIND setting in small: title + abstract, a Text-CNN whose embedding starts from a GloVe file."""
    root = tmp_path / "data"
    hub_fixtures.write_mind(root)
    words = sorted({w for topic in hub_fixtures.MIND_TOPICS.values() for w in topic} | set(hub_fixtures._FILLER))
    glove = hub_fixtures.write_glove(tmp_path / "glove.20d.txt", words, dim=20)
    accuracy = _run(tmp_path, root, "mind", "data.dataset=mind", "model.name=text_cnn", "model.embedding_dim=20",
                    "model.num_filters=16", f"model.embeddings_path={glove}", "model.dropout=0.2",
                    "partition.scheme=dirichlet", "clients.lr=0.1", "run.rounds=8")
    assert accuracy > 0.8  # four balanced topics
