"""TFX pipeline definition, configuration and runners."""
import os

# TFRS 0.7.7 and TF Hub need Keras 2; this must happen before TensorFlow is imported.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
# Every component of a local run shares this one process. TensorFlow's oneDNN build otherwise
# allocates CPU tensors from its own pool (a BFC allocator that grows in doubling regions and never
# frees), so each component's TF peak stayed resident for the rest of the run.
# With the system allocator freed tensors go back to malloc, for the next component to reuse;
# oneDNN's kernels stay on (training 0.98x, encoding 1.00x: benchmarks/results/allocator/).
os.environ.setdefault("TF_ONEDNN_USE_SYSTEM_ALLOCATOR", "1")
