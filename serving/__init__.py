"""TF Serving artefacts (Dockerfile, configs), a TF Serving stand-in server and its clients."""
import os

# TFRS 0.7.7 and TF Hub need Keras 2; this must happen before TensorFlow is imported.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
