"""Two-tower retrieval trainer: preprocessing, model, loss, training loop, run_fn, serving export."""
import os

# TFRS 0.7.7 and TF Hub need Keras 2; this must happen before TensorFlow is imported.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
