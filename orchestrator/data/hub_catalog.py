"""The public copies of the papers' non-image datasets (and Tiny-ImageNet), each registered under its own
name with its hub id and real column names, read through :mod:`hub` (a ``save_to_disk`` copy under
``<data_root>/huggingface/``, written once with ``data.download: true``).

Column names, sizes and terms are those of the dataset cards (checked 2026-12); where a card is silent the
entry says so. A setting the papers leave open is chosen here and documented in the entry's docstring.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from byzlab.orchestrator.core.errors import DatasetNotFoundError
from byzlab.orchestrator.data.datasets import DATASETS, Dataset
from byzlab.orchestrator.data.hub import HubParams, SizeParams, TextParams, load_hub_dataset


def _hub(params: SizeParams, **fixed) -> HubParams:
    """The entry's fixed source and columns plus the parameters the config gave."""
    return HubParams(**fixed, **params.model_dump())


@DATASETS.register_function("femnist", SizeParams, default_model="cnn", modality="image", record_defaults=False)
def _load_femnist(root: Path, download: bool, params: SizeParams) -> Dataset:
    """FEMNIST (flwrlabs/femnist, LEAF): 814,277 28x28 grey handwritten characters, 62 classes, column
    writer_id for a natural partition (3,597 writers); BSD-2-Clause.
    Columns: image, writer_id, hsf_id, character (ClassLabel: 0-9, A-Z, a-z). One train split: the test rows
    are held out with test_fraction. LASA Table 4 samples LEAF writers: ``partition.scheme: natural`` with
    fewer clients than writers draws that many whole writers."""
    return load_hub_dataset("femnist", root, download, _hub(
        params, hf_path="flwrlabs/femnist", input_kind="image", input_columns=["image"],
        label_column="character", group_column="writer_id"))


class ShakespeareParams(SizeParams):
    max_length: int = Field(80, ge=1, description="characters of context (LEAF: 80)")


@DATASETS.register_function("shakespeare", ShakespeareParams, default_model="char_lstm", modality="text",
                            record_defaults=False)
def _load_shakespeare(root: Path, download: bool, params: ShakespeareParams) -> Dataset:
    """Shakespeare (flwrlabs/shakespeare, LEAF): 4,226,158 next-character samples, 80 characters of context,
    column character_id (1,129 speaking roles) for a natural partition; BSD-2-Clause.
    Columns: character_id, x (the context), y (the next character). The classes are the training
    characters. One train split: the test rows are held out with test_fraction (the card warns that the
    data is temporal; this split is random). LASA Table 4 uses Reddi et al.'s 715-role version of the data,
    which is not on the hub; this is LEAF's."""
    return load_hub_dataset("shakespeare", root, download, HubParams(
        hf_path="flwrlabs/shakespeare", input_kind="characters", input_columns=["x"], label_column="y",
        group_column="character_id", truncate=False, **params.model_dump()))


@DATASETS.register_function("adult", SizeParams, default_model="mlp", modality="tabular", record_defaults=False)
def _load_adult(root: Path, download: bool, params: SizeParams) -> Dataset:
    """Adult census income (scikit-learn/adult-census-income, UCI adult.data): 32,561 rows, 14 features,
    income <=50K / >50K; CC0-1.0 (hub tag).
    Columns: age, workclass, fnlwgt, education, education.num, marital.status, occupation, relationship,
    race, sex, capital.gain, capital.loss, hours.per.week, native.country, income; missing values are the
    category "?". FedRA (§5.1, Table 2) tests on UCI's adult.test, which this copy lacks: test_fraction is
    held out instead."""
    return load_hub_dataset("adult", root, download, _hub(
        params, hf_path="scikit-learn/adult-census-income", input_kind="tabular", label_column="income"))


class AmazonParams(TextParams):
    max_rows: int | None = Field(
        120_000, ge=2, description="a seeded sample of the 25.6M reviews, before 3-star ones are dropped "
        "(residual reweighting used 99,424 reviews)")
    max_length: int = Field(200, ge=1, description="words per review (the paper does not say)")
    vocab_size: int = Field(25_000, ge=3, description="word vocabulary size (residual reweighting App. A.2: 25,000)")


_SENTIMENT = {"1.0": "negative", "2.0": "negative", "4.0": "positive", "5.0": "positive"}


@DATASETS.register_function("amazon-kindle", AmazonParams, default_model="fasttext", modality="text",
                            record_defaults=False)
def _load_amazon_kindle(root: Path, download: bool, params: AmazonParams) -> Dataset:
    """Amazon Reviews 2023, Kindle Store (McAuley-Lab/Amazon-Reviews-2023, raw/review_categories/
    Kindle_Store.jsonl): review text, binary sentiment (1-2 stars negative, 4-5 positive, 3 dropped); the
    card states no licence (research use, McAuley Lab).
    Columns: rating, title, text, images, asin, parent_asin, user_id, timestamp, verified_purchase,
    helpful_vote. Residual reweighting (§4.1) labels its Kindle reviews so; it used the 2014 release
    (86,164 train / 13,260 test reviews), hence the default sample of 120,000 reviews. The repository's
    loading script is not run: the JSON-lines file is read with the packaged json builder."""
    return load_hub_dataset("amazon-kindle", root, download, HubParams(
        hf_path="McAuley-Lab/Amazon-Reviews-2023", hf_data_files=["raw/review_categories/Kindle_Store.jsonl"],
        input_kind="words", input_columns=["text"], label_column="rating", label_map=_SENTIMENT,
        **params.model_dump()))


