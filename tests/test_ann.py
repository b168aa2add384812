"""The partitioned (IVF) catalogue index: exactness at full probe, exclusions, merged partitions, config, ops,
serving."""
import numpy as np
import pytest
import tensorflow as tf

from pipeline import overrides
from pipeline.components.gate_config import ServingCheckConfig
from pipeline.components.serving_check import judge, probe
from pipeline.components.serving_ops import graph_op_names
from serving.client import RecommenderClient
from serving.synthetic_model import SyntheticRetrieval, build_synthetic_model
from serving.testing import ServerProcess
from trainer.model_config import ModelConfig
from trainer.retrieval_index import PAD_ID, BruteForceIndex, PartitionedIndex, build_index, merge_small_partitions

N, D = 600, 16


@pytest.fixture(scope="module")
def catalogue():
    rng = np.random.default_rng(7)
    centres = rng.normal(size=(12, D))
    vectors = (centres[rng.integers(0, 12, N)] + 0.5 * rng.normal(size=(N, D))).astype(np.float32)
    return [f"i{n}" for n in range(N)], vectors, rng


def _valid(ids_row):
    return [i.decode() for i in ids_row if i != PAD_ID.encode()]


def test_probing_every_partition_gives_exactly_the_exact_results(catalogue):
    ids, vectors, rng = catalogue
    ivf = PartitionedIndex(ids, vectors, max_k=50, max_exclude=20, partitions=10, nprobe=10)
    exact = BruteForceIndex(ids, vectors, max_k=50, max_exclude=20)
    query = tf.constant(rng.normal(size=(3, D)).astype(np.float32))
    exclude = tf.constant([[PAD_ID, "i1", "unknown"], [PAD_ID] * 3, ["i5", "i6", "i7"]])
    k = tf.constant([5, 50, 12])
    got, want = ivf(query, exclude, k), exact(query, exclude, k)
    np.testing.assert_array_equal(got[0].numpy(), want[0].numpy())
    np.testing.assert_allclose(got[1].numpy(), want[1].numpy(), rtol=1e-5)
    assert got[0].shape == (3, 50)
    for row in range(3):                                             # batch 1 takes its own (matmul) path
        alone = ivf(query[row:row + 1], exclude[row:row + 1], k[row:row + 1])
        np.testing.assert_array_equal(alone[0].numpy()[0, :k[row]], want[0].numpy()[row, :k[row]])


def test_excluded_items_are_never_returned_and_never_cost_results(catalogue):
    ids, vectors, rng = catalogue
    ivf = PartitionedIndex(ids, vectors, max_k=20, max_exclude=30, partitions=10, nprobe=2)
    query = tf.constant(rng.normal(size=(2, D)).astype(np.float32))
    no_exclusions = tf.fill([2, 1], PAD_ID)
    first = ivf(query, no_exclusions, tf.constant([20, 20]))[0].numpy()
    exclude = tf.constant([_valid(first[0]) + [PAD_ID] * 10, _valid(first[1])[:5] + [PAD_ID] * 25])
    got_ids, got_scores = (t.numpy() for t in ivf(query, exclude, tf.constant([20, 20])))
    for row in range(2):
        returned = _valid(got_ids[row])
        assert len(returned) == 20                                   # over-fetched: still k results
        assert not set(returned) & set(exclude.numpy()[row].astype(str))
        assert np.all(np.diff(got_scores[row]) <= 0)                 # best first


def test_small_partitions_are_merged_so_probes_always_hold_k_plus_exclusions(catalogue):
    ids, vectors, _ = catalogue
    # 8 partitions of about 5 items cannot give 1 probe 40 + 40 candidates: they merge into one (= exact).
    few = PartitionedIndex(ids[:40], vectors[:40], max_k=40, max_exclude=40, partitions=8, nprobe=1)
    exact = BruteForceIndex(ids[:40], vectors[:40], max_k=40, max_exclude=40)
    assert few.partitions == 1
    query = tf.constant(vectors[:1])
    got, want = few(query, tf.constant([[PAD_ID]]), tf.constant([30])), exact(query, tf.constant([[PAD_ID]]),
                                                                             tf.constant([30]))
    np.testing.assert_array_equal(got[0].numpy(), want[0].numpy())
    exclude = tf.constant([ids[:15]])
    got_ids, got_scores = (t.numpy() for t in few(query, exclude, tf.constant([30])))
    assert len(_valid(got_ids[0])) == 25 and np.all(np.isneginf(got_scores[0, 25:]))   # 40 - 15 left
    # 600 items in 40 partitions, 3 probes of k 20 + 30 exclusions: every partition keeps >= 17 items.
    ivf = PartitionedIndex(ids, vectors, max_k=20, max_exclude=30, partitions=40, nprobe=3)
    sizes = ivf.partition_size.numpy()
    assert 1 < ivf.partitions < 40 and sizes.min() >= 17 and sizes.sum() == N


