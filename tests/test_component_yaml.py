"""Each stage's component as its own YAML (``make components``, pipelines.compile_components):
every file loads and works in a new pipeline, names its stage image of the configured registry
and tag and describes every input and output; the list misses no component; Cloud Build
compiles and publishes the files; the README's section "Use one stage in your pipeline" works
as shown. (Running one loaded YAML in its stage image: tests/test_stage_images.py.)"""

from __future__ import annotations

import importlib
import json
import os
import pkgutil
import re
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest
import yaml
from kfp import compiler, components, dsl
from kfp.dsl.python_component import PythonComponent
from kfp.dsl.types.artifact_types import _SCHEMA_TITLE_TO_TYPE

import components as stage_package
from pipelines import compile_components as compile_module
from pipelines.compile_components import COMPONENTS, LEFT_OUT, compile_components

ROOT = Path(__file__).resolve().parents[1]
REGISTRY = "europe-west4-docker.pkg.dev/test-project/stages"
TAG = "abc123"


def image_name(stage: str) -> str:
    """The image a stage's component runs on, as components.images names it."""
    return stage.replace("_", "-")


def spec_of(path: str) -> dict:
    return yaml.safe_load(Path(path).read_text())


def executor_images(spec: dict) -> list[str]:
    """The images of a compiled pipeline's container executors (importers have none)."""
    executors = spec["deploymentSpec"]["executors"].values()
    return [e["container"]["image"] for e in executors if "container" in e]


def run_code(code: str, namespace: dict) -> None:
    """Runs ``code`` as a user's script runs it: without this module's ``__future__``
    imports (string annotations would change what KFP reads from a pipeline's signature)."""
    exec(compile(code, "<snippet>", "exec", dont_inherit=True), namespace)


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> dict[str, str]:
    """Every component's YAML, compiled against a registry and tag that are not the
    defaults: name to path."""
    out = tmp_path_factory.mktemp("components")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("IMAGE_REGISTRY", REGISTRY)
        patch.setenv("IMAGE_TAG", TAG)
        paths = compile_components(str(out))
    assert paths == [str(out / f"{name}.yaml") for name in COMPONENTS]
    return dict(zip(COMPONENTS, paths, strict=True))


# --- the files ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", COMPONENTS)
def test_each_yaml_names_its_stage_image_of_the_configured_registry_and_tag(name, compiled):
    _, stage = COMPONENTS[name]
    assert executor_images(spec_of(compiled[name])) == [f"{REGISTRY}/{image_name(stage)}:{TAG}"]


@pytest.mark.parametrize("name", COMPONENTS)
def test_each_yaml_describes_the_component_and_every_input_and_output(name, compiled):
    spec = spec_of(compiled[name])
    (definition,) = spec["components"].values()
    fields = [
        (f"{side}.{kind}.{field}", value)
        for side in ("inputDefinitions", "outputDefinitions")
        for kind in ("parameters", "artifacts")
        for field, value in definition.get(side, {}).get(kind, {}).items()
    ]
    assert fields
    undescribed = [field for field, value in fields if not value.get("description", "").strip()]
    assert not undescribed, f"{name}: no description in its docstring for {undescribed}"
    assert components.load_component_from_file(compiled[name]).description.strip()


def required_arguments(component) -> dict:
    """A value of the right type for each input the component requires; artifacts are
    imported (the way a pipeline brings in an artifact another pipeline made)."""
    values = {"String": "x", "Integer": 1, "Float": 0.5, "Boolean": True, "List": [], "Dict": {}}
    arguments = {}
    for input_name, spec in component.component_spec.inputs.items():
        if spec.optional:
            continue
        if spec.type in values:
            arguments[input_name] = values[spec.type]
        else:
            artifact_class = _SCHEMA_TITLE_TO_TYPE[spec.type.split("@")[0]]
            arguments[input_name] = dsl.importer(
                artifact_uri=f"gs://bucket/{input_name}", artifact_class=artifact_class
            ).output
    return arguments


