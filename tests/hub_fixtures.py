"""Small stand-ins for the hub datasets, written in their real formats with their real column names: a
``save_to_disk`` copy where byzlab looks for the hub dataset (``<root>/huggingface/<owner>___<name>``),
MIND's headerless news.tsv, a GloVe-format text file. The rows are synthetic but learnable (the label
follows the inputs), so end-to-end runs on them can reach well above chance.

``python tests/hub_fixtures.py examples/data`` rewrites the copies the README's examples run on.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from byzlab.orchestrator.data.hub import saved_copy_dir
from byzlab.orchestrator.data.hub_catalog import LENDING_CLUB_FEATURES, MIND_COLUMNS

FEMNIST_CHARACTERS = [*"0123456789", *"ABCDEFGHIJKLMNOPQRSTUVWXYZ", *"abcdefghijklmnopqrstuvwxyz"]
STATES = ["CA", "NY", "TX", "FL", "IL", "WA"]


def _save(root: Path, hf_path: str, splits: dict, config: str | None = None) -> Path:
    import datasets

    datasets.disable_progress_bars()
    target = saved_copy_dir(root, hf_path, config)
    datasets.DatasetDict(splits).save_to_disk(str(target))
    return target


def write_femnist(root: Path, writers: int = 12, per_writer: int = 80, seed: int = 0) -> Path:
    """flwrlabs/femnist's columns (image, writer_id, hsf_id, character): scikit-learn's digits drawn at
    28x28 (each pixel 3x3, 2 pixels of margin), so the characters are the digits 0-9 of the 62 classes."""
    import datasets
    from PIL import Image
    from sklearn.datasets import load_digits

    rng = np.random.default_rng(seed)
    digits = load_digits()
    rows = rng.choice(len(digits.target), size=writers * per_writer, replace=False)
    images = [Image.fromarray(np.pad(np.kron(digits.images[r] * 15.9, np.ones((3, 3))), 2).astype(np.uint8))
              for r in rows]
    features = datasets.Features({"image": datasets.Image(), "writer_id": datasets.Value("string"),
                                  "hsf_id": datasets.Value("int64"),
                                  "character": datasets.ClassLabel(names=FEMNIST_CHARACTERS)})
    train = datasets.Dataset.from_dict({
        "image": images, "writer_id": [f"f{w:04d}_{w % 100:02d}" for w in np.repeat(np.arange(writers), per_writer)],
        "hsf_id": rng.integers(0, 8, size=len(rows)).tolist(), "character": digits.target[rows].tolist(),
    }, features=features)
    return _save(root, "flwrlabs/femnist", {"train": train})


_LINES = [
    "to be or not to be that is the question ",
    "all the world is a stage and all the men and women merely players ",
    "now is the winter of our discontent made glorious summer ",
    "the quality of mercy is not strained it droppeth as the gentle rain ",
]


def write_shakespeare(root: Path, roles: int = 8, per_role: int = 150, seed: int = 0) -> Path:
    """flwrlabs/shakespeare's columns (character_id, x, y): each role repeats one of four lines; x is 80
    characters of its speech, y the character after them."""
    import datasets

    rng = np.random.default_rng(seed)
    ids, contexts, targets = [], [], []
    for role in range(roles):
        speech = _LINES[role % len(_LINES)] * 8
        for start in rng.integers(0, len(speech) - 81, size=per_role):
            ids.append(f"THE_TEMPEST_ROLE{role}")
            contexts.append(speech[start : start + 80])
            targets.append(speech[start + 80])
    train = datasets.Dataset.from_dict({"character_id": ids, "x": contexts, "y": targets})
    return _save(root, "flwrlabs/shakespeare", {"train": train})


def write_adult(root: Path, rows: int = 800, seed: int = 0) -> Path:
    """scikit-learn/adult-census-income's 15 columns; income >50K follows education, hours and capital gain."""
    import datasets

    rng = np.random.default_rng(seed)
    education_num = rng.integers(1, 17, size=rows)
    hours = rng.integers(10, 80, size=rows)
    gain = np.where(rng.random(rows) < 0.1, rng.integers(1000, 20000, size=rows), 0)
    score = 0.4 * (education_num - 10) + 0.06 * (hours - 40) + gain / 5000 + rng.normal(0, 0.5, size=rows)
    pick = lambda values: rng.choice(values, size=rows).tolist()  # noqa: E731
    train = datasets.Dataset.from_dict({
        "age": rng.integers(17, 90, size=rows).tolist(), "workclass": pick(["Private", "Self-emp-not-inc", "?"]),
        "fnlwgt": rng.integers(20000, 500000, size=rows).tolist(), "education": pick(["HS-grad", "Bachelors", "Masters"]),
        "education.num": education_num.tolist(), "marital.status": pick(["Never-married", "Married-civ-spouse"]),
        "occupation": pick(["Tech-support", "Sales", "?"]), "relationship": pick(["Husband", "Not-in-family"]),
        "race": pick(["White", "Black"]), "sex": pick(["Male", "Female"]), "capital.gain": gain.tolist(),
        "capital.loss": np.zeros(rows, dtype=np.int64).tolist(), "hours.per.week": hours.tolist(),
        "native.country": pick(["United-States", "Mexico"]),
        "income": np.where(score > 0, ">50K", "<=50K").tolist(),
    })
    return _save(root, "scikit-learn/adult-census-income", {"train": train})


