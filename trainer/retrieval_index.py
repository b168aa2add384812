"""Top-k retrieval over a catalogue with per-row exclusions and per-row k, in plain TF ops.

Stock TF Serving runs these ops (matmuls, slices, gathers, a hash-table lookup, `tf.math.top_k`, searchsorted,
a `tf.cond`); no ScaNN. The trainer's export and the synthetic test model both serve through this module,
and both build their index with `build_index`, the one function to call whenever the catalogue vectors
change (pipeline export, catalogue refresh):

    index = build_index(item_ids, item_vectors, cfg)   # exact below cfg.ann_min_items items, else IVF
    ids, scores = index(query, exclude, k)   # query [B, D] float32, exclude [B, E] string, k [B] int32

Two indexes with the same call:
  BruteForceIndex   scores every item (a matmul) and takes the top k: exact, linear in the catalogue.
  PartitionedIndex  IVF: k-means partitions of the item vectors, computed when the index is built (seeded,
                    scikit-learn). A query scores the partition centroids, takes the best `nprobe` partitions
                    and scores their members exactly (float32), or in int8 followed by a float re-rank of a
                    short list. Recall is below 1 unless nprobe covers every partition.

Each row gets its own k best items that are not in its ``exclude`` row, best first. The result has
``max(k)`` columns: a row's columns past its own k, and past the items left once its exclusions are
removed, hold ``PAD_ID`` ("") with score -inf. That is what lets TF Serving's server-side batching merge
requests with different k: it concatenates every input along dim 0 and splits every output along dim 0
(tensorflow_serving/batching/batching_session.cc), so a request gets the batch's width and its own k
valid entries. A scalar ``k`` (callers that run the signature directly, unbatched) applies to every row.

Exclusions never cost results: the partitioned index over-fetches k + (that row's excluded catalogue items)
candidates before removing them, and the probed partitions always hold that many: at build time a k-means
partition smaller than ceil((max_k + max_exclude) / nprobe) is merged into its members' nearest other
partitions, so no request (however many exclusions it sends) can leave the index short or push it onto a
slower path.

Limits are checked in the graph, so they hold under TF Serving too: 1 <= k <= max_k and at most
``max_exclude`` non-empty ids per exclude row.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Sequence

import numpy as np
import tensorflow as tf

if TYPE_CHECKING:
    from trainer.model_config import ModelConfig

# The id of a padding column, in inputs (history/exclude) and outputs; trainer.contract.PAD is the same "".
PAD_ID = ""
# int8 scoring keeps this many times the over-fetched width for the float re-rank.
INT8_RERANK_FACTOR = 4
# k-means is fitted on at most this many sampled vectors per partition (FAISS samples 256), then every
# item is assigned to its nearest centroid: export time grows with the catalogue, not its square.
KMEANS_SAMPLE_PER_PARTITION = 64
KMEANS_MAX_ITER = 20

_NEG_INF = float("-inf")
SCORINGS = ("float32", "int8")


class BruteForceIndex(tf.Module):
    """Scores every catalogue item against each query: exact, linear in the catalogue."""

    def __init__(self, item_ids: Sequence[str], item_vectors: np.ndarray, max_k: int, max_exclude: int,
                 name: str | None = None):
        super().__init__(name=name)
        if len(item_ids) != len(item_vectors):
            raise ValueError(f"{len(item_ids)} item ids but {len(item_vectors)} item vectors")
        self.max_k = int(max_k)
        self.max_exclude = int(max_exclude)
        self.item_ids = tf.constant(np.asarray(item_ids, dtype=object), tf.string)
        self.item_vectors = tf.Variable(np.asarray(item_vectors, np.float32), trainable=False,
                                        name="item_vectors")
        self.item_position = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(self.item_ids, tf.range(len(item_ids), dtype=tf.int64)),
            default_value=-1)

    def scores(self, query: tf.Tensor) -> tf.Tensor:
        """[B, D] -> [B, N] dot products. [N, D] x [B, D]^T, then transposed: ~30% faster at batch 1."""
        return tf.transpose(tf.matmul(self.item_vectors, query, transpose_b=True))

    def __call__(self, query: tf.Tensor, exclude: tf.Tensor, k: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """Top-k (ids [B, K], scores [B, K]) per row, K = max(k); see the module docstring."""
        return self._exact(query, exclude, self._checked_k(query, exclude, k))

    def vectors_at(self, positions: tf.Tensor) -> tf.Tensor:
        """Item vectors at catalogue positions (any shape of int64 positions -> [..., D]).

        Use this, not `tf.gather(index.item_vectors, ...)`: a gather on the variable itself is a
        ResourceGather, which switches the variable to copy-on-read, and from then on every dense read
        (the partitioned index's in-place slices, exact search) copies the whole catalogue (256 MB at 1M x 64).
        """
        return tf.gather(self.item_vectors.value(), positions)

    def _checked_k(self, query: tf.Tensor, exclude: tf.Tensor, k: tf.Tensor) -> tf.Tensor:
        """k broadcast to [B], once the limits hold."""
        k = tf.broadcast_to(tf.cast(k, tf.int32), [tf.shape(query)[0]])
        checks = [
            tf.debugging.assert_greater_equal(k, 1, message="k must be at least 1"),
            tf.debugging.assert_less_equal(k, self.max_k, message=f"k must be at most {self.max_k}"),
            tf.debugging.assert_less_equal(
                tf.reduce_sum(tf.cast(tf.not_equal(exclude, PAD_ID), tf.int32), axis=1), self.max_exclude,
                message=f"exclude may hold at most {self.max_exclude} item ids per row"),
        ]
        with tf.control_dependencies(checks):
            return tf.identity(k)

    def _exact(self, query: tf.Tensor, exclude: tf.Tensor, k: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        scores = self._without(self.scores(query), exclude)
        width = tf.minimum(tf.reduce_max(tf.concat([k, [0]], axis=0)), tf.shape(scores)[1])
        top = tf.math.top_k(scores, k=width)
        return self._result(tf.cast(top.indices, tf.int64), top.values, k)

    def _result(self, positions: tf.Tensor, values: tf.Tensor, k: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """(ids, scores) of catalogue positions [B, W] best first; "" / -inf past a row's k or its items."""
        width = tf.shape(values)[1]
        valid = (tf.range(width)[tf.newaxis, :] < k[:, tf.newaxis]) & (values > _NEG_INF)
        ids = tf.where(valid, tf.gather(self.item_ids, tf.maximum(positions, 0)), PAD_ID)
        return ids, tf.where(valid, values, tf.constant(_NEG_INF, tf.float32))

    def _without(self, scores: tf.Tensor, exclude: tf.Tensor) -> tf.Tensor:
        """Scores with each row's excluded items at -inf (unknown ids and PAD_ID are ignored)."""
        position = self.item_position.lookup(exclude)
        hits = tf.where(position >= 0)
        indices = tf.stack([hits[:, 0], tf.gather_nd(position, hits)], axis=1)
        return tf.tensor_scatter_nd_update(scores, indices,
                                           tf.fill([tf.shape(indices)[0]], tf.constant(_NEG_INF, tf.float32)))


def kmeans_partitions(item_vectors: np.ndarray, partitions: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(centroids [P, D], partition of each item [N]) from seeded k-means (scikit-learn).

    Fitted on a seeded sample of `KMEANS_SAMPLE_PER_PARTITION` vectors per partition; every item then goes
    to its nearest centroid.
    """
    from sklearn.cluster import KMeans

    vectors = np.asarray(item_vectors, np.float32)
    if not 1 <= partitions <= len(vectors):
        raise ValueError(f"ann_partitions={partitions}: must be between 1 and the {len(vectors)} catalogue items")
    rng = np.random.default_rng(seed)
    sample_size = min(len(vectors), KMEANS_SAMPLE_PER_PARTITION * partitions)
    sample = vectors[np.sort(rng.choice(len(vectors), sample_size, replace=False))]
    kmeans = KMeans(n_clusters=partitions, n_init=1, max_iter=KMEANS_MAX_ITER, random_state=seed).fit(sample)
    return kmeans.cluster_centers_.astype(np.float32), kmeans.predict(vectors)


def merge_small_partitions(item_vectors: np.ndarray, centroids: np.ndarray, partition: np.ndarray,
                           min_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(centroids [P', D], partition of each item [N]) with every partition holding at least `min_size` items
    (or one partition left): the smallest partition, while under `min_size`, is dissolved and each of its
    items moves to its nearest remaining centroid. Empty partitions go first.

        centroids, partition = merge_small_partitions(vectors, *kmeans_partitions(vectors, 1000, 0), 55)

    Why: `nprobe` partitions of at least ceil((max_k + max_exclude) / nprobe) items always hold the
    over-fetched k + exclusions, so the served graph needs no exact-search fallback.
    """
    vectors = np.asarray(item_vectors, np.float32)
    partition = np.asarray(partition).copy()
    sizes = np.bincount(partition, minlength=len(centroids))
    alive = np.ones(len(centroids), bool)
    squared_norms = np.einsum("pd,pd->p", centroids, centroids)
    while alive.sum() > 1:
        live = np.flatnonzero(alive)
        smallest = live[np.argmin(sizes[live])]
        if sizes[smallest] >= min_size:
            break
        alive[smallest] = False
        members = np.flatnonzero(partition == smallest)
        others = np.flatnonzero(alive)
        # Nearest by squared distance; the members' own norms do not change the argmin.
        distance = squared_norms[others] - 2.0 * vectors[members] @ centroids[others].T
        nearest = others[np.argmin(distance, axis=1)]
        partition[members] = nearest
        sizes[smallest] = 0
        np.add.at(sizes, nearest, 1)
    renumber = np.cumsum(alive) - 1
    return centroids[alive], renumber[partition]


class PartitionedIndex(BruteForceIndex):
    """IVF index: centroid scores -> best `nprobe` partitions -> exact (or int8 + re-ranked) member scores.

        index = PartitionedIndex(ids, vectors, max_k=100, max_exclude=1000, partitions=1000, nprobe=32)
        ids, scores = index(query, exclude, k)

    Items are stored sorted by partition, so a partition is one contiguous range of positions
    (`partition_start`, `partition_size`); `item_ids`/`item_vectors`/`item_position` follow that order.
    `self.partitions` is the count after `merge_small_partitions` (at most the one asked for).

    Args:
      partitions: number of k-means partitions (at most the number of items).
      nprobe: partitions scored per query; clamped to the partition count (all of them = exact results).
      scoring: "float32" scores members exactly; "int8" scores them from per-dimension int8 codes (4x less
        memory read) and re-ranks `INT8_RERANK_FACTOR` x the over-fetched width in float32.
      seed: the k-means seed (the same vectors and seed give the same index).
    """

    def __init__(self, item_ids: Sequence[str], item_vectors: np.ndarray, max_k: int, max_exclude: int,
                 partitions: int, nprobe: int, scoring: str = "float32", seed: int = 0, name: str | None = None):
        if scoring not in SCORINGS:
            raise ValueError(f"ann_scoring={scoring!r}: must be one of {SCORINGS}")
        if len(item_ids) != len(item_vectors):
            raise ValueError(f"{len(item_ids)} item ids but {len(item_vectors)} item vectors")
        if nprobe < 1:
            raise ValueError(f"ann_nprobe={nprobe}: must be at least 1")
        vectors = np.asarray(item_vectors, np.float32)
        centroids, partition = merge_small_partitions(
            vectors, *kmeans_partitions(vectors, partitions, seed), min_size=-(-(max_k + max_exclude) // nprobe))
        order = np.argsort(partition, kind="stable")
        super().__init__(np.asarray(item_ids, dtype=object)[order], vectors[order], max_k, max_exclude, name=name)
        sizes = np.bincount(partition, minlength=len(centroids))
        self.partitions = len(centroids)
        self.nprobe = int(min(nprobe, self.partitions))
        self.scoring = scoring
        self.centroids = tf.Variable(centroids, trainable=False, name="centroids")
        self.partition_start = tf.constant(np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64))
        self.partition_size = tf.constant(sizes.astype(np.int64))
        if scoring == "int8":
            scale = np.maximum(np.abs(vectors).max(axis=0), 1e-12) / 127.0
            self.int8_scale = tf.constant(scale.astype(np.float32))
            self.int8_codes = tf.Variable(np.round(vectors[order] / scale).astype(np.int8), trainable=False,
                                          name="int8_codes")

    def __call__(self, query: tf.Tensor, exclude: tf.Tensor, k: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """Top-k (ids [B, K], scores [B, K]) per row, K = max(k); see the module docstring."""
        k = self._checked_k(query, exclude, k)
        excluded = self.item_position.lookup(exclude)                               # [B, E], -1 = not an item
        needed = k + tf.reduce_sum(tf.cast(excluded >= 0, tf.int32), axis=1)       # over-fetch per row
        probe = tf.math.top_k(tf.matmul(query, self.centroids, transpose_b=True), k=self.nprobe).indices
        # The probed partitions hold at least `needed` items (merge_small_partitions), so no exact fallback.
        return self._partitioned(query, probe, excluded, tf.reduce_max(needed), k)

    def _partitioned(self, query, probe, excluded, fetch, k) -> tuple[tf.Tensor, tf.Tensor]:
        starts, sizes = tf.gather(self.partition_start, probe), tf.gather(self.partition_size, probe)
        row_spec = (tf.TensorSpec([None], tf.int64), tf.TensorSpec([None], tf.float32))
        # Row by row, so memory stays one row's members however large the batch (the evaluator sends 256);
        # a batch of 1 (the common request) skips the loop.
        candidates, values = tf.cond(
            tf.equal(tf.shape(query)[0], 1),
            lambda: tuple(t[tf.newaxis] for t in self._row_top(query[0], starts[0], sizes[0], fetch)),
            lambda: tf.map_fn(lambda row: self._row_top(*row, fetch), (query, starts, sizes),
                              fn_output_signature=row_spec))
        values = tf.where(self._is_excluded(candidates, excluded), _NEG_INF, values)
        best = tf.math.top_k(values, k=tf.reduce_max(k))
        return self._result(tf.gather(candidates, best.indices, batch_dims=1), best.values, k)

    def _row_top(self, query, starts, sizes, width) -> tuple[tf.Tensor, tf.Tensor]:
        """(positions [width], scores [width]) of one query's best members of its probed partitions, best
        first; -1 / -inf where the partitions hold fewer than `width`."""
        if self.scoring == "int8":
            shortlist = width * INT8_RERANK_FACTOR
            scores = self._probed_scores(self.int8_codes, query * self.int8_scale, starts, sizes)
            positions, scores = self._top_members(scores, starts, sizes, shortlist)
            exact = tf.linalg.matvec(self.vectors_at(tf.maximum(positions, 0)), query)   # float re-rank
            return self._best(positions, tf.where(scores > _NEG_INF, exact, _NEG_INF), width)
        return self._top_members(self._probed_scores(self.item_vectors, query, starts, sizes), starts, sizes, width)

    def _probed_scores(self, table: tf.Variable, query, starts, sizes) -> tf.Tensor:
        """[sum(sizes)] scores of the probed partitions' members, partition after partition.

        A partition is a contiguous row range, so each is read in place: TF's Slice of leading rows shares
        the variable's buffer, where a gather would copy every probed vector first (2x the memory traffic of
        the scoring itself). The loop is unrolled over the static `nprobe`.
        """
        every_column = tf.fill(tf.shape(starts), tf.constant(-1, tf.int64))
        begins = tf.unstack(tf.stack([starts, tf.zeros_like(starts)], axis=1), num=self.nprobe)
        extents = tf.unstack(tf.stack([sizes, every_column], axis=1), num=self.nprobe)
        table = table.value()     # one dense read; see `vectors_at` for why never a sparse one
        query = query[tf.newaxis]
        scores = [tf.matmul(tf.cast(tf.slice(table, begin, extent), tf.float32), query, transpose_b=True)
                  for begin, extent in zip(begins, extents)]
        return tf.concat(scores, axis=0)[:, 0]

    def _top_members(self, scores, starts, sizes, width) -> tuple[tf.Tensor, tf.Tensor]:
        """`_best` over `_probed_scores`: catalogue positions of the `width` best, -1 / -inf past the end."""
        top = tf.math.top_k(tf.concat([scores, tf.fill([width], _NEG_INF)], axis=0), k=width)
        at = tf.cast(top.indices, tf.int64)
        ends = tf.cumsum(sizes)
        probe = tf.minimum(tf.searchsorted(ends, at, side="right"), self.nprobe - 1)
        positions = tf.gather(starts, probe) + at - (tf.gather(ends, probe) - tf.gather(sizes, probe))
        return tf.where(top.values > _NEG_INF, positions, -1), top.values

    @staticmethod
    def _best(positions, scores, width) -> tuple[tf.Tensor, tf.Tensor]:
        """The `width` best (position, score) pairs, padded with (-1, -inf) when there are fewer."""
        scores = tf.concat([scores, tf.fill([width], _NEG_INF)], axis=0)
        positions = tf.concat([positions, tf.fill([width], tf.constant(-1, tf.int64))], axis=0)
        top = tf.math.top_k(scores, k=width)
        return tf.gather(positions, top.indices), top.values

    @staticmethod
    def _is_excluded(candidates: tf.Tensor, excluded: tf.Tensor) -> tf.Tensor:
        """[B, W] bool: candidate positions found in their row's excluded positions (binary search)."""
        excluded = tf.sort(tf.concat([excluded, -tf.ones_like(excluded[:, :1])], axis=1), axis=1)
        at = tf.searchsorted(excluded, candidates, side="left")
        at = tf.minimum(at, tf.shape(excluded, out_type=at.dtype)[1] - 1)
        return tf.equal(tf.gather(excluded, at, batch_dims=1), candidates) & (candidates >= 0)


def auto_partitions(num_items: int) -> int:
    """The partition count used when `ann_partitions` is 0: about sqrt(N) (1,000 at 1M items)."""
    return max(1, int(round(math.sqrt(num_items))))


def build_index(item_ids: Sequence[str], item_vectors: np.ndarray, cfg: "ModelConfig") -> BruteForceIndex:
    """The index `cfg` asks for over these vectors: call it again whenever the catalogue vectors change.

    Exact (`BruteForceIndex`) below `cfg.ann_min_items` items, `PartitionedIndex` from there on, with
    `cfg.ann_partitions` (0: `auto_partitions`), `cfg.ann_nprobe`, `cfg.ann_scoring` and `cfg.seed`.

        index = build_index(catalogue_ids, candidate_vectors, ModelConfig(ann_min_items=100_000))
    """
    if cfg.ann_scoring not in SCORINGS:   # checked here too, so a bad value fails below the threshold as well
        raise ValueError(f"ann_scoring={cfg.ann_scoring!r}: must be one of {SCORINGS}")
    if len(item_ids) < cfg.ann_min_items:
        return BruteForceIndex(item_ids, item_vectors, max_k=cfg.max_k, max_exclude=cfg.max_exclude)
    partitions = cfg.ann_partitions or auto_partitions(len(item_ids))
    if partitions > len(item_ids):
        raise ValueError(f"ann_partitions={cfg.ann_partitions}: more partitions than the {len(item_ids)} "
                         f"catalogue items")
    return PartitionedIndex(item_ids, item_vectors, max_k=cfg.max_k, max_exclude=cfg.max_exclude,
                            partitions=partitions, nprobe=cfg.ann_nprobe, scoring=cfg.ann_scoring, seed=cfg.seed)