# Application-time features of the Kaggle Lending Club dump, and the five columns residual reweighting's
# App. A.5 backdoor sets; outcome columns (payments, recoveries, last_* dates) would leak the label.
LENDING_CLUB_FEATURES = [
    "loan_amnt", "term", "int_rate", "installment", "grade", "sub_grade", "emp_length", "home_ownership",
    "annual_inc", "verification_status", "purpose", "dti", "delinq_2yrs", "fico_range_low", "fico_range_high",
    "inq_last_6mths", "open_acc", "pub_rec", "revol_bal", "revol_util", "total_acc", "initial_list_status",
    "acc_now_delinq", "num_tl_120dpd_2m", "num_tl_90g_dpd_24m", "pub_rec_bankruptcies", "tax_liens",
]


class LendingClubParams(SizeParams):
    input_columns: list[str] | None = Field(
        None, description="feature columns (None = byzlab's application-time list, LENDING_CLUB_FEATURES)")


@DATASETS.register_function("lending-club", LendingClubParams, default_model="mlp", modality="tabular",
                            record_defaults=False)
def _load_lending_club(root: Path, download: bool, params: LendingClubParams) -> Dataset:
    """Lending Club loans 2007-2018 (100rya-py/credit-risk-dashboard, the Kaggle accepted-loans dump): 2.26M
    rows, loan_status (9 values), addr_state (51 values) for one client per state; licence not stated on
    the card (the Kaggle upload is CC0).

    Residual reweighting (§4.1, App. A.2) predicts the 9 loan statuses from 91 preprocessed features with one
    participant per US state; its preprocessing is not published, so the features are the application-time
    columns in LENDING_CLUB_FEATURES (override with input_columns)."""
    chosen = params.input_columns or LENDING_CLUB_FEATURES
    return load_hub_dataset("lending-club", root, download, HubParams(
        hf_path="100rya-py/credit-risk-dashboard", input_kind="tabular", input_columns=chosen,
        label_column="loan_status", group_column="addr_state",
        **params.model_dump(exclude={"input_columns"})))


@DATASETS.register_function("tiny-imagenet", SizeParams, default_model="resnet18", modality="image",
                            record_defaults=False)
def _load_tiny_imagenet(root: Path, download: bool, params: SizeParams) -> Dataset:
    """Tiny-ImageNet (zh-plus/tiny-imagenet): 100,000 train / 10,000 valid 64x64 colour images, 200 classes;
    ImageNet terms (non-commercial research), no licence on the card.
    Columns: image, label (ClassLabel of WordNet ids); grey images are converted to colour. SDEA's default
    public data (§4.1, Table 3): ``server.public_data.source: tiny-imagenet`` reads only the sampled
    images."""
    return load_hub_dataset("tiny-imagenet", root, download, _hub(
        params, hf_path="zh-plus/tiny-imagenet", input_kind="image", input_columns=["image"],
        label_column="label", test_split="valid", channels=3))


MIND_COLUMNS = ["news_id", "category", "subcategory", "title", "abstract", "url", "title_entities", "abstract_entities"]


class MindParams(TextParams):
    max_length: int = Field(64, ge=1, description="words of title + abstract (FedRA does not say)")


@DATASETS.register_function("mind", MindParams, default_model="text_cnn", modality="text", record_defaults=False)
def _load_mind(root: Path, download: bool, params: MindParams) -> Dataset:
    """MIND news (Microsoft News Dataset, MINDsmall_train news.tsv): 51,282 news, title + abstract, 17-18
    categories; Microsoft Research License Terms (non-commercial research, no redistribution).

    FedRA (§5.1, Table 2) classifies MIND news into 18 categories with a Text-CNN. The file is headerless
    TSV with the columns news_id, category, subcategory, title, abstract, url, title_entities,
    abstract_entities, read from ``<data_root>/MIND/news.tsv``; with ``data.download`` it is taken from the
    Recommenders/MIND hub mirror's MINDsmall_train.zip (accepting Microsoft's terms is the user's part)."""
    import datasets

    path = root / "MIND" / "news.tsv"
    if not path.is_file():
        if not download:
            raise DatasetNotFoundError(
                f"MIND not found at {path}; set data.download=true to fetch MINDsmall_train.zip from the "
                "Recommenders/MIND hub mirror, or put the news.tsv of MIND's train zip there "
                "(https://msnews.github.io, Microsoft Research License Terms)")
        _fetch_mind(path)
    news = datasets.load_dataset("csv", data_files=str(path), delimiter="\t", column_names=MIND_COLUMNS, quoting=3,
                                 keep_default_na=False, cache_dir=str(root / "huggingface" / "cache"))
    return load_hub_dataset("mind", root, download, HubParams(
        hf_path=str(path), input_kind="words", input_columns=["title", "abstract"], label_column="category",
        **params.model_dump()), source=news)


def _fetch_mind(path: Path) -> None:
    """news.tsv out of the hub mirror's MINDsmall_train.zip."""
    import shutil
    import zipfile

    from huggingface_hub import hf_hub_download

    archive = hf_hub_download("Recommenders/MIND", "MINDsmall_train.zip", repo_type="dataset")
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(archive) as bundle, bundle.open("news.tsv") as packed, open(path, "wb") as unpacked:
        shutil.copyfileobj(packed, unpacked)