_POSITIVE = ["great", "loved", "wonderful", "excellent", "gripping", "favorite"]
_NEGATIVE = ["boring", "awful", "waste", "terrible", "dull", "disappointing"]
_FILLER = ["the", "book", "story", "author", "kindle", "read", "characters", "plot", "this", "was"]


def _review(rng: np.random.Generator, words: list[str], length: int) -> str:
    chosen = rng.choice(_FILLER, size=length).tolist()
    for position in rng.choice(length, size=3, replace=False):
        chosen[position] = str(rng.choice(words))
    return " ".join(chosen)


def write_amazon_kindle(root: Path, rows: int = 600, seed: int = 0) -> Path:
    """Amazon Reviews 2023's review columns; the text carries positive words for 4-5 stars, negative ones for
    1-2, both for 3 (which the loader drops)."""
    import datasets

    rng = np.random.default_rng(seed)
    ratings = rng.integers(1, 6, size=rows)
    texts = [_review(rng, _POSITIVE if r > 3 else _NEGATIVE if r < 3 else _POSITIVE + _NEGATIVE, 12) for r in ratings]
    train = datasets.Dataset.from_dict({
        "rating": ratings.astype(float).tolist(), "title": ["a review"] * rows, "text": texts,
        "images": [[] for _ in range(rows)], "asin": [f"B0{i:08d}" for i in range(rows)],
        "parent_asin": [f"B0{i:08d}" for i in range(rows)], "user_id": [f"U{i % 50}" for i in range(rows)],
        "timestamp": (1_600_000_000_000 + np.arange(rows)).tolist(), "verified_purchase": [True] * rows,
        "helpful_vote": [0] * rows,
    })
    return _save(root, "McAuley-Lab/Amazon-Reviews-2023", {"train": train})


def write_lending_club(root: Path, rows: int = 900, seed: int = 0) -> Path:
    """The Lending Club dump's columns byzlab reads (the features, loan_status, addr_state, id); the status
    follows the grade and the interest rate, six states of different sizes."""
    import datasets

    rng = np.random.default_rng(seed)
    grade = rng.integers(0, 7, size=rows)
    columns: dict[str, list] = {"id": [str(i) for i in range(rows)]}
    for name in LENDING_CLUB_FEATURES:
        columns[name] = rng.normal(0, 1, size=rows).round(3).tolist()
    columns["grade"] = ["ABCDEFG"[g] for g in grade]
    columns["sub_grade"] = [f"{'ABCDEFG'[g]}{rng.integers(1, 6)}" for g in grade]
    columns["int_rate"] = (5 + 3 * grade + rng.normal(0, 1, size=rows)).round(2).tolist()
    for name, values in (("home_ownership", ["RENT", "OWN", "MORTGAGE"]), ("verification_status", ["Verified", "Not Verified"]),
                         ("purpose", ["debt_consolidation", "credit_card"]), ("initial_list_status", ["w", "f"])):
        columns[name] = rng.choice(values, size=rows).tolist()
    score = -grade + rng.normal(0, 0.5, size=rows)
    columns["loan_status"] = np.where(score < -4, "Charged Off", np.where(score < -1.5, "Current", "Fully Paid")).tolist()
    columns["addr_state"] = rng.choice(STATES, size=rows, p=[0.3, 0.2, 0.2, 0.1, 0.1, 0.1]).tolist()
    columns["issue_d"] = ["2015-01-01"] * rows
    return _save(root, "100rya-py/credit-risk-dashboard", {"train": datasets.Dataset.from_dict(columns)})


