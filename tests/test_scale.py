"""What lets the pipeline grow: the schema-typed reader, parallel Beam by default, the streamed trainer
input, the evaluator's user sample and the catalogue-embedding cache (issue 10), on tiny data.
"""
import os
import shutil

import numpy as np
import pandas as pd
import pytest

from schema import contract


# -- helpers: ExampleGen outputs of tiny contract folders ----------------------------------------------
def _contract(out, n_items=200, seed=7):
    from data.prepare import write_contract
    from data.sample import generate

    interactions, items = generate(n_users=40, n_items=n_items, n_interactions=1500, seed=seed)
    write_contract(interactions, items, out)
    return out


def _examples(data_dir, work):
    from test_bad_data import _examples as example_gens

    return example_gens(data_dir, work)


@pytest.fixture(scope="module")
def tiny_examples(tmp_path_factory):
    base = tmp_path_factory.mktemp("scale")
    data_dir = _contract(str(base / "data"))
    interactions, items = _examples(data_dir, str(base / "work"))
    return data_dir, interactions, items


# -- one reader -----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_reader_types_columns_from_the_schema_and_bounds_batches(tiny_examples):
    from pipeline import example_reader

    data_dir, interactions, items = tiny_examples
    pattern = example_reader.split_pattern(interactions, contract.TRAIN_SPLIT)
    batches = list(example_reader.read_record_batches(pattern, example_reader.INTERACTIONS_SCHEMA,
                                                      [contract.USER_ID, contract.TIMESTAMP], batch_size=100))
    assert max(b.num_rows for b in batches) == 100
    train_csv = pd.read_csv(os.path.join(data_dir, "interactions", "train", "interactions.csv"), dtype=str)
    assert sum(b.num_rows for b in batches) == len(train_csv)
    timestamps = np.concatenate([example_reader.first_values(b.column(1)) for b in batches])
    assert timestamps.dtype == np.int64  # the schema's INT, not a guess
    assert sorted(timestamps.tolist()) == sorted(train_csv["timestamp"].astype(int).tolist())
    catalogue = example_reader.read_columns(example_reader.split_pattern(items, contract.ITEMS_SPLIT),
                                            example_reader.ITEMS_SCHEMA, contract.ITEM_COLUMNS)
    assert len(catalogue[contract.ITEM_ID]) == 200 and isinstance(catalogue[contract.TITLE][0], bytes)


# -- data checks: duplicated catalogue ids (the other cases are in test_bad_data.py) ------------------------
@pytest.mark.slow
def test_duplicated_catalogue_ids_are_named_with_their_count(tmp_path):
    from pipeline.components.anomaly_gate import check_examples

    data_dir = _contract(str(tmp_path / "data"), n_items=60)
    items_csv = os.path.join(data_dir, "items", "items.csv")
    items = pd.read_csv(items_csv, dtype=str, keep_default_na=False)
    items.loc[5, "item_id"] = items.loc[4, "item_id"]
    items.loc[9, "item_id"] = items.loc[8, "item_id"]
    items.to_csv(items_csv, index=False)
    problems = check_examples(*_examples(data_dir, str(tmp_path / "work")))
    dup = [p for p in problems if "duplicated item id(s)" in p]
    assert dup and dup[0].startswith("items items: column 'item_id': 2 duplicated item id(s) in the catalogue: "), problems
    assert repr(items.loc[4, "item_id"]) in dup[0] and repr(items.loc[8, "item_id"]) in dup[0]


# -- Beam: one in-process worker by default, every core one setting away -------------------------------
def test_beam_default_is_one_worker_and_the_env_selects_every_core(monkeypatch):
    import importlib

    from pipeline import configs

    monkeypatch.delenv("TOWER_RECS_BEAM_PIPELINE_ARGS", raising=False)
    image = "--sdk_container_image=tower-recs-pipeline:latest"    # stops TFX staging itself: beam_runners.py
    default = importlib.reload(configs).pipeline_kwargs()["beam_pipeline_args"]
    assert default == ["--direct_running_mode=in_memory", "--direct_num_workers=1", image]
    monkeypatch.setenv("TOWER_RECS_BEAM_PIPELINE_ARGS", configs.EVERY_CORE_BEAM_PIPELINE_ARGS)
    assert importlib.reload(configs).pipeline_kwargs()["beam_pipeline_args"] == [
        "--direct_running_mode=multi_processing", "--direct_num_workers=0", image]
    monkeypatch.delenv("TOWER_RECS_BEAM_PIPELINE_ARGS")
    importlib.reload(configs)


