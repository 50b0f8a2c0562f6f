"""Data the server holds: a small labeled proxy set (FLTrust, Sageflow) and unlabeled public images (SDEA).

The proxy set is either a held-out slice of the training data (removed from the clients' pool, so no
sample is both) or a slice of another dataset with the same label space, converted to the model's input
shape (SDEA Table 5 gives FLTrust and Sageflow USPS, SVHN or SYN as proxies for MNIST).

Public data (SDEA §3.2, Table 3c) may be anything: another dataset's images with labels dropped, or patches
cut from scikit-learn's two bundled sample photographs (``sample_patches``), a stand-in for the paper's
Tiny-ImageNet that needs no download. Either is converted to the model's input shape.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F

from byzlab.orchestrator.core.errors import ConfigError
from byzlab.aggregators import aggregator_class
from byzlab.orchestrator.config import ExperimentConfig, ProxyDataConfig, PublicDataConfig
from byzlab.orchestrator.data.datasets import DATASETS, Dataset, load_dataset
from byzlab.orchestrator.core.seeding import Stream, numpy_rng


def match_input_shape(images: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Images (N, C, H, W) converted to ``shape`` = (C', H', W'): channels averaged (colour -> grey) or
    repeated (grey -> colour), then resized bilinearly with antialiasing."""
    x = torch.from_numpy(images)
    channels, height, width = shape
    if x.shape[1] != channels:
        x = x.mean(dim=1, keepdim=True) if channels == 1 else x.mean(dim=1, keepdim=True).expand(-1, channels, -1, -1)
    if tuple(x.shape[2:]) != (height, width):
        x = F.interpolate(x, size=(height, width), mode="bilinear", antialias=True, align_corners=False)
    return np.ascontiguousarray(x.numpy(), dtype=np.float32)


def take_proxy_data(
    spec: ProxyDataConfig, dataset: Dataset, rng: np.random.Generator, *, data_root: str | None, download: bool
) -> tuple[Dataset, tuple[np.ndarray, np.ndarray]]:
    """The clients' dataset (without a held-out proxy slice) and the proxy set (images, labels)."""
    if spec.source == "holdout":
        if spec.size >= len(dataset.train_y):
            raise ConfigError(f"server.proxy_data.size ({spec.size}) must be smaller than the training set")
        order = rng.permutation(len(dataset.train_y))
        proxy, kept = np.sort(order[: spec.size]), np.sort(order[spec.size :])
        groups = None if dataset.train_groups is None else dataset.train_groups[kept]
        clients = replace(dataset, train_x=dataset.train_x[kept], train_y=dataset.train_y[kept], train_groups=groups)
        return clients, (dataset.train_x[proxy], dataset.train_y[proxy])
    other = load_dataset(spec.source, data_root, download)
    if other.num_classes != dataset.num_classes:
        raise ConfigError(
            f"server.proxy_data.source '{spec.source}' has {other.num_classes} classes, "
            f"{dataset.name} has {dataset.num_classes}: a proxy set needs the same label space"
        )
    size = min(spec.size, len(other.train_y))
    chosen = np.sort(rng.choice(len(other.train_y), size=size, replace=False))
    return dataset, (match_input_shape(other.train_x[chosen], dataset.input_shape), other.train_y[chosen])


def sample_photo_patches(count: int, shape: tuple[int, int, int], rng: np.random.Generator) -> np.ndarray:
    """``count`` random patches of scikit-learn's bundled sample photographs (china.jpg, flower.jpg), each
    cut at four times the target size, converted to ``shape`` and standardised (mean 0, std 1 overall)."""
    from sklearn.datasets import load_sample_images

    channels, height, width = shape
    _check_memory("server.public_data.size", count, 4 * (3 * 16 + 2 * channels) * height * width)
    photos = [np.asarray(image, dtype=np.float32) / 255.0 for image in load_sample_images().images]
    patch_h, patch_w = 4 * height, 4 * width
    patches = np.empty((count, 3, patch_h, patch_w), dtype=np.float32)
    which = rng.integers(len(photos), size=count)
    for i, photo in enumerate(which):
        image = photos[photo]
        top = rng.integers(image.shape[0] - patch_h + 1)
        left = rng.integers(image.shape[1] - patch_w + 1)
        patches[i] = image[top : top + patch_h, left : left + patch_w].transpose(2, 0, 1)
    public = match_input_shape(patches, shape)
    return (public - public.mean()) / public.std()


def _check_memory(field: str, count: int, bytes_each: int) -> None:
    """Refuse (ConfigError naming ``field``) ``count`` items of ``bytes_each`` bytes that would take more
    than half of this machine's memory, rather than fail allocating them."""
    try:
        budget = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows): nothing to check against
        return
    if count * bytes_each > budget:
        raise ConfigError(f"{field} ({count}) needs {count * bytes_each / 2**30:.1f} GiB on the driver, more than half "
                          f"of this machine's memory; at most {budget // bytes_each} fit")


def load_public_data(
    spec: PublicDataConfig, shape: tuple[int, int, int], rng: np.random.Generator, *, data_root: str | None,
    download: bool,
) -> np.ndarray:
    """Unlabeled public images (N, C, H, W) in the model's input shape."""
    if spec.source == "sample_patches":
        return sample_photo_patches(spec.size, shape, rng)
    # A hub source reads only a sample of its rows: Tiny-ImageNet's 100,000 images would take 5 GB as floats.
    sample = {"max_rows": spec.size} if "max_rows" in DATASETS.get(spec.source).Params.model_fields else {}
    other = load_dataset(spec.source, data_root, download, **sample)
    size = min(spec.size, len(other.train_y))
    chosen = np.sort(rng.choice(len(other.train_y), size=size, replace=False))
    return match_input_shape(other.train_x[chosen], shape)


@dataclass
class ServerData:
    proxy: tuple[np.ndarray, np.ndarray] | None = None  # labeled (images, labels)
    public: np.ndarray | None = None  # unlabeled images


def prepare_server_data(cfg: ExperimentConfig, dataset: Dataset) -> tuple[Dataset, ServerData]:
    """The data the configured aggregator needs on the server, and the clients' dataset (smaller by a
    held-out proxy slice, if any). A rule's ``needs`` names ``proxy_data`` / ``public_data`` if it reads them."""
    rule = aggregator_class(cfg.server.aggregator)
    data, server_data = cfg.data, ServerData()
    if not dataset.is_images and ("public_data" in rule.needs or (
            "proxy_data" in rule.needs and cfg.server.proxy_data.source != "holdout")):
        raise ConfigError(f"server.aggregator '{cfg.server.aggregator}': its server data is images shaped like the "
                          f"clients' inputs, but {dataset.name} holds rows; use server.proxy_data.source: holdout "
                          "(or a rule without public data)")
    if "proxy_data" in rule.needs:
        dataset, server_data.proxy = take_proxy_data(
            cfg.server.proxy_data, dataset, numpy_rng(cfg.run.seed, Stream.PROXY_DATA),
            data_root=data.data_root, download=data.download,
        )
    if "public_data" in rule.needs:
        server_data.public = load_public_data(
            cfg.server.public_data, dataset.input_shape, numpy_rng(cfg.run.seed, Stream.PUBLIC_DATA),
            data_root=data.data_root, download=data.download,
        )
    return dataset, server_data
