"""The deploy stage's KFP component: a thin body over ``components.deploy.local``."""

from kfp import dsl
from kfp.dsl import Artifact, Input, Model, Output

from components.images import stage_image


@dsl.component(base_image=stage_image("deploy"), install_kfp_package=False)
def deploy(
    model: Input[Model],
    endpoint: Output[Artifact],
    model_name: str = "image-classifier",
    model_repository: str = "",
    target: str = "local",
    port: int = 8080,
):
    """Publishes an exported model to a model repository and verifies that it serves.

    The local target copies the SavedModel into ``<model_repository>/<model_name>/<version>/``
    (the TensorFlow Serving / KServe layout; the same content published again reuses its
    version), starts KServe's model server on a free loopback port, checks one real
    predict request (TensorFlow Serving's REST API), and stops the server. The endpoint
    artifact's metadata carries the model version, the predict URL and the command that
    serves it there.

    Args:
        model: The exported serving SavedModel (the export stage's output).
        model_name: The name the model is published and served under
            (``/v1/models/<model_name>:predict``).
        model_repository: Root of the model repository (local path or gs:// URI); empty
            puts it in the endpoint artifact, under ``model_repository/``.
        target: Where to deploy; only ``"local"`` for now.
        port: The port of the advertised URL and serve command.

    Returns:
        endpoint: A directory with ``endpoint.json``: model name, version, model
            directory, repository, predict URL, the verification probe's result and the
            serve command (also the artifact's metadata).
    """
    import json
    import os

    from components.deploy.local import deploy_local

    targets = ("local",)
    if target not in targets:
        raise ValueError(f"unsupported deploy target {target!r}; supported: {', '.join(targets)}")
    os.makedirs(endpoint.path, exist_ok=True)
    repository = model_repository or os.path.join(endpoint.path, "model_repository")
    info = deploy_local(model.path, model_name=model_name, model_repository=repository, port=port)
    endpoint.metadata.update(info)
    with open(os.path.join(endpoint.path, "endpoint.json"), "w") as f:
        json.dump(info, f, indent=2, sort_keys=True)
