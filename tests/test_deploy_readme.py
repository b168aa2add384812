"""deploy/README.md: its commands parse with the code they call and the files they name exist."""
import re
import shlex

import yaml

from k8s_manifests import BASE, ROOT
from pipeline import kubeflow_runner

IMAGE = "registry.example.com/tower-recs-pipeline:test"
BUCKET = "gs://test-bucket"


def _readme_commands() -> list[str]:
    text = (ROOT / "deploy" / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, re.S)
    commands = []
    for block in blocks:
        for cmd in re.sub(r"\\\n\s*", " ", block).splitlines():
            cmd = cmd.split("  #")[0].strip()
            if cmd and not cmd.startswith("#"):
                commands.append(cmd)
    return commands


def test_readme_runner_commands_parse():
    cmds = [c for c in _readme_commands() if "-m pipeline.kubeflow_runner" in c and "--help" not in c]
    assert len(cmds) >= 3
    env = {"$PIPELINE_IMAGE": IMAGE, "$BUCKET": BUCKET, "$PROJECT": "p", "$REGION": "r"}
    for cmd in cmds:
        for k, v in env.items():
            cmd = cmd.replace(k, v)
        argv = shlex.split(cmd.split("-m pipeline.kubeflow_runner", 1)[1])
        args, s = kubeflow_runner.parse_args(argv)  # unknown flags exit
        kubeflow_runner.resolve(s)
        assert args.output == "outputs/kubeflow/tower-recs.json"
    makefile = ROOT / "Makefile"
    if makefile.exists():
        line = next((ln for ln in makefile.read_text().splitlines() if "-m pipeline.kubeflow_runner" in ln), None)
        if line:
            argv = shlex.split(line.split("-m pipeline.kubeflow_runner", 1)[1].replace("$(PIPELINE_NAME)", "tower-recs"))
            assert kubeflow_runner.parse_args(argv)[0].output == "outputs/kubeflow/tower-recs.json"


def test_readme_paths_exist():
    cmds = _readme_commands()
    for cmd in cmds:
        for m in re.finditer(r"kubectl apply -k (\S+)", cmd):
            assert (ROOT / m.group(1) / "kustomization.yaml").exists(), cmd
        for m in re.finditer(r"kubectl (?:apply|delete) -f (\S+)", cmd):
            assert (ROOT / m.group(1)).exists(), cmd
        for m in re.finditer(r"docker build -f (\S+)", cmd):
            assert (ROOT / m.group(1)).exists(), cmd
    text = (ROOT / "deploy" / "README.md").read_text()
    pod = yaml.safe_load((BASE / "model-loader-pod.yaml").read_text())
    assert f"pod/{pod['metadata']['name']}" in text and f"-n {pod['metadata']['namespace']}" in text
    assert "deployment/tower-recs-serving tensorflow-serving=" in text
    assert "create_run_from_pipeline_package" in text and "template_path=" in text