def test_a_merged_partitions_items_move_to_their_nearest_remaining_centroid():
    vectors = np.array([[0.0, 0], [0.1, 0], [5, 5], [5.1, 5], [5, 5.1], [9, 0], [9.1, 0], [8.9, 0]], np.float32)
    centroids = np.array([[0.05, 0], [5, 5], [9, 0], [4, 0]], np.float32)
    partition = np.array([0, 0, 1, 1, 1, 2, 2, 2])      # centroid 3 is empty, partition 0 holds 2 items
    merged_centroids, merged = merge_small_partitions(vectors, centroids, partition, min_size=3)
    np.testing.assert_array_equal(merged_centroids, centroids[[1, 2]])
    # The empty partition goes first; then (0, 0) and (0.1, 0) join (5, 5), nearer than (9, 0).
    np.testing.assert_array_equal(merged, [0, 0, 0, 0, 0, 1, 1, 1])


def test_every_item_cold_ones_included_is_reachable(catalogue):
    ids, vectors, _ = catalogue
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    ivf = PartitionedIndex(ids, unit, max_k=5, max_exclude=5, partitions=10, nprobe=3)
    top = ivf(tf.constant(unit), tf.fill([N, 1], PAD_ID), tf.constant(1))[0].numpy()[:, 0]
    assert np.mean([t.decode() == i for t, i in zip(top, ids)]) >= 0.95    # an item's own vector finds it
    assert sorted(ivf.item_ids.numpy().astype(str).tolist()) == sorted(ids)


def test_int8_scoring_with_float_rerank_returns_float_scores(catalogue):
    ids, vectors, rng = catalogue
    ivf = PartitionedIndex(ids, vectors, max_k=10, max_exclude=5, partitions=10, nprobe=10, scoring="int8")
    exact = BruteForceIndex(ids, vectors, max_k=10, max_exclude=5)
    query = tf.constant(rng.normal(size=(4, D)).astype(np.float32))
    got, want = ivf(query, tf.fill([4, 1], PAD_ID), tf.constant(10)), exact(query, tf.fill([4, 1], PAD_ID),
                                                                            tf.constant(10))
    overlap = np.mean([len(set(g) & set(w)) / 10 for g, w in zip(got[0].numpy(), want[0].numpy())])
    assert overlap >= 0.9
    position = {i: n for n, i in enumerate(ids)}
    for row in range(4):                         # scores are the float dot products of the returned items
        rows = [position[i] for i in _valid(got[0].numpy()[row])]
        np.testing.assert_allclose(got[1].numpy()[row], vectors[rows] @ query.numpy()[row], rtol=1e-4)


def test_the_catalogue_size_threshold_picks_the_index(catalogue):
    ids, vectors, _ = catalogue
    assert type(build_index(ids, vectors, ModelConfig(ann_min_items=N + 1))) is BruteForceIndex
    small_requests = dict(max_k=10, max_exclude=5)   # partitions of >= 5 items hold 3 probes' k + exclusions
    index = build_index(ids, vectors, ModelConfig(ann_min_items=N, ann_nprobe=3, **small_requests))
    assert isinstance(index, PartitionedIndex) and index.nprobe == 3 and index.partitions == 24   # ~sqrt(600)
    assert build_index(ids, vectors, ModelConfig(ann_min_items=N, ann_partitions=4, ann_nprobe=9,
                                                 **small_requests)).nprobe == 4
    again = build_index(ids, vectors, ModelConfig(ann_min_items=N, ann_nprobe=3, **small_requests))   # seeded
    np.testing.assert_array_equal(index.item_ids.numpy(), again.item_ids.numpy())


@pytest.mark.parametrize("fields, message", [
    ({"ann_nprobe": 0}, "ann_nprobe=0"), ({"ann_partitions": -1}, "ann_partitions=-1"),
    ({"ann_min_items": 0}, "ann_min_items=0")])
