"""Data contract: sample data generator, MovieLens importer, splits, and the row rules every importer
and the pipeline's AnomalyGate apply (`data/rules.py`)."""
import os

# TFRS 0.7.7 and TF Hub need Keras 2; this must happen before TensorFlow is imported.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
