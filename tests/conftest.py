"""Shared fixtures: a tiny TF Hub BERT (built by the project's real export code) and tiny contract data."""
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import pytest  # noqa: E402

PROJECT_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory) -> tuple[str, str]:
    """(preprocess_path, encoder_path) of a tiny random-weight BERT with the real MiniLM vocabulary."""
    from encoder.export import build_hub_modules

    return build_hub_modules(str(tmp_path_factory.mktemp("tiny_bert")), tiny=True, seq_length=32)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> str:
    """A small sample data set in the contract layout (see data/prepare.py)."""
    from data.prepare import write_contract
    from data.sample import generate

    out = str(tmp_path_factory.mktemp("tiny_data"))
    interactions, items = generate(n_users=60, n_items=120, n_interactions=2500, seed=7)
    write_contract(interactions, items, out)
    return out