def test_out_of_range_index_settings_are_rejected_naming_the_field(fields, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig(**fields)


def test_env_override_is_validated_and_too_many_partitions_fails_at_build(catalogue):
    with pytest.raises(ValueError, match="ann_nprobe=0"):
        overrides.from_env(ModelConfig(), "MODEL", {"TOWER_RECS_MODEL_ANN_NPROBE": "0"})
    ids, vectors, _ = catalogue
    with pytest.raises(ValueError, match="ann_partitions=601"):
        build_index(ids, vectors, ModelConfig(ann_min_items=1, ann_partitions=601, ann_nprobe=1))
    with pytest.raises(ValueError, match="ann_scoring='bf8'"):
        build_index(ids, vectors, ModelConfig(ann_min_items=1, ann_scoring="bf8"))


# Requests of k <= 20 with <= 20 exclusions keep the 8 partitions of ~50 items apart (merging needs < 5).
IVF_MODEL_CFG = ModelConfig(ann_min_items=100, ann_partitions=8, ann_nprobe=8, max_k=20, max_exclude=20)


def test_the_served_graphs_never_gather_from_the_index_variables(catalogue):
    """A ResourceGather on the index's vectors would switch them to copy-on-read: every later in-place slice
    would then copy the whole catalogue (`BruteForceIndex.vectors_at` says more). Callers use `vectors_at`."""
    model = SyntheticRetrieval(num_items=400, num_users=5, dim=16, cfg=IVF_MODEL_CFG)
    index_handles = {id(model.index.item_vectors.handle)}
    for fn in (model.serve, model.serve_examples, model.query_embedding, model.candidate_embedding):
        graph = fn.get_concrete_function().graph
        inside = {placeholder.name for outer, placeholder in graph.captures if id(outer) in index_handles}
        assert inside, f"{fn.__name__} does not read the index's vectors, so this check sees nothing"
        gathers = [op for op in graph.get_operations() if op.type == "ResourceGather"]
        assert not [op.name for op in gathers if op.inputs[0].name in inside], fn.__name__


@pytest.fixture(scope="module")
def ivf_model(tmp_path_factory):
    """A synthetic SavedModel whose 400-item catalogue is served by the IVF index (all 8 partitions probed)."""
    base = str(tmp_path_factory.mktemp("ann_model") / "tower_recs")
    version_dir = build_synthetic_model(base, 1, num_items=400, dim=16, cfg=IVF_MODEL_CFG)
    return base, version_dir


@pytest.mark.e2e
def test_serving_check_passes_on_the_ivf_model_and_walks_its_ops(ivf_model):
    _, version_dir = ivf_model
    # The IVF path is exported: probed partitions read in place (Slice of unstacked bounds), members located.
    assert {"Unpack", "Slice", "UpperBound", "TopKV2"} <= graph_op_names(version_dir)
    cfg = ServingCheckConfig(latency_calls=5)
    catalogue = {f"item_{i}" for i in range(400)}     # build_synthetic_model's ids
    blessed, reasons = judge(probe(version_dir, cfg), cfg, catalogue)
    assert blessed, reasons
    assert any(r.startswith("PASS probe outputs") for r in reasons), reasons
    assert "PASS all graph ops are in TF core 2.16 + TF Text 2.12" in reasons


@pytest.mark.e2e
def test_grpc_predict_on_the_ivf_model_matches_exact_search_with_exclusions(ivf_model, tmp_path):
    base, version_dir = ivf_model
    loaded = tf.saved_model.load(version_dir)
    assert loaded.index.centroids.shape == (8, 16)
    same = SyntheticRetrieval(num_items=400, dim=16, cfg=IVF_MODEL_CFG)        # seeded: the served catalogue
    ids, vectors = same.index.item_ids.numpy().astype(str), same.index.item_vectors.numpy()
    np.testing.assert_array_equal(vectors, loaded.index.item_vectors.numpy())
    query = loaded.signatures["query_embedding"](user_id=tf.constant(["user_1"]),
                                                 history=tf.constant([["", "item_3"]]))["embedding"].numpy()[0]
    order = [ids[i] for i in np.argsort(-(vectors @ query), kind="stable")]
    with ServerProcess(base, "tower_recs", log_path=str(tmp_path / "server.log")) as server:
        client = RecommenderClient(server.grpc_target, "tower_recs", timeout_s=30)
        got = client.recommend("user_1", 20, history=["item_3"], exclude=order[:5] + ["not-an-item"])
        client.close()
    assert [i for i, _ in got] == order[5:25]
    np.testing.assert_allclose([s for _, s in got], np.sort(vectors @ query)[::-1][5:25], rtol=1e-4)
