"""Names and shapes of the data contract and of the model's inputs and outputs.

Every module that reads interactions, items or the served model's signatures takes
its names from here, so the contract is written down once.

Interactions (one row per user-item event), CSV columns:
  user_id    string  required
  item_id    string  required
  timestamp  int64   required, Unix seconds
  rating     float   optional
  history    string  optional, space-separated ids of the user's previous items
                     (most recent last, at most HISTORY_LENGTH), written by `data.prepare`

Items (the catalogue; may hold items nobody has interacted with yet), CSV columns:
  item_id      string  required
  title        string  required
  categories   string  optional, '|'-separated
  description  string  optional
"""

USER_ID = "user_id"
ITEM_ID = "item_id"
TIMESTAMP = "timestamp"
RATING = "rating"
HISTORY = "history"

TITLE = "title"
CATEGORIES = "categories"
DESCRIPTION = "description"

INTERACTION_COLUMNS = (USER_ID, ITEM_ID, TIMESTAMP, RATING, HISTORY)
ITEM_COLUMNS = (ITEM_ID, TITLE, CATEGORIES, DESCRIPTION)
REQUIRED_INTERACTION_COLUMNS = (USER_ID, ITEM_ID, TIMESTAMP)
REQUIRED_ITEM_COLUMNS = (ITEM_ID, TITLE)

# A data directory (written by `data.prepare`): <dir>/interactions/{train,eval}/*.csv, <dir>/items/*.csv.
INTERACTIONS_DIR = "interactions"
ITEMS_DIR = "items"
# ExampleGen splits: the interactions keep data.prepare's chronological train/eval folders as splits;
# the catalogue is one split.
TRAIN_SPLIT = "train"
EVAL_SPLIT = "eval"
ITEMS_SPLIT = "items"
# Time-ordered spans (optional): <dir>/interactions/span-<N>/{train,eval}/*.csv, N = 1, 2, ... (newest
# highest). ExampleGen matches SPAN_DIR with TFX's {SPAN} spec; the catalogue stays one folder.
SPAN_DIR = "span-{SPAN}"
SPAN_PREFIX = "span-"

# Most recent items a query may carry; older ones are dropped.
HISTORY_LENGTH = 20

# Names of transformed features (outputs of `trainer.preprocessing.preprocessing_fn`).
USER_INDEX = "user_index"
ITEM_INDEX = "item_index"
HISTORY_INDEX = "history_index"

# Vocabulary files written by tf.Transform.
USER_VOCAB = "user_id"
ITEM_VOCAB = "item_id"

# Served signatures and their named inputs/outputs (see trainer/serving_model.py).
SERVING_DEFAULT = "serving_default"
SERVE_TF_EXAMPLES = "serve_tf_examples"
QUERY_EMBEDDING = "query_embedding"
CANDIDATE_EMBEDDING = "candidate_embedding"

INPUT_K = "k"
INPUT_EXCLUDE = "exclude"
INPUT_EXAMPLES = "examples"        # serve_tf_examples: serialized tf.Examples
OUTPUT_ITEM_IDS = "item_ids"
OUTPUT_SCORES = "scores"
OUTPUT_EMBEDDING = "embedding"
# Pad value for fixed-width string inputs (history, exclude): ignored by the model.
PAD = ""
