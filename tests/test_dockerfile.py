"""The pipeline image: Dockerfile base, environment and locked install, and what .dockerignore keeps
(tooling in tests/docker_files.py)."""
import re
import shutil
import subprocess

import pytest

from docker_files import ROOT, dockerfile_env, dockerfile_instructions, dockerignore_patterns, is_ignored
from pipeline import kubeflow_runner


def test_dockerfile_base_env_and_locked_install():
    instrs = dockerfile_instructions()
    assert instrs[0] == ("FROM", "tensorflow/tfx:1.16.0 AS base")
    # `docker build .` builds the last stage: the CPU image, the base with nothing added.
    assert [r for i, r in instrs if i == "FROM"] == ["tensorflow/tfx:1.16.0 AS base", "base AS gpu", "base AS cpu"]
    assert instrs[-1] == ("FROM", "base AS cpu")
    env = dockerfile_env()
    assert env["TF_USE_LEGACY_KERAS"] == "1"
    assert env["PYTHONPATH"] == "/pipeline"
    runs = [r for i, r in instrs if i == "RUN"]
    copies = [r for i, r in instrs if i == "COPY"]
    # The lock is copied, exported frozen and installed without re-resolving.
    lock_copy = next(k for k, (i, r) in enumerate(instrs) if i == "COPY" and "uv.lock" in r.split())
    assert {"pyproject.toml", "uv.lock", ".python-version"} <= set(instrs[lock_copy][1].split())
    install = next(k for k, (i, r) in enumerate(instrs) if i == "RUN" and "uv export" in r)
    assert install > lock_copy
    cmd = instrs[install][1]
    assert "--frozen" in cmd and "--no-hashes" in cmd and "uv pip install" in cmd and "--no-deps" in cmd
    # uv itself is pinned, to the Makefile's version.
    pin = re.search(r"uv==\$\{UV_VERSION\}|uv==([\d.]+)", " ".join(runs))
    assert pin, "uv must be installed pinned"
    arg_version = next((r.split("=", 1)[1] for i, r in instrs if i == "ARG" and r.startswith("UV_VERSION=")), None)
    makefile = ROOT / "Makefile"
    if makefile.exists() and arg_version:
        m = re.search(r"^UV_VERSION\s*:?=\s*(\S+)", makefile.read_text(), re.M)
        if m:
            assert arg_version == m.group(1)
    assert any(r.split()[:2] == [".", "/pipeline"] for r in copies), "the project is copied to /pipeline"


def test_dockerfile_builds_encoder_where_runner_points():
    runs = [r for i, r in dockerfile_instructions() if i == "RUN"]
    assert any("python -m encoder.export --out /pipeline/models/minilm" in r for r in runs)
    workdir = [r for i, r in dockerfile_instructions() if i == "WORKDIR"][-1]
    assert workdir == kubeflow_runner.CONTAINER_PROJECT_DIR == dockerfile_env()["PYTHONPATH"]
    assert f"{kubeflow_runner.CONTAINER_PROJECT_DIR}/{kubeflow_runner.ENCODER_DIR}" == "/pipeline/models/minilm"


def test_dockerignore_keeps_code_and_drops_generated_files():
    patterns = dockerignore_patterns()
    for rel in (".venv", "outputs", "models", ".git", "data/sample", "pipeline/__pycache__/x.pyc"):
        assert is_ignored(rel, patterns), rel
    for rel in ("pyproject.toml", "uv.lock", ".python-version", "pipeline/pipeline.py", "trainer/run_fn.py",
                "encoder/export.py", "data/prepare.py", "schema/items/schema.pbtxt", "serving/__init__.py"):
        assert not is_ignored(rel, patterns), rel
    # `docker build -f serving/Dockerfile .` uses the same context and .dockerignore.
    serving = ROOT / "serving" / "Dockerfile"
    if serving.exists() and not (ROOT / "serving" / "Dockerfile.dockerignore").exists():
        text = re.sub(r"\\\n", " ", serving.read_text())
        for line in text.splitlines():
            parts = line.split()
            if parts and parts[0].upper() == "COPY" and not any(p.startswith("--from") for p in parts):
                for src in (p for p in parts[1:-1] if not p.startswith("--")):
                    assert not is_ignored(src.strip("./"), patterns), f"serving/Dockerfile copies ignored {src}"