@pytest.mark.parametrize("name", COMPONENTS)
def test_each_yaml_loads_and_compiles_in_a_new_pipeline(name, compiled, tmp_path):
    loaded = components.load_component_from_file(compiled[name])

    @dsl.pipeline(name=f"uses-{image_name(name)}")
    def uses_it():
        loaded(**required_arguments(loaded))

    out = tmp_path / "pipeline.yaml"
    compiler.Compiler().compile(uses_it, str(out))
    spec = spec_of(str(out))
    assert image_name(name) in spec["root"]["dag"]["tasks"]
    _, stage = COMPONENTS[name]
    assert f"{REGISTRY}/{image_name(stage)}:{TAG}" in executor_images(spec)


def component_modules() -> list[str]:
    """Every module of the components package that defines KFP components."""
    return [
        m.name
        for m in pkgutil.walk_packages(stage_package.__path__, "components.")
        if m.name.rsplit(".", 1)[-1] in ("component", "components")
    ]


def test_the_list_holds_every_component_of_the_component_modules():
    """A component added to a component module is published or left out with a reason,
    never forgotten."""
    defined = {}
    for module_name in component_modules():
        module = importlib.import_module(module_name)
        for attribute, value in vars(module).items():
            if isinstance(value, PythonComponent) and value.python_func.__module__ == module_name:
                defined[attribute] = value
    assert len(component_modules()) >= 10
    assert set(defined) == set(COMPONENTS) | set(LEFT_OUT)
    assert not set(COMPONENTS) & set(LEFT_OUT)
    for name, (component, _) in COMPONENTS.items():
        assert component is defined[name]
    assert all(reason.strip() for reason in LEFT_OUT.values())


@pytest.mark.parametrize("name", COMPONENTS)
def test_each_listed_stage_is_the_image_its_module_gives(name):
    component, stage = COMPONENTS[name]
    image = component.component_spec.implementation.container.image
    assert image.rsplit("/", 1)[1].split(":")[0] == image_name(stage)