def _merged_beam_options(pipeline, node_id):
    """The DirectRunner options a node runs with: pipeline-level args first, its own appended (TFX's order)."""
    from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions

    component = next(c for c in pipeline.components if c.id == node_id)
    return PipelineOptions(component.executor_spec.beam_pipeline_args).view_as(DirectOptions)


def test_interaction_sized_beam_jobs_use_every_core_only_in_the_measured_size_window(tmp_path, monkeypatch):
    import importlib

    from pipeline import configs
    from pipeline.pipeline import create_pipeline

    data_dir = _contract(str(tmp_path / "data"))
    monkeypatch.setenv("TOWER_RECS_DATA", data_dir)
    monkeypatch.delenv("TOWER_RECS_BEAM_PIPELINE_ARGS", raising=False)

    def built(**env):
        for name, value in env.items():
            monkeypatch.setenv(f"TOWER_RECS_{name}", value)
        kwargs = importlib.reload(configs).pipeline_kwargs()
        return create_pipeline(**dict(kwargs, pipeline_root=str(tmp_path / "root")))

    interaction_jobs = ("InteractionExampleGen", "InteractionStatisticsGen", "TrainingServingSkew", "AnomalyGate",
                        "Transform")
    try:
        small = built()     # the fixture's few kB: under the default threshold
        assert configs.INTERACTION_BEAM_PIPELINE_ARGS == []
        for node in interaction_jobs + ("ItemExampleGen", "CatalogEmbedder"):
            options = _merged_beam_options(small, node)
            assert (options.direct_running_mode, options.direct_num_workers) == ("in_memory", 1), node

        large = built(EVERY_CORE_MIN_INTERACTIONS_MB="0.001")
        for node in interaction_jobs:
            options = _merged_beam_options(large, node)
            assert (options.direct_running_mode, options.direct_num_workers) == ("multi_processing", 0), node
        for node in ("ItemExampleGen", "ItemStatisticsGen", "CatalogEmbedder"):
            options = _merged_beam_options(large, node)
            assert (options.direct_running_mode, options.direct_num_workers) == ("in_memory", 1), node

        # Spans: the size that counts is the span this run ingests, not the whole history.
        from data.prepare import write_contract
        from data.sample import generate
        from pipeline.beam_runners import megabytes_under

        spanned_dir = str(tmp_path / "spanned")
        write_contract(*generate(n_users=40, n_items=200, n_interactions=3000, seed=3), spanned_dir, spans=3)
        history = megabytes_under(os.path.join(spanned_dir, contract.INTERACTIONS_DIR))
        latest = megabytes_under(os.path.join(spanned_dir, contract.INTERACTIONS_DIR, "span-3"))
        assert latest < history
        between = f"{(latest + history) / 2:.6f}"
        monkeypatch.setenv("TOWER_RECS_DATA", spanned_dir)
        built(EVERY_CORE_MIN_INTERACTIONS_MB=between)
        assert configs.INTERACTION_BEAM_PIPELINE_ARGS == []
        built(EVERY_CORE_MIN_INTERACTIONS_MB=f"{latest * 0.9:.6f}")
        assert configs.INTERACTION_BEAM_PIPELINE_ARGS == configs.EVERY_CORE_BEAM_PIPELINE_ARGS.split()
        # Past the maximum (memory: worker heaps on top of the in-memory shuffle) one worker again.
        built(EVERY_CORE_MAX_INTERACTIONS_MB=f"{latest * 0.95:.6f}")
        assert configs.INTERACTION_BEAM_PIPELINE_ARGS == []

        # A malformed bound names its variable.
        for bad in ("lots", "-1", "nan"):
            with pytest.raises(ValueError, match=f"TOWER_RECS_EVERY_CORE_MAX_INTERACTIONS_MB={bad!r}: expected a size"):
                built(EVERY_CORE_MAX_INTERACTIONS_MB=bad)
        monkeypatch.delenv("TOWER_RECS_EVERY_CORE_MAX_INTERACTIONS_MB")

        # Beam args the user chose apply to every component as given; so does a cluster runner's.
        monkeypatch.setenv("TOWER_RECS_BEAM_PIPELINE_ARGS", "--direct_num_workers=3")
        chosen = built()
        assert _merged_beam_options(chosen, "Transform").direct_num_workers == 3
    finally:
        for name in ("DATA", "EVERY_CORE_MIN_INTERACTIONS_MB", "EVERY_CORE_MAX_INTERACTIONS_MB", "BEAM_PIPELINE_ARGS"):
            monkeypatch.delenv(f"TOWER_RECS_{name}", raising=False)
        importlib.reload(configs)