def write_tiny_imagenet(root: Path, train_per_class: int = 30, valid_per_class: int = 6, seed: int = 0) -> Path:
    """zh-plus/tiny-imagenet's columns (image, label: ClassLabel of 200 WordNet ids) and splits (train,
    valid): 64x64 images of four classes, each a colour with noise; every tenth image is grey (mode L)."""
    import datasets
    from PIL import Image

    rng = np.random.default_rng(seed)
    colours = np.array([[200, 30, 30], [30, 200, 30], [30, 30, 200], [200, 200, 30]], dtype=np.float64)
    features = datasets.Features({"image": datasets.Image(),
                                  "label": datasets.ClassLabel(names=[f"n{1443537 + i:08d}" for i in range(200)])})

    def split(per_class: int):
        labels = np.repeat(np.arange(len(colours)), per_class)
        images = []
        for index, label in enumerate(labels):
            pixels = np.clip(colours[label] + rng.normal(0, 40, size=(64, 64, 3)), 0, 255).astype(np.uint8)
            image = Image.fromarray(pixels)
            images.append(image.convert("L") if index % 10 == 9 else image)
        return datasets.Dataset.from_dict({"image": images, "label": labels.tolist()}, features=features)

    return _save(root, "zh-plus/tiny-imagenet", {"train": split(train_per_class), "valid": split(valid_per_class)})


MIND_TOPICS = {"sports": ["game", "team", "coach", "season", "score"], "finance": ["market", "stocks", "bank", "rates", "investors"],
               "weather": ["storm", "rain", "forecast", "snow", "winds"], "food": ["recipe", "dinner", "chef", "bake", "flavors"]}


def write_mind(root: Path, rows: int = 600, seed: int = 0) -> Path:
    """MIND's news.tsv: headerless, tab-separated, its eight columns; title and abstract use the category's
    words. Some abstracts are empty, as in the real file."""
    rng = np.random.default_rng(seed)
    path = root / "MIND" / "news.tsv"
    path.parent.mkdir(parents=True, exist_ok=True)
    topics = list(MIND_TOPICS)
    with open(path, "w") as file:
        for i in range(rows):
            topic = topics[i % len(topics)]
            words = lambda n: " ".join(rng.choice(MIND_TOPICS[topic] + _FILLER, size=n))  # noqa: E731
            row = [f"N{i}", topic, f"{topic}_news", words(6).capitalize(), "" if i % 7 == 0 else words(12),
                   f"https://assets.msn.com/{i}", "[]", "[]"]
            assert len(row) == len(MIND_COLUMNS)
            file.write("\t".join(row) + "\n")
    return path


def write_glove(path: Path, words: list[str], dim: int, seed: int = 0) -> Path:
    """A GloVe-format text file: one word and ``dim`` numbers per line."""
    rng = np.random.default_rng(seed)
    with open(path, "w") as file:
        for word in words:
            file.write(word + " " + " ".join(f"{value:.5f}" for value in rng.normal(0, 0.5, size=dim)) + "\n")
    return path


WRITERS = {"femnist": write_femnist, "shakespeare": write_shakespeare, "adult": write_adult,
           "amazon-kindle": write_amazon_kindle, "lending-club": write_lending_club,
           "tiny-imagenet": write_tiny_imagenet, "mind": write_mind}

# The copies the README's examples run on (examples/data); MIND's terms forbid redistribution, and its
# fixture is synthetic, but it stays out of the repository like the real file would.
EXAMPLE_DATASETS = ("femnist", "shakespeare", "adult", "amazon-kindle")


if __name__ == "__main__":
    target = Path(sys.argv[1])
    for name in EXAMPLE_DATASETS:
        print(WRITERS[name](target))
