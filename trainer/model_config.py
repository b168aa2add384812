"""Hyperparameters of the two-tower model: the one place they are set.

The TFX pipeline (`pipeline/configs.py`) and the benchmarks both start from
`ModelConfig()`; the pipeline passes it to the Trainer as `custom_config["model"]`.
The defaults are the ones tuned on the validation split of ml-latest-small (the train part of
the chronological split, split again by time; the test split is never read) by
`python -m benchmarks.quality --tune --grid FIELD VALUE...`; the evidence for each is the
committed `benchmarks/results/tuning/<field>.json` (summary: `benchmarks/results/tuning/README.md`).

    >>> cfg = ModelConfig(embedding_dim=32)
    >>> ModelConfig.from_dict(cfg.to_dict()) == cfg
    True
"""
from __future__ import annotations

import dataclasses
from typing import Any

from encoder.precision import PRECISIONS   # no TensorFlow at import

# ModelConfig.optimizer values (trainer/optimizers.py builds them; kept here so the config needs no TensorFlow).
OPTIMIZERS = ("adam", "lazy_adam")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Every hyperparameter of the two-tower model, its training and its serving signatures.

    Any field can be set for a pipeline run as `TOWER_RECS_MODEL_<FIELD>` (pipeline/overrides.py).
    """

    # Tower sizes.
    embedding_dim: int = 64          # width of the shared query/candidate space
    id_embedding_dim: int = 64       # user and item id embeddings
    hidden_dims: tuple[int, ...] = (128,)

    # Query tower: the history is a weighted mean of the user's recent items. With
    # `recency_weighting` the weights are learned per recency rank (most recent item = rank 0).
    recency_weighting: bool = True
    # "mean" (the above) or "sasrec": causal self-attention over the history items (id + text tokens,
    # learned recency positions, the last position's output; trainer/sequence_tower.py). On validation the
    # mean tower led (R@50 0.305 / NDCG@10 0.161 vs 0.301 / 0.153, tuning/combined_query_tower.json) and
    # trains several times faster on CPU (benchmarks/results/training_throughput.md): default "mean".
    query_tower: str = "mean"
    sequence_blocks: int = 1         # transformer blocks of the "sasrec" tower
    sequence_heads: int = 2
    sequence_dropout: float = 0.1

    # Loss: in-batch softmax over L2-normalised embeddings.
    # Validation (benchmarks/results/tuning/temperature.json): 0.2 led 0.1 on R@50 by 0.008 and trailed on
    # NDCG@10 by 0.004 (one seed, within noise); 0.05 trailed on both. Kept 0.1.
    temperature: float = 0.1
    remove_accidental_hits: bool = True
    # > 0: this many trained items drawn uniformly per batch join the in-batch negatives (mixed negative
    # sampling), so rarely chosen items are negatives too; logQ uses the mixture's sampling probability.
    # Validation, seeds 42-44 (tuning/mixed_negatives*__sampled_negatives.json): 1024 gave R@50 0.3248 vs 0.3222,
    # NDCG@10 0.1738 vs 0.1734 (within seed spread) for 1.2x the training time; 4096 trailed (0.3215): off.
    sampled_negatives: int = 0
    logq_correction: bool = True     # subtract log(sampling probability) of in-batch negatives
    # Probability of hiding an item's id embedding in training, so its text must carry it (cold start).
    # 0.0 won on validation (R@50 0.309 / NDCG@10 0.165 vs 0.288 / 0.148 at 0.3) but costs cold items
    # (validation cold R@100 0.033 vs 0.097): benchmarks/results/tuning/id_dropout.json.
    id_dropout: float = 0.0
    # >= 0: a curriculum, the id-dropout rate moving linearly from this value to `id_dropout` over the run.
    # Validation (tuning/curriculum_id_dropout_start.json, 0.9 -> 0): cold R@100 0.110 (vs 0.033 without,
    # 0.097 at a constant 0.3), all-items R@50 / NDCG@10 0.293 / 0.147 (vs 0.309 / 0.165): off by default.
    id_dropout_start: float = -1.0
    # Content-to-id map: a linear map from an item's text to its id embedding, trained on known items;
    # items without an id vector (new ones, or dropped in training) get its output instead of zeros, so a new
    # item is placed like a known item with that text. Alone it cost all-items quality (validation R@50 0.305 ->
    # 0.234, tuning/combined_id_from_text.json): catalogue items that never had an interaction got stand-ins too
    # and crowded out known ones. With `unseen_item_scale` below they do not (validation, 3 seeds,
    # tuning/id_from_text*__unseen_item_scale.json vs no_map*__unseen_item_scale.json): R@50 0.316 vs 0.317,
    # NDCG@10 0.165 vs 0.164, new items' R@100 0.64x the warm one (0.07x without the map), at a cost on the warm
    # slice while new items compete (warm R@50 0.276 vs 0.323; the ID-only model, which never recommends a new
    # item, 0.304, tuning/id_only__unseen_item_scale.json). Chosen: the product's promise is that a new item
    # with only a title is recommendable.
    id_from_text: bool = True
    # With `id_from_text`, the stand-in of an item without an id vector outside training: 0 = the linear map's
    # output; k > 0 = the mean of the id vectors of the k trained items whose text is nearest (cosine in the
    # reduced text space), weighted by that cosine. A title's close relatives (a sequel, the same series or
    # director) carry what one linear map of all texts averages away. Training keeps the map (a dropped id would
    # find itself among the neighbours); the map also places unknown items that have no text. No effect without
    # `id_from_text` (no stand-in at all: an unknown item's id part is zero). Validation, seed 42, k -> warm R@50,
    # cold/warm R@100 (tuning/knn_s42_stand_in_neighbours.json): 0 0.3132, 0.54x; 3 0.3330, 0.17x; 10 0.3335, 0.12x:
    # the neighbours' id vectors score new items far lower. Moved back up by `new_item_popularity`
    # (tuning/knn{3,10}_q_s42_*, 0.85 / 0.95 / 1.0): k = 10 0.3292, 0.22x / 0.3207, 0.34x / 0.2868, 0.67x; k = 3
    # 0.3259, 0.26x / 0.3145, 0.37x / 0.2735, 0.72x: at the 0.5x bound about 0.30 and 0.295 against the map's 0.313,
    # a worse trade-off. Off.
    stand_in_neighbours: int = 0
    # Score scale of the serving index's catalogue items that had no interaction in the training data: their
    # candidate vector (text, or the `id_from_text` stand-in) times this, so they need a better text match to
    # outrank a known item. An item in the catalogue for a whole training window without one interaction is
    # evidence of an unpopular item, not of a new one. Items added after training (`make refresh-catalogue`,
    # the `candidate_embedding` signature) keep full weight: they are new. 1.0 = no scaling. Validation
    # (tuning/id_from_text__unseen_item_scale.json): R@50 0.240 at 1.0, 0.312 at 0.7, 0.314 at 0.5 and at 0.0;
    # 0.5 keeps such items reachable by a close enough text match.
    unseen_item_scale: float = 0.5
    # Popularity prior of the served score (trainer/popularity.py): score = query . candidate +
    # popularity_prior * (log(1 + item's training interactions) - log(1 + a new item's assumed count)), the
    # assumed count set by `new_item_popularity` and `new_item_text_popularity` (below). Serving only:
    # training is unchanged. Validation, seeds 42-44 (tuning/prior*__popularity_prior.json): R@50 0.3222 vs 0.3158
    # without it, NDCG@10 0.1734 vs 0.1651; over 0, 0.03, 0.05, 0.08, 0.12 (seed 42) 0.08 led. It also lifts the
    # known items over new ones, so `new_item_popularity` sets where a new item starts (tuning/prior*__
    # new_item_popularity.json, picked as the best warm R@50 with cold R@100 >= 0.5x warm): 0.9 left new items at
    # 0.45-0.52x the warm recall, 0.95 (the choice while every new item got the quantile) at 0.60-0.68x (0.57-0.68x
    # without the prior) with warm R@50 0.2835 vs 0.2762 without the prior. The ID-only baseline keeps the prior
    # with new items at quantile 0 (it cannot place them): warm R@50 0.3089 (tuning/id_only__popularity_prior.json;
    # 0.3087 over seeds 42-44, id_only_s4*). Re-checked with averaged weights (tuning/avg_s4*_popularity_prior.json,
    # seeds 42-44): 0.08 / 0.1 / 0.12 -> R@50 0.3281 / 0.3240 / 0.3196: kept.
    popularity_prior: float = 0.08
    # How far a new item's text moves its assumed count from the `new_item_popularity` quantile
    # (trainer/popularity.py: log(1 + n_new) += this x (text-predicted log(1 + n) - its mean over the known items));
    # 0 = every new item at the quantile. Both fields only place new items (the all-items metrics do not move), so
    # they are chosen together by the rule above: the best mean warm R@50 with cold R@100 >= 0.5x warm in every seed
    # (seeds 42-44, --tune-cold). With the averaged weights (tuning/avg_textpop_q*_new_item_text_popularity.json),
    # quantile / weight -> warm R@50, cold/warm per seed: 0.75 / 2.5 0.3051, 0.58/0.58/0.54x; 0.75 / 2 0.3100, 0.48x
    # in seed 42; 0.75 / 1.5 0.3141, 0.41x; 0.7 / 3 0.3038, >= 0.57x; 0.7 / 2.5 0.3101, 0.50/0.52/0.51x -> 0.7 / 2.5
    # (the rule's pick sits at the cold bound: its worst seed has 0.004 to spare). The first grid, before averaging
    # (tuning/textpop_q*__new_item_text_popularity.json), showed why the text is read: at the old default's
    # cold/warm (0.95 / 0: 0.65x, warm 0.2835), 0.8 / 2.5 gives 0.65x with warm 0.2937 and cold R@100 0.2625 vs
    # 0.2553 -- reading the text moves the trade-off itself, not only along it. Re-checked at 14 epochs averaging
    # the last 13 (tuning/ep14_textpop_q*, ep14_s4*): 0.7 / 2 0.3203, 0.47x; 0.65 / 2.5 0.3185, 0.49x; 0.65 / 3
    # 0.3124, >= 0.54x; 0.7 / 3 0.3084, >= 0.59x; 0.7 / 2.5 0.3147, >= 0.52x -> kept then; now re-chosen with
    # `new_item_scale` (below).
    new_item_popularity: float = 1.0
    new_item_text_popularity: float = 2.5
    # Score scale of a new item's tower vector, its query match (the prior is added unscaled): a new item's match
    # is read from its text alone (and the `id_from_text` stand-in), a noisier estimate than a known item's, so it
    # is shrunk towards the prior; the prior then has to lift new items further (a higher quantile). 1.0 = no
    # shrinkage. A scratch sweep of the three serving-only fields on one trained model per seed (validation,
    # seeds 42-44: scale 0.3-1.35 x quantile 0.5-1.0 x weight 0-5) found the frontier at scale < 1 with the
    # quantile near 1; its best points, re-run by `--tune --tune-cold` (tuning/newscale_q*_w*_s4*_new_item_scale.json),
    # quantile / weight / scale -> mean warm R@50, lowest cold/warm R@100: 0.7 / 2.5 / 1.0 (before) 0.3147, 0.518x;
    # 0.95 / 2.5 / 0.7 0.3250, 0.503x; 0.99 / 2.5 / 0.6 0.3211, 0.591x; 1.0 / 1.5 / 0.5 0.3280, 0.544x; 1.0 / 2.5 /
    # 0.4 0.3287, 0.503x; 1.0 / 2.5 / 0.5 0.3123, 0.746x. The rule (best warm R@50, cold >= 0.5x in every seed)
    # picks 1.0 / 2.5 / 0.4: warm +4.4% over the old placement and +4.1% over the ID-only model's 0.3158
    # (tuning/idonly_ep14_s4*); 1.0 / 1.5 / 0.5 is a near tie with more cold margin. Quantile 1.0 assumes the
    # most-chosen item's count before the text moves it: with the match shrunk, only a close text match, or a title
    # like the popular ones, lifts a new item into a list. Test split, 5 seeds, paired vs the old placement
    # (benchmarks/results/quality.md): warm R@50 +3.7% [+2.9, +4.6], NDCG@10 +10.8%; cold R@50 -26.9%, R@10 0.005
    # vs 0.033 (new items now enter lists mostly below the top 10); the whole list (`mixed` slice) R@50 +2.0%
    # [+0.9, +3.0], NDCG@10 +7.4%; cold/warm R@100 0.52x; warm vs ID-only +1.4%.
    new_item_scale: float = 0.4
    # Probability of replacing a user's id with the OOV id in training, so new users get a useful vector.
    user_id_dropout: float = 0.1
    # > 1: in training, each example's history hides its d most recent items, d drawn uniformly from
    # 0..target_horizon-1 per example, so the query learns to predict items up to that many steps ahead of its
    # history rather than only the next one (a future-window objective in its cheapest form: no extra
    # examples or compute; serving unchanged). A recommendation list is judged on the items a user picks over the
    # following weeks, not on the next one. Validation, seeds 42-44 (tuning/horizon_*target_horizon.json), 1 -> 3:
    # R@50 0.3281 -> 0.3306 (higher in each seed), NDCG@10 0.1755 both, warm R@50 0.3101 -> 0.3134, cold/warm
    # R@100 0.50-0.52x -> 0.51-0.55x; 2 close to 3, 5 and 8 trailed (seed 42). It was the default for one test-split
    # run, which did not confirm it (benchmarks/results/quality_target_horizon.md, 5 seeds, paired vs 1: all items
    # R@50 -0.5% [-1.7, +0.7], warm +0.6% [-0.9, +2.2], cold R@50 -9.0% [-14.9, -3.4], cold/warm R@100 0.49x,
    # under issue 16's 0.5x): a gain smaller than the seed spread, not adopted. The ID-only baseline trains with 1
    # in any case, its own validation pick (warm R@50 0.3122 vs 0.3084; benchmarks.quality.id_only).
    target_horizon: int = 1

    # Optimisation. Re-checked on validation at the LazyAdam defaults, one seed per value
    # (tuning/lazy_adam_defaults__*.json: temperature, embedding_dim, batch_size, learning_rate, hidden_dims,
    # user_id_dropout, epochs): every change moved R@50 by at most +0.010 and NDCG@10 by +0.015, within the
    # spread of one config over seeds 42-44 (R@50 0.310-0.322, NDCG@10 0.154-0.170): defaults kept. Again with the
    # popularity prior on (tuning/prior_defaults__*.json, seed 42): temperature 0.07 / 0.1 / 0.15 -> R@50 0.3214 /
    # 0.3221 / 0.3139, embedding_dim 128 0.3180, a 10-epoch curve peaking at epoch 5 (0.3255; 6: 0.3221): kept.
    # With averaged weights (average_last_epochs 3; tuning/avg_s4*_learning_rate.json, seeds 42-44), since weight
    # averaging often favours a higher rate: 0.005 / 0.0075 / 0.01 -> R@50 0.3281 / 0.3233 / 0.3138: kept.
    batch_size: int = 1024
    # tuning/learning_rate.json: 0.01 led 0.005 at id_dropout 0.3, but with id_dropout 0 it trailed it
    # (combined_query_tower.json, mean tower: R@50 0.305 / NDCG@10 0.161 vs 0.309 / 0.165): kept 0.005.
    learning_rate: float = 0.005
    lr_schedule: str = "constant"    # "constant" or "cosine" (decays to 0 over the whole run)
    # "adam" or "lazy_adam" (trainer/optimizers.py: sparse updates touch only the batch's embedding rows, so a
    # step's cost stops growing with the catalogue). Validation, 3 seeds (tuning/optimizer_seed4{2,3,4}__
    # optimizer.json vs tags_none_seed4{3,4}__query_tower.json): R@50 0.3154 vs 0.3128, NDCG@10 0.1633 both,
    # cold R@100 0.033 vs 0.031, warm 0.432 vs 0.434: the same quality; 4.8x Adam's examples/s at 300k items
    # and 1.4x at 60k (benchmarks/results/training_throughput_catalogue.md). Chosen.
    optimizer: str = "lazy_adam"
    # Chosen with `average_last_epochs` (below): the served weights average the epoch ends, so the run trains
    # past the single-epoch peak (tuning/epochs.json: best R@50 at epoch 5 of a 12-epoch curve without averaging).
    epochs: int = 14
    # A bound on the examples one run shows the model (epochs x training examples): past it a run trains
    # floor(max_training_examples / examples) epochs (at least 1) instead of `epochs`; 0 = no bound. `epochs` was
    # chosen on ml-latest-small (~90k training examples, 1.3M examples seen); on larger data the same quality is
    # reached in fewer passes. Validation at 1.5M interactions (1.13M training examples, seeds 42-43, all 30k eval
    # users, paired bootstrap; benchmarks/results/epochs_1.5M.md): 3 epochs vs 6 R@50 +0.07% [-0.10, +0.25], NDCG@10
    # +1.1% [+0.8, +1.4], Trainer 135 vs 224 s; 2 epochs R@50 -0.5% [-0.7, -0.4]. 4M gives 3 epochs there, 1 at 5M,
    # and leaves ml-latest-small and the 150k benchmark at `epochs`.
    max_training_examples: int = 4_000_000
    # The served weights are the mean of the weights at the last N epoch ends (trainer/weight_averaging.py;
    # all epochs when a run trains fewer; 1 = the last epoch's weights). Also for warm-started runs
    # (benchmarks/results/warm_start_averaged.md: warm/cold time 0.32, warm R@50 +0.026 over cold; at 14 / 13 with
    # the warm retrain's 6 epochs all averaged, warm_start_epochs14.md: 0.08, +0.017 [+0.001, +0.035]). Validation,
    # seeds 42-44 (tuning/avg_s4{2,3,4}_average_last_epochs.json), N -> mean R@50 / NDCG@10 / warm R@50, lowest
    # cold/warm R@100, at 6 epochs: 1 0.3222 / 0.1734 / 0.3002, 0.54x; 2 0.3277 / 0.1760 / 0.3030, 0.57x; 3 0.3281 /
    # 0.1755 / 0.3051, 0.54x; 4 0.3251 / 0.1719 / 0.3058, 0.54x. Once `max_training_examples` bounded the epochs of
    # large data, more epochs cost ml-latest-small seconds only (tuning/ep{6,8,10,14}_s4*_average_last_epochs.json,
    # epochs/N, one machine and text cache): 6/3 0.3273 / 0.1741 / 0.3117, 0.50x; 8/4 0.3312 / 0.1763 / 0.3139,
    # 0.52x; 10/3 0.3270 / 0.1732 / 0.3086, 0.55x; 10/5 0.3314 / 0.1763 / 0.3126, 0.53x; 10/7 0.3333 / 0.1769 /
    # 0.3174, 0.52x; 14/7 0.3273 / 0.1723 / 0.3047, 0.58x; 14/10 0.3317 / 0.1769 / 0.3115, 0.55x; 14/13 0.3333 /
    # 0.1789 / 0.3147, 0.52x. 14/13 and 10/7 tie on R@50 (0.3333); the rule's next criterion, NDCG@10, chose
    # 14/13: every epoch end but the first. One float32 copy of the weights whatever N. Test split, 5 seeds, paired
    # vs 6/3 (benchmarks/results/quality_vs_6_epochs_last_3.md): R@50 +2.6% [+1.4, +3.8], NDCG@10 +2.6% [+0.3, +5.1].
    # (This machine's 6/3 runs differ from avg_s4*'s at the third decimal, with the old code too, while the
    # ID-only model's match exactly: the text input differs, most likely the cached encoder output of another
    # machine, and training amplifies it. So the comparison above is within one machine and cache.)
    average_last_epochs: int = 13
    seed: int = 42
    # Warm start (trainer/warm_start.py): the Trainer starts from the latest blessed model's weights (rows
    # of ids in both vocabularies carried, new ids initialised as usual) and then trains
    # `warm_start_epochs` epochs at `warm_start_learning_rate` instead of `epochs` at `learning_rate`.
    # False (TOWER_RECS_MODEL_WARM_START=0) forces a cold start. Chosen on validation (ml-latest-small, 5 time
    # spans, warm retrain on the newest span only; benchmarks/results/warm_start.json "tuning"): no setting
    # reached 99% of the cold model's validation R@50 and NDCG@10 together (NDCG@10 on 114 users is noisy), so
    # the rule took the best warm R@50: 6 epochs at 0.002 (0.255 vs cold 0.251; 0.005 peaked at 0.247 after 3
    # epochs, 0.001 and 0.0005 stayed lower). Retraining warm on the same cumulative window never reached the
    # cold model within 3 epochs at any of those rates (warm_start_same_window.json).
    warm_start: bool = True
    warm_start_epochs: int = 6
    warm_start_learning_rate: float = 0.002

    # Speed. XLA (`jit_compile`) is for GPUs: on CPU its gathers/scatters made a step ~8x slower
    # (720 vs 89 ms at batch 1024, benchmarks/results/training_throughput.md). Steps per call into the
    # TF runtime: >1 saves Python overhead on fast devices.
    jit_compile: bool = False
    # XLA on where a GPU is visible (`jit_compile` above forces it everywhere; trainer/distribution.py).
    xla_on_gpu: bool = True
    steps_per_execution: int = 1
    # bfloat16 compute in the towers (GPU); embeddings, normalisation and dot products stay float32.
    mixed_precision: bool = False
    # >0: the model keeps its text table reduced to this many principal components of the catalogue's
    # text vectors (a frozen linear map, applied to new items' text too): 3x less memory traffic per
    # step at 128. 0 = the full encoder width. 128 beat 0 and 64 on validation on R@50 and NDCG@10
    # (benchmarks/results/tuning/text_pca_dim.json) and trains as fast as 64 on 2 CPUs
    # (benchmarks/results/training_throughput.md).
    text_pca_dim: int = 128
    # Training input: index features (~176 bytes per interaction) are held in memory up to this many
    # MiB; larger data is streamed from the Transform output (shuffled full batches from the TFRecords).
    in_memory_budget_mb: int = 2048
    # Fail the run when no GPU is visible instead of training on CPU (set by TOWER_RECS_TRAINER_GPUS > 0).
    require_gpu: bool = False

    # Item text encoder (TF Hub handles: local paths or URLs).
    preprocess_handle: str = "models/minilm/preprocess"
    encoder_handle: str = "models/minilm/encoder"
    encoder_output_key: str = "sentence_embedding"
    train_encoder: bool = False      # frozen: text embedded once per distinct item
    # Precision of the catalogue's batch embedding (CatalogEmbedder, or the Trainer without it): "bfloat16" runs
    # the frozen encoder's matmuls in bfloat16 on CPU for those calls only (encoder/precision.py): 1.48-1.56x the
    # texts/s on the earlier machine's CPU, 1.28-1.34x on an AMD EPYC (both with native bfloat16; emulated and slower
    # elsewhere), each vector within cosine 0.9998 of float32 (benchmarks/results/encoder_precision*.md). float32 by default: the served graph
    # embeds new items in float32, and TF Serving's CPU build is not guaranteed the pass.
    catalogue_embedding_precision: str = "float32"
    text_seq_length: int = 64        # tokens kept per item text when the encoder runs in the graph

    # Serving.
    max_k: int = 100
    default_k: int = 10
    max_exclude: int = 1000

    # Catalogue index (trainer/retrieval_index.py). Catalogues of at least `ann_min_items` items are served
    # from an IVF index (k-means partitions, seeded with `seed`), smaller ones by exact search. Each query
    # scores `ann_nprobe` of `ann_partitions` partitions (0 = about sqrt(items)); "int8" scores them from
    # int8 codes with a float re-rank. nprobe 20 of 1,000 partitions: recall@100 0.990 of exact on 1M clustered
    # synthetic items (12: 0.944; benchmarks/results/ann.md). The evaluator scores the served index, so the
    # blessing sees its recall.
    ann_min_items: int = 100_000
    ann_partitions: int = 0
    ann_nprobe: int = 20
    ann_scoring: str = "float32"

    def __post_init__(self):
        """Rejects index settings out of range, naming the field (also for env overrides). `ann_scoring` is
        checked where the index is built (`build_index`), also naming the field."""
        problems = []
        if self.ann_min_items < 1:
            problems.append(f"ann_min_items={self.ann_min_items}: must be at least 1")
        if self.ann_partitions < 0:
            problems.append(f"ann_partitions={self.ann_partitions}: must be 0 (auto) or a partition count >= 1")
        if self.ann_nprobe < 1:   # above the partition count it probes them all (exact results)
            problems.append(f"ann_nprobe={self.ann_nprobe}: must be at least 1")
        if self.optimizer not in OPTIMIZERS:
            problems.append(f"optimizer={self.optimizer!r}: must be one of {OPTIMIZERS}")
        if self.warm_start_learning_rate <= 0:
            problems.append(f"warm_start_learning_rate={self.warm_start_learning_rate}: must be positive")
        if self.popularity_prior < 0:
            problems.append(f"popularity_prior={self.popularity_prior}: must be at least 0 (0 = no prior)")
        if not 0.0 <= self.new_item_popularity <= 1.0:
            problems.append(f"new_item_popularity={self.new_item_popularity}: must be a quantile in [0, 1]")
        if self.new_item_text_popularity < 0:
            problems.append(f"new_item_text_popularity={self.new_item_text_popularity}: must be at least 0 "
                            f"(0 = new items at the new_item_popularity quantile)")
        if self.new_item_scale < 0:
            problems.append(f"new_item_scale={self.new_item_scale}: must be at least 0 (0 = new items ranked by "
                            f"their prior alone)")
        if not 0.0 <= self.unseen_item_scale <= 1.0:
            problems.append(f"unseen_item_scale={self.unseen_item_scale}: must be in [0, 1]")
        if self.sampled_negatives < 0:
            problems.append(f"sampled_negatives={self.sampled_negatives}: must be at least 0")
        if self.max_training_examples < 0:
            problems.append(f"max_training_examples={self.max_training_examples}: must be at least 0 (0 = no bound)")
        if self.warm_start_epochs < 1:
            problems.append(f"warm_start_epochs={self.warm_start_epochs}: must be at least 1")
        if self.average_last_epochs < 1:
            problems.append(f"average_last_epochs={self.average_last_epochs}: must be at least 1 "
                            f"(1 = the last epoch's weights)")
        if self.catalogue_embedding_precision not in PRECISIONS:
            problems.append(f"catalogue_embedding_precision={self.catalogue_embedding_precision!r}: must be one of "
                            f"{PRECISIONS}")
        if self.stand_in_neighbours < 0:
            problems.append(f"stand_in_neighbours={self.stand_in_neighbours}: must be at least 0 (0 = the linear map)")
        if self.target_horizon < 1:
            problems.append(f"target_horizon={self.target_horizon}: must be at least 1 (1 = the next item)")
        if problems:
            raise ValueError("Invalid ModelConfig: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-serialisable dict (the Trainer's `custom_config["model"]`)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "ModelConfig":
        """The config of a `to_dict()` dict (JSON lists become tuples); unknown keys are a ValueError."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"Unknown model config keys {unknown}; known keys: {sorted(known)}")
        values = dict(values)
        if "hidden_dims" in values:
            values["hidden_dims"] = tuple(values["hidden_dims"])
        return cls(**values)