def test_locked_export_installs_without_torch():
    """What the Dockerfile installs: `uv export --frozen` of the lock, with torch only under a never-true marker."""
    uv = shutil.which("uv", path=str(ROOT / ".tools" / "uv" / "bin")) or shutil.which("uv")
    if uv is None:
        pytest.skip("uv not installed")
    res = subprocess.run([uv, "export", "--frozen", "--no-hashes", "--no-emit-project", "--no-dev"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    if res.returncode != 0 and "pyenv" in res.stderr:
        pytest.skip(f"uv shim not usable here: {res.stderr.strip()[:200]}")
    assert res.returncode == 0, res.stderr
    reqs = [ln for ln in res.stdout.splitlines() if ln and not ln.startswith((" ", "#"))]
    pins = {ln.split("==")[0].lower(): ln for ln in reqs}
    assert pins["tfx"].startswith("tfx==1.16.0")
    assert pins["tensorflow"].startswith("tensorflow==2.16.2")
    for heavy in ("torch", "sentence-transformers"):
        if heavy in pins:
            assert "sys_platform == 'never'" in pins[heavy], pins[heavy]
    assert "tower-recs" not in pins


def _uv():
    uv = shutil.which("uv", path=str(ROOT / ".tools" / "uv" / "bin")) or shutil.which("uv")
    if uv is None:
        pytest.skip("uv not installed")
    return uv


def test_gpu_target_installs_the_locked_cuda_group():
    """`docker build --target gpu`: the base image plus exactly the lock's `gpu` group (CUDA/cuDNN wheels)."""
    instrs = dockerfile_instructions()
    start = instrs.index(("FROM", "base AS gpu"))
    end = instrs.index(("FROM", "base AS cpu"))
    runs = [r for i, r in instrs[start:end] if i == "RUN"]
    install = next(r for r in runs if "uv export" in r)
    assert "--frozen" in install and "--only-group gpu" in install and "--no-deps" in install
    assert "is_built_with_cuda()" in " ".join(runs), "the build fails if TensorFlow has no CUDA"
    # The documented command names the target.
    assert "docker build --target gpu" in (ROOT / "Dockerfile").read_text()


def _export(*flags: str) -> dict[str, str]:
    res = subprocess.run([_uv(), "export", "--frozen", "--no-hashes", "--no-emit-project", *flags], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    if res.returncode != 0 and "pyenv" in res.stderr:
        pytest.skip(f"uv shim not usable here: {res.stderr.strip()[:200]}")
    assert res.returncode == 0, res.stderr
    reqs = [ln for ln in res.stdout.splitlines() if ln and not ln.startswith((" ", "#"))]
    return {ln.split("==")[0].split(";")[0].strip().lower(): ln for ln in reqs}


def test_gpu_group_is_locked_and_stays_out_of_the_default_install():
    gpu = _export("--only-group", "gpu")
    assert gpu["tensorflow"].startswith("tensorflow==2.16.2")
    for lib in ("nvidia-cudnn-cu12", "nvidia-cublas-cu12", "nvidia-cuda-runtime-cu12", "nvidia-nccl-cu12"):
        assert lib in gpu, f"{lib} missing from the gpu group"
    # `make setup` (uv sync --all-extras: extras + default groups) and the CPU image (--no-dev) get no CUDA.
    for flags in (("--all-extras",), ("--no-dev",)):
        assert not [name for name in _export(*flags) if name.startswith("nvidia-")], flags