def test_the_cli_writes_them_for_the_given_registry_and_tag(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("IMAGE_REGISTRY", "localhost/elsewhere")
    monkeypatch.setenv("IMAGE_TAG", "dev")
    compile_module.main(
        ["--output-dir", str(tmp_path / "out"), "--registry", REGISTRY, "--tag", "t1"]
    )
    printed = capsys.readouterr().out.split()
    assert printed == [str(tmp_path / "out" / f"{name}.yaml") for name in COMPONENTS]
    images = {image for path in printed for image in executor_images(spec_of(path))}
    assert images == {f"{REGISTRY}/{image_name(stage)}:t1" for _, stage in COMPONENTS.values()}


def test_make_components_compiles_them_to_build_components():
    makefile = (ROOT / "Makefile").read_text()
    recipe = re.search(r"^components: setup ## .+\n\t(.+)$", makefile, re.M)
    assert recipe, "no `components` target with a help comment"
    assert recipe.group(1) == "$(PY) -m pipelines.compile_components --output-dir build/components"
    phony = " ".join(re.findall(r"^\.PHONY:(.*)$", makefile, re.M))
    assert "components" in phony.split()


# --- cloudbuild.yaml ---------------------------------------------------------------------

SUBSTITUTIONS = {
    "${_BUCKET}": "my-bucket",
    "$COMMIT_SHA": "0123abc",
    "${_REGISTRY}": REGISTRY,
    "${_REGION}": "us-central1",
    "${_KFP_REPOSITORY}": "my-kfp-repository",
    "$PROJECT_ID": "my-project",
}


def substituted(text: str) -> str:
    """``text`` as Cloud Build hands it to a step's script."""
    for name, value in SUBSTITUTIONS.items():
        text = text.replace(name, value)
    return text.replace("$$", "$")


@pytest.fixture(scope="module")
def cloudbuild() -> dict:
    return yaml.safe_load((ROOT / "cloudbuild.yaml").read_text())


def step(cloudbuild: dict, step_id: str) -> dict:
    (found,) = [s for s in cloudbuild["steps"] if s["id"] == step_id]
    return found


def step_env(found: dict) -> dict[str, str]:
    return dict(substituted(entry).split("=", 1) for entry in found.get("env", []))


@pytest.fixture
def build_dir(compiled, tmp_path) -> Path:
    """A workspace as the compile step leaves it: build/components/<name>.yaml."""
    target = tmp_path / "workspace" / "build" / "components"
    target.mkdir(parents=True)
    for path in compiled.values():
        shutil.copy(path, target)
    return tmp_path / "workspace"


def test_cloudbuild_compiles_the_components_with_the_pipelines(cloudbuild):
    compile_step = step(cloudbuild, "compile")
    script = compile_step["args"][-1]
    assert "-m pipelines.compile_components --output-dir build/components" in script
    assert {"IMAGE_REGISTRY=${_REGISTRY}", "IMAGE_TAG=$COMMIT_SHA"} <= set(compile_step["env"])


def test_cloudbuild_pushes_every_image_the_components_name(cloudbuild, compiled):
    pushed = {image.replace("$COMMIT_SHA", TAG) for image in cloudbuild["images"]}
    pushed = {image.replace("${_REGISTRY}", REGISTRY) for image in pushed}
    named = {image for path in compiled.values() for image in executor_images(spec_of(path))}
    assert named <= pushed


def assert_waits_like_publish_gcs(cloudbuild, found: dict) -> None:
    """Published, as the pipelines are, only once compiled and every image is pushed."""
    assert set(found["waitFor"]) == set(step(cloudbuild, "publish-gcs")["waitFor"])


def test_cloudbuild_copies_every_component_to_the_commits_components_folder(
    cloudbuild, build_dir, tmp_path
):
    found = step(cloudbuild, "publish-components-gcs")
    assert_waits_like_publish_gcs(cloudbuild, found)
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    calls = tmp_path / "calls"
    (fake_bin / "gcloud").write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {calls}\n')
    (fake_bin / "gcloud").chmod(0o755)
    env = {"PATH": f"{fake_bin}:{os.environ['PATH']}", **step_env(found)}
    subprocess.run(
        [found["entrypoint"], "-c", substituted(found["args"][-1])],
        cwd=build_dir,
        env=env,
        check=True,
    )
    arguments = calls.read_text().split()
    files = sorted(f"build/components/{name}.yaml" for name in COMPONENTS)
    assert arguments == ["storage", "cp", *files, "gs://my-bucket/pipelines/0123abc/components/"]


def test_cloudbuild_uploads_every_component_to_the_kfp_repository_when_set(
    cloudbuild, build_dir, monkeypatch
):
    found = step(cloudbuild, "publish-components-kfp-registry")
    assert_waits_like_publish_gcs(cloudbuild, found)
    script = substituted(found["args"][-1])
    skipped = subprocess.run(
        ["bash", "-c", script],
        env={"PATH": os.environ["PATH"], "KFP_REPOSITORY": ""},
        cwd=build_dir,
        capture_output=True,
        text=True,
    )
    assert skipped.returncode == 0 and "not uploading" in skipped.stdout

    uploads = []

    class FakeRegistry:
        def __init__(self, host):
            self.host = host

        def upload_pipeline(self, file_name, tags):
            uploads.append((self.host, file_name, tags))
            return spec_of(file_name)["pipelineInfo"]["name"], "sha256:0"

    import kfp.registry

    monkeypatch.setattr(kfp.registry, "RegistryClient", FakeRegistry)
    for key, value in step_env(found).items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(build_dir)
    code = re.search(r"-c '\n(.*?)'\n", script, re.S).group(1)
    run_code(code, {})
    host = "https://us-central1-kfp.pkg.dev/my-project/my-kfp-repository"
    assert uploads == [
        (host, f"build/components/{name}.yaml", ["0123abc", "latest"])
        for name in sorted(COMPONENTS)
    ]


# --- the README ----------------------------------------------------------------------------

SECTION = "## Use one stage in your pipeline"


def readme_section() -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index(SECTION + "\n")
    end = text.index("\n## ", start + len(SECTION))
    assert text[end:].startswith("\n## Quickstart: Kubeflow Pipelines on GKE")
    return text[start:end]


# Each code block of the section, by the marker comment before it, and its language.
BLOCKS = {
    "make": "bash",
    "pipeline": "python",
    "url": "python",
    "copy": "bash",
    "registry": "python",
    "pip": "bash",
    "package": "python",
}


def readme_block(name: str) -> str:
    """The code block after ``<!-- stage-yaml-<name>`` in the section."""
    found = re.findall(
        rf"<!-- stage-yaml-{name}:[^>]*-->\n```{BLOCKS[name]}\n(.*?)\n```", readme_section(), re.S
    )
    assert len(found) == 1, f"no single {BLOCKS[name]} block after <!-- stage-yaml-{name}"
    return found[0]


def test_readme_every_code_block_of_the_section_is_one_a_test_runs():
    blocks = re.findall(r"^(?:<!-- stage-yaml-(\w+):.*-->\n)?```\w+$", readme_section(), re.M)
    assert blocks == list(BLOCKS)


def test_readme_make_components_runs_the_makefiles_command(tmp_path):
    makefile = (ROOT / "Makefile").read_text()
    recipe = re.search(r"^components: .*\n\t(.+)$", makefile, re.M).group(1)
    block = readme_block("make")
    assert f"# {recipe.replace('$(PY)', 'python')}" in block
    command = block.split("#")[0].replace(
        "make components", recipe.replace("$(PY)", sys.executable)
    )
    env = {**os.environ, "GIT_DIR": str(ROOT / ".git")}
    subprocess.run(["bash", "-c", command], cwd=tmp_path, env=env, check=True, capture_output=True)
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
    written = sorted(p.name for p in (tmp_path / "build" / "components").iterdir())
    assert written == sorted(f"{name}.yaml" for name in COMPONENTS)
    spec = spec_of(str(tmp_path / "build" / "components" / "train.yaml"))
    assert executor_images(spec) == [f"us-central1-docker.pkg.dev/my-project/kfp/train:{head}"]


def test_readme_table_lists_every_published_component_on_its_image():
    rows = re.findall(r"^\| `([\w-]+)` \| (.+) \|$", readme_section(), re.M)
    listed = {image: set(re.findall(r"`(\w+)`", names)) for image, names in rows}
    expected: dict[str, set[str]] = {}
    for name, (_, stage) in COMPONENTS.items():
        expected.setdefault(image_name(stage), set()).add(name)
    assert listed == expected
    for name in LEFT_OUT:
        assert f"`{name}`" in readme_section()


def test_readme_pipeline_from_the_files_feeds_the_dataset_to_train(compiled, tmp_path, monkeypatch):
    target = tmp_path / "build" / "components"
    target.mkdir(parents=True)
    for path in compiled.values():
        shutil.copy(path, target)
    monkeypatch.chdir(tmp_path)
    run_code(readme_block("pipeline"), {})
    spec = spec_of("my-classifier.yaml")
    assert set(spec["root"]["inputDefinitions"]["parameters"]) == {"image_dir", "epochs"}
    tasks = spec["root"]["dag"]["tasks"]
    assert tasks["train"]["inputs"]["artifacts"]["dataset"]["taskOutputArtifact"] == {
        "producerTask": "create-tfrecords",
        "outputArtifactKey": "dataset",
    }
    assert sorted(executor_images(spec)) == [
        f"{REGISTRY}/create-tfrecords:{TAG}",
        f"{REGISTRY}/train:{TAG}",
    ]


def test_readme_url_is_where_cloud_build_publishes_and_kfp_reads_it_over_https(
    compiled, cloudbuild, monkeypatch
):
    requested = []

    class Response:
        def __init__(self, content: bytes):
            self.content = content

        def raise_for_status(self):
            pass

    def fake_get(url, auth=None):
        requested.append((url, auth))
        return Response(Path(compiled["train"]).read_bytes())

    from kfp.components import load_yaml_utilities

    monkeypatch.setattr(load_yaml_utilities.requests, "get", fake_get)
    namespace = {"components": components}
    run_code(readme_block("url"), namespace)
    published = step_env(step(cloudbuild, "publish-components-gcs"))["DESTINATION"]
    assert published == "gs://my-bucket/pipelines/0123abc/components/"
    assert requested == [
        ("https://storage.googleapis.com/my-bucket/pipelines/0123abc/components/train.yaml", None)
    ]
    assert namespace["train"].name == "train"


def test_readme_copy_from_a_private_bucket_is_where_cloud_build_publishes(cloudbuild):
    command = readme_block("copy").split()
    published = step_env(step(cloudbuild, "publish-components-gcs"))["DESTINATION"]
    assert command == ["gcloud", "storage", "cp", f'"{published}*.yaml"', "build/components/"]
    # ... the folder the README's pipeline loads from
    assert 'load_component_from_file("build/components/' in readme_block("pipeline")


def test_readme_registry_download_names_the_package_cloud_build_uploads(
    compiled, cloudbuild, tmp_path, monkeypatch
):
    downloads = []

    class FakeRegistry:
        def __init__(self, host):
            self.host = host

        def download_pipeline(self, package_name, version=None, tag=None, file_name=None):
            downloads.append((self.host, package_name, tag))
            shutil.copy(compiled[package_name.replace("-", "_")], file_name)
            return file_name

    import kfp.registry

    monkeypatch.setattr(kfp.registry, "RegistryClient", FakeRegistry)
    (tmp_path / "build" / "components").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    run_code(readme_block("registry"), {})
    ((host, package, tag),) = downloads
    upload = step(cloudbuild, "publish-components-kfp-registry")["args"][-1]
    uploads_to = "https://{REGION}-kfp.pkg.dev/{PROJECT_ID}/{KFP_REPOSITORY}"
    assert uploads_to in upload
    assert host == uploads_to.format(
        REGION="us-central1", PROJECT_ID="my-project", KFP_REPOSITORY="my-kfp-repository"
    )
    # The package is the name Artifact Registry gives the uploaded file: its pipeline name.
    assert package == spec_of(compiled["train"])["pipelineInfo"]["name"]
    assert f'"{tag}"' in upload
    assert components.load_component_from_file("build/components/train.yaml").name == "train"


# What this package's extras bring (pyproject.toml), none of which importing a component
# module may need but deploy's and batch_predict's GCPC (the `cloud` extra).
EXTRAS_MODULES = (
    "tensorflow",
    "keras",
    "tensorboard",
    "keras_tuner",
    "hypertune",
    "apache_beam",
    "kserve",
    "google.cloud.aiplatform",
    "google_cloud_pipeline_components",
    "kfp.kubernetes",
    "pycocotools",
    "keras_hub",
    "docker",
)
BLOCK_EXTRAS = f"""
import importlib.abc, sys
class BlockExtras(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if any(name == m or name.startswith(m + ".") for m in {EXTRAS_MODULES!r}):
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
sys.meta_path.insert(0, BlockExtras())
"""


@pytest.fixture(scope="module")
def installed_wheel(tmp_path_factory) -> tuple[Path, Path]:
    """The README's pip commands in a copy of the checkout: the wheel they build, and
    the folder it is installed into (the commands' own, but with the build environment
    this one's, as tests run offline, and into a folder, not this environment)."""
    root = tmp_path_factory.mktemp("wheel")
    checkout = root / "checkout"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for folder in ("components", "pipelines"):
        shutil.copytree(ROOT / folder, checkout / folder, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, checkout / name)
    lines = [line.split("#")[0].split() for line in readme_block("pip").splitlines()]
    build, install, install_cloud = lines
    assert build == ["pip", "wheel", "--no-deps", "-w", "dist", "."]
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet"]
    subprocess.run([*pip, *build[1:], "--no-build-isolation"], cwd=checkout, check=True)
    (wheel,) = [str(p.relative_to(checkout)) for p in (checkout / "dist").iterdir()]
    assert install == ["pip", "install", f'"{wheel}"']
    assert install_cloud == ["pip", "install", f'"{wheel}[cloud]"']
    site = root / "site"
    subprocess.run(
        [*pip, "install", "--no-deps", "--target", str(site), wheel], cwd=checkout, check=True
    )
    return checkout / wheel, site


def test_readme_wheel_is_this_package_needing_kfp_pillow_numpy_and_the_cloud_extra(
    installed_wheel,
):
    wheel, _ = installed_wheel
    with zipfile.ZipFile(wheel) as archive:
        (metadata,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        lines = archive.read(metadata).decode().splitlines()
    assert "Name: kfp-image-classification" in lines
    core = {
        re.split(r"[=<>;]", line.split(": ", 1)[1])[0].lower()
        for line in lines
        if line.startswith("Requires-Dist:") and "extra ==" not in line
    }
    assert core == {"kfp", "pillow", "numpy"}
    assert "Provides-Extra: cloud" in lines
    assert any(
        line.startswith("Requires-Dist: google-cloud-pipeline-components") and "cloud" in line
        for line in lines
    )


def run_in_installed_package(site: Path, cwd: Path, code: str) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter that finds the package in ``site`` first and none of
    the extras' modules."""
    return subprocess.run(
        [sys.executable, "-c", BLOCK_EXTRAS + code],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(site)},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_readme_component_modules_import_with_the_core_dependencies_but_deploys(
    installed_wheel, tmp_path
):
    """What the README says each stage's import needs, with the extras' modules absent."""
    _, site = installed_wheel
    modules = component_modules()
    result = run_in_installed_package(
        site,
        tmp_path,
        textwrap.dedent(
            f"""
            import importlib, json
            failed = {{}}
            for module in {modules!r}:
                try:
                    importlib.import_module(module)
                except ModuleNotFoundError as e:
                    failed[module] = e.name
            import components
            print(json.dumps({{"failed": failed, "from": components.__file__}}))
            """
        ),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["from"].startswith(str(site))
    assert report["failed"] == {
        "components.batch_predict.component": "google_cloud_pipeline_components",
        "components.deploy.component": "google_cloud_pipeline_components",
    }


def test_readme_pipeline_from_the_package_runs_each_task_on_the_image_it_sets(
    installed_wheel, tmp_path
):
    _, site = installed_wheel
    code = readme_block("package") + "\nimport components\nprint(components.__file__)\n"
    result = run_in_installed_package(site, tmp_path, code)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1].startswith(str(site))
    spec = spec_of(str(tmp_path / "my-classifier.yaml"))
    images = "us-central1-docker.pkg.dev/my-project/kfp"
    assert sorted(executor_images(spec)) == [
        f"{images}/create-tfrecords:0123abc",
        f"{images}/train:0123abc",
    ]
    tasks = spec["root"]["dag"]["tasks"]
    assert tasks["train"]["inputs"]["artifacts"]["dataset"]["taskOutputArtifact"] == {
        "producerTask": "create-tfrecords",
        "outputArtifactKey": "dataset",
    }


def test_readme_says_setting_the_registry_before_the_import_sets_every_image(
    installed_wheel, tmp_path, monkeypatch
):
    _, site = installed_wheel
    assert "setting `IMAGE_REGISTRY` and\n`IMAGE_TAG` before the import" in readme_section()
    monkeypatch.setenv("IMAGE_REGISTRY", "registry.example/team")
    monkeypatch.setenv("IMAGE_TAG", "v7")
    code = textwrap.dedent(
        """
        from components.create_tfrecords.component import create_tfrecords
        from components.train.component import train
        for component in (create_tfrecords, train):
            print(component.component_spec.implementation.container.image)
        """
    )
    result = run_in_installed_package(site, tmp_path, code)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == [
        "registry.example/team/create-tfrecords:v7",
        "registry.example/team/train:v7",
    ]