# -- streamed trainer input -------------------------------------------------------------------------------
def _transformed_examples(tmp_path, n, num_items):
    """Hand-written Transform-output files (two files of gzipped tf.Examples of the three index features) + its
    schema."""
    import tensorflow as tf
    from tensorflow_transform.tf_metadata import dataset_metadata, schema_utils

    rng = np.random.default_rng(0)
    items = rng.integers(0, num_items, n)
    history = rng.integers(-1, num_items, (n, contract.HISTORY_LENGTH))
    split_dir = tmp_path / "transformed" / "Split-train"
    split_dir.mkdir(parents=True)
    for part, rows in enumerate((range(n // 2), range(n // 2, n))):
        with tf.io.TFRecordWriter(str(split_dir / f"data-{part}.gz"), options="GZIP") as writer:
            for i in rows:
                writer.write(tf.train.Example(features=tf.train.Features(feature={
                    contract.USER_INDEX: tf.train.Feature(int64_list=tf.train.Int64List(value=[i % 7])),
                    contract.ITEM_INDEX: tf.train.Feature(int64_list=tf.train.Int64List(value=[items[i]])),
                    contract.HISTORY_INDEX: tf.train.Feature(int64_list=tf.train.Int64List(value=history[i])),
                })).SerializeToString())
    spec = {contract.USER_INDEX: tf.io.FixedLenFeature([], tf.int64),
            contract.ITEM_INDEX: tf.io.FixedLenFeature([], tf.int64),
            contract.HISTORY_INDEX: tf.io.FixedLenFeature([contract.HISTORY_LENGTH], tf.int64)}
    metadata = dataset_metadata.DatasetMetadata(schema_utils.schema_from_feature_spec(spec))
    return str(tmp_path / "transformed"), metadata, items


@pytest.mark.slow
def test_training_input_streams_full_shuffled_batches_over_the_memory_budget(tmp_path):
    import types

    from trainer import run_fn
    from trainer.model_config import ModelConfig
    from trainer.train import StreamedExamples

    n, num_items = 1000, 50
    transformed_dir, metadata, items = _transformed_examples(tmp_path, n, num_items)
    files = [os.path.join(transformed_dir, "Split-train", "*")]  # TFX passes split patterns
    fn_args = types.SimpleNamespace(train_files=files, eval_files=files)
    tft_output = types.SimpleNamespace(transformed_metadata=metadata)
    assert run_fn.count_examples(files) == n
    with pytest.raises(FileNotFoundError, match="No files match"):
        run_fn.count_examples([str(tmp_path / "missing" / "*")])

    # Within the budget: the in-memory fast path, every row once.
    in_memory, _ = run_fn.training_input(fn_args, tft_output, ModelConfig(batch_size=64), num_items)
    assert isinstance(in_memory, dict)
    np.testing.assert_array_equal(in_memory[contract.ITEM_INDEX], items)   # every row once, in file order
    np.testing.assert_array_equal(in_memory[contract.USER_INDEX], np.arange(n) % 7)
    assert in_memory[contract.HISTORY_INDEX].shape == (n, contract.HISTORY_LENGTH)
    # Loaded into arrays sized by the count: a wrong count is an error, never rows left unfilled.
    with pytest.raises(ValueError, match=f"hold more than the {n - 1} examples counted"):
        run_fn.load_index_features(tft_output, files, n - 1)
    with pytest.raises(ValueError, match=f"hold {n} examples, {n + 1} counted"):
        run_fn.load_index_features(tft_output, files, n + 1)

    # Over it (budget 0): a stream of full batches that goes on past one epoch, item counts from one pass.
    streamed, validation = run_fn.training_input(fn_args, tft_output,
                                                 ModelConfig(batch_size=64, in_memory_budget_mb=0), num_items)
    assert isinstance(streamed, StreamedExamples) and streamed.num_examples == n
    np.testing.assert_array_equal(streamed.item_counts, np.bincount(items, minlength=num_items))
    batches = list(streamed.dataset.take(2 * n // 64))
    assert all(b[contract.ITEM_INDEX].shape == (64,) and b[contract.HISTORY_INDEX].shape == (64, 20) for b in batches)
    first_epoch = np.concatenate([b[contract.ITEM_INDEX].numpy() for b in batches[:n // 64]])
    assert not np.array_equal(first_epoch, items[:len(first_epoch)])  # shuffled
    assert sum(len(b[contract.ITEM_INDEX]) for b in validation) == n  # validation: one ordered pass


# -- the evaluator's deterministic user sample ------------------------------------------------------------
def test_user_sample_is_deterministic_sized_and_independent_of_order():
    from pipeline.components.retrieval_evaluator import sample_users

    users = [f"u{i:05d}" for i in range(1000)]
    sample = sample_users(users, 100)
    assert len(sample) == 100 and sample == sorted(sample) and set(sample) <= set(users)
    assert sample_users(list(reversed(users)), 100) == sample
    assert sample_users(users, 0) == users and sample_users(users, 5000) == users
    assert sample != users[:100]  # not just the first ids


@pytest.mark.slow
def test_evaluator_loads_a_user_sample_and_records_the_total(tiny_examples):
    from pipeline.components.retrieval_evaluator import load_eval_data

    _, interactions, items = tiny_examples
    full = load_eval_data(interactions, items)
    sample = load_eval_data(interactions, items, max_users=10)
    assert full.total_users == sample.total_users == len(full.users) > 10
    assert len(sample.users) == 10 and set(sample.users) <= set(full.users)
    row = full.users.index(sample.users[3])
    assert sample.histories[3] == full.histories[row] and sample.relevant[3] == full.relevant[row]
    assert sample.catalogue_size == full.catalogue_size == 200


# -- catalogue embeddings cached across runs --------------------------------------------------------------
def _embed(items, previous, work, tiny_encoder, precision=None):
    from pipeline import configs
    from pipeline.components.catalog_embedder import CatalogEmbedderExecutor, CatalogEmbeddings

    output = CatalogEmbeddings()
    output.uri = work
    os.makedirs(work, exist_ok=True)
    executor = CatalogEmbedderExecutor(CatalogEmbedderExecutor.Context(
        beam_pipeline_args=configs.BEAM_PIPELINE_ARGS, tmp_dir=work))
    executor.Do({"items": [items], "previous": [previous] if previous else []}, {"embeddings": [output]},
                {"preprocess_handle": tiny_encoder[0], "encoder_handle": tiny_encoder[1],
                 "output_key": "sentence_embedding", "precision": precision})
    return output


@pytest.mark.slow
def test_rerun_after_one_percent_of_texts_changed_encodes_only_those(tiny_examples, tiny_encoder, tmp_path):
    from encoder.beam_inference import text_key
    from encoder.text_embedding import encode_texts
    from pipeline import example_reader
    from pipeline.components.catalog_embedder import embeddings_pattern, read_embeddings
    from trainer.item_text import catalogue_texts

    data_dir, _, items = tiny_examples
    texts = catalogue_texts(example_reader.read_columns(example_reader.split_pattern(items, contract.ITEMS_SPLIT),
                                                        example_reader.ITEMS_SCHEMA, contract.ITEM_COLUMNS))
    first = _embed(items, None, str(tmp_path / "first"), tiny_encoder)
    assert first.get_int_custom_property("texts_encoded") == len(set(texts))
    assert first.get_int_custom_property("texts_reused") == 0
    first_vectors = read_embeddings(embeddings_pattern(first))
    assert set(first_vectors) == {text_key(t) for t in texts}

    # 1% of the 200 items get a new title.
    changed_dir = str(tmp_path / "changed")
    shutil.copytree(data_dir, changed_dir)
    items_csv = os.path.join(changed_dir, "items", "items.csv")
    frame = pd.read_csv(items_csv, dtype=str, keep_default_na=False)
    frame.loc[[3, 150], "title"] = ["A Completely New Title", "Another Brand New Title"]
    frame.to_csv(items_csv, index=False)
    _, changed_items = _examples(changed_dir, str(tmp_path / "changed_work"))
    second = _embed(changed_items, first, str(tmp_path / "second"), tiny_encoder)
    assert second.get_int_custom_property("texts_encoded") == 2
    assert second.get_int_custom_property("texts_reused") == len(set(texts)) - 2
    vectors = read_embeddings(embeddings_pattern(second))
    new_texts = [t for t in catalogue_texts(frame.to_dict("list")) if text_key(t) not in first_vectors]
    assert len(new_texts) == 2 and len(vectors) == len(set(texts))
    np.testing.assert_allclose(np.stack([vectors[text_key(t)] for t in new_texts]),
                               encode_texts(*tiny_encoder, new_texts), atol=1e-5)
    unchanged = texts[0]
    np.testing.assert_array_equal(vectors[text_key(unchanged)], first_vectors[text_key(unchanged)])

    # Another encoder (fingerprint) reuses nothing.
    with open(os.path.join(first.uri, "fingerprint.txt"), "w") as f:
        f.write("another encoder")
    third = _embed(items, first, str(tmp_path / "third"), tiny_encoder)
    assert third.get_int_custom_property("texts_encoded") == len(set(texts))


# -- one process for every component ------------------------------------------------------------------
_ALLOCATE_AND_FREE = """
import pipeline  # what the tfx CLI's runner imports first
import tensorflow as tf

def rss_mb():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2 ** 20

before = rss_mb()
tensors = [tf.random.uniform([1024, 1024 * 16]) * 2.0 for _ in range(8)]  # 8 x 64 MB, like a component's peak
during = rss_mb()
del tensors
print(before, during, rss_mb())
"""


def test_tensors_a_component_frees_leave_the_pipeline_process():
    """The local runner runs every component in one process: a component's freed tensors must go back to
    the system, not stay in TensorFlow's oneDNN pool (which never shrinks) for the rest of the run."""
    import subprocess
    import sys

    from conftest import PROJECT_DIR

    env = {k: v for k, v in os.environ.items() if k != "TF_ONEDNN_USE_SYSTEM_ALLOCATOR"}
    env.update(PYTHONPATH=PROJECT_DIR, TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run([sys.executable, "-c", _ALLOCATE_AND_FREE], env=env, capture_output=True, text=True,
                            timeout=300, check=True)
    before, during, after = map(float, result.stdout.split())
    assert during - before > 400, (before, during)  # the tensors were really allocated
    assert after - before < 150, f"{after - before:.0f} MB of freed tensors stayed resident ({before}, {during})"


def test_text_pca_basis_matches_the_svd_in_a_fraction_of_the_table_s_memory():
    """The trainer's text basis (trainer/text_basis.py) spans the SVD's top directions without the SVD's
    copies of the item-text table: at 300k items those copies were the 5M run's 3 GB peak."""
    import tracemalloc

    from trainer.text_basis import principal_directions

    rng = np.random.default_rng(0)
    # Clustered rows with a few strong directions, like sentence embeddings; some all-zero (no text).
    table = (rng.normal(size=[60_000, 8]) * [9, 7, 5, 4, 3, 2, 1.5, 1]) @ rng.normal(size=[8, 96])
    table = (table + 0.1 * rng.normal(size=table.shape)).astype(np.float32)
    table[::50] = 0.0
    dim = 6

    tracemalloc.start()
    basis = principal_directions(table, dim, chunk_rows=1024)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 0.1 * table.nbytes, f"peak {peak / 1e6:.1f} MB for a {table.nbytes / 1e6:.1f} MB table"

    _, _, vt = np.linalg.svd(table[np.abs(table).sum(axis=1) > 0], full_matrices=False)
    assert basis.shape == (96, dim) and basis.dtype == np.float32
    np.testing.assert_allclose(np.abs(basis.T @ vt[:dim].T), np.eye(dim), atol=1e-3)  # same vectors up to sign
    strongest = np.abs(basis).argmax(axis=0)
    assert (basis[strongest, np.arange(dim)] > 0).all(), "signs follow the largest entry, so refits agree"
    with pytest.raises(ValueError, match="dim must be in"):
        principal_directions(table, 97)


@pytest.mark.slow
def test_bfloat16_catalogue_embedding_is_cached_apart_and_leaves_later_encoding_float32(tiny_examples, tiny_encoder,
                                                                                        tmp_path):
    from encoder.beam_inference import text_key
    from encoder.precision import onednn_runs_bfloat16
    from encoder.text_embedding import encode_texts
    from pipeline import example_reader
    from pipeline.components.catalog_embedder import CatalogEmbedder, embeddings_pattern, read_embeddings
    from trainer.item_text import catalogue_texts
    from trainer.model_config import ModelConfig

    _, _, items = tiny_examples
    texts = sorted(set(catalogue_texts(example_reader.read_columns(
        example_reader.split_pattern(items, contract.ITEMS_SPLIT), example_reader.ITEMS_SCHEMA,
        contract.ITEM_COLUMNS))))
    float32_before = encode_texts(*tiny_encoder, texts)
    reduced = _embed(items, None, str(tmp_path / "bf16"), tiny_encoder, precision="bfloat16")
    vectors = read_embeddings(embeddings_pattern(reduced))
    got = np.stack([vectors[text_key(t)] for t in texts])
    if not onednn_runs_bfloat16():   # a CPU without AVX512F: the documented fallback is float32 (with a warning)
        np.testing.assert_array_equal(got, float32_before)
    else:   # the bfloat16 graphs ran: the vectors differ from float32 and stay close to it in direction
        assert np.abs(got - float32_before).max() > 1e-4
    cosine = np.sum(got * float32_before, axis=1) / (np.linalg.norm(got, axis=1)
                                                     * np.linalg.norm(float32_before, axis=1))
    assert cosine.min() > 0.99
    # The precision was scoped to the embedding job: encoding afterwards in this process is float32 again.
    np.testing.assert_array_equal(encode_texts(*tiny_encoder, texts), float32_before)
    # A float32 run does not reuse bfloat16 vectors (the precision is part of the cache's fingerprint).
    float32_run = _embed(items, reduced, str(tmp_path / "fp32"), tiny_encoder)
    assert float32_run.get_int_custom_property("texts_encoded") == len(texts)
    assert float32_run.get_string_custom_property("encoder_fingerprint") != \
        reduced.get_string_custom_property("encoder_fingerprint")
    with pytest.raises(ValueError, match="catalogue_embedding_precision='float16': must be one of"):
        CatalogEmbedder(items=None, preprocess_handle="p", encoder_handle="e", precision="float16")
    with pytest.raises(ValueError, match="catalogue_embedding_precision='fp16': must be one of"):
        ModelConfig(catalogue_embedding_precision="fp16")
