import numpy as np
import pytest

from byzlab.orchestrator.core.errors import ConfigError
from byzlab.orchestrator.config import ProxyDataConfig
from byzlab.orchestrator.data.datasets import DEBIAN_FASHION_MNIST_DIR, load_dataset
from byzlab.orchestrator.specs.server_data import match_input_shape, take_proxy_data


def test_match_input_shape_converts_channels_and_size():
    colour = np.zeros((2, 3, 4, 4), dtype=np.float32)
    colour[:, 0] = 3.0  # red channel only: grey = mean of the channels = 1
    grey = match_input_shape(colour, (1, 8, 8))
    assert grey.shape == (2, 1, 8, 8) and np.allclose(grey, 1.0)
    back = match_input_shape(grey, (3, 2, 2))
    assert back.shape == (2, 3, 2, 2) and np.allclose(back, 1.0)
    assert np.array_equal(match_input_shape(colour, (3, 4, 4)), colour)


def test_holdout_proxy_is_removed_from_the_clients_pool():
    digits = load_dataset("digits")
    clients, (px, py) = take_proxy_data(ProxyDataConfig(size=50), digits, np.random.default_rng(0),
                                        data_root=None, download=False)
    assert len(py) == 50 and len(clients.train_y) == len(digits.train_y) - 50
    rows = {row.tobytes() for row in digits.train_x.reshape(len(digits.train_y), -1)}
    proxy_rows = {row.tobytes() for row in px.reshape(50, -1)}
    client_rows = {row.tobytes() for row in clients.train_x.reshape(len(clients.train_y), -1)}
    assert proxy_rows <= rows and not proxy_rows & client_rows
    with pytest.raises(ConfigError, match="must be smaller than the training set"):
        take_proxy_data(ProxyDataConfig(size=5000), digits, np.random.default_rng(0), data_root=None, download=False)


def test_proxy_from_another_dataset_is_converted_to_the_model_input():
    if not DEBIAN_FASHION_MNIST_DIR.is_dir():
        pytest.skip("needs Debian's dataset-fashion-mnist")
    digits = load_dataset("digits")
    clients, (px, py) = take_proxy_data(ProxyDataConfig(source="fashion-mnist", size=30), digits,
                                        np.random.default_rng(0), data_root=None, download=False)
    assert clients is digits  # nothing held out
    assert px.shape == (30, 1, 8, 8) and py.shape == (30,) and py.max() < 10


def test_tiny_imagenet_as_sdea_public_data_reads_a_sample_in_the_models_shape(tmp_path):
    """SDEA's default public data (§4.1, Table 3): Tiny-ImageNet's colour 64x64 images become the clients'
    8x8 grey digits; only the requested number of images is decoded."""
    import hub_fixtures
    from byzlab.orchestrator.config import build_config
    from byzlab.orchestrator.specs.inputs import load_configured_dataset
    from byzlab.orchestrator.specs.server_data import prepare_server_data

    hub_fixtures.write_tiny_imagenet(tmp_path)
    cfg = build_config({}, ["server.aggregator=sdea", "server.public_data.source=tiny-imagenet",
                            "server.public_data.size=50", f"data.data_root={tmp_path}"])
    _, server_data = prepare_server_data(cfg, load_configured_dataset(cfg))
    assert server_data.public.shape == (50, 1, 8, 8) and np.isfinite(server_data.public).all()


def test_a_holdout_proxy_keeps_the_group_of_every_remaining_sample():
    groups = np.arange(30) % 3
    dataset = load_dataset("digits")
    from dataclasses import replace

    dataset = replace(dataset, train_x=dataset.train_x[:30], train_y=dataset.train_y[:30], train_groups=groups)
    clients, _ = take_proxy_data(ProxyDataConfig(size=5), dataset, np.random.default_rng(0), data_root=None,
                                 download=False)
    kept = [i for i in range(30) if any(np.array_equal(dataset.train_x[i], x) for x in clients.train_x)]
    assert len(kept) == 25 and clients.train_groups.tolist() == groups[kept].tolist()
