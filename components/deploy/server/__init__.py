"""The local model server: KServe's Python model server serving the exported SavedModel.

One request format everywhere: TensorFlow Serving's REST predict API, the call Vertex AI's
TensorFlow container and KServe's TensorFlow predictor answer too, so one client works
against all of them. Row format (``instances``) and columnar format (``inputs``); an image
is ``{"b64": "<base64 JPEG/PNG/GIF/BMP>"}``, alone or under the input's name;
``signature_name`` is optional (only ``serving_default`` exists).

The server knows no task: the input's name and the outputs are those of the export's
``serving_default`` signature, read when it loads (``model.ImageModel``). A classifier's
export takes ``image_bytes`` and answers ``probabilities``, ``class_index``, ``label``,
``score``, as below; a detector's (``components.detection.export``) takes ``inputs``,
the Object Detection API's name, and answers ``detection_boxes``, ``detection_classes``,
``detection_scores``, ``num_detections``, ``detection_multiclass_scores`` and
``detection_labels`` (strings, as every string output, JSON strings in REST), so the
Object Detection API's request ``{"signature_name": "serving_default", "instances":
[{"inputs": {"b64": "..."}}]}`` works unchanged. A classifier's requests::

    POST /v1/models/<name>:predict
    {"instances": [{"b64": "..."}, ...]}
    {"instances": [{"image_bytes": {"b64": "..."}}, ...], "signature_name": "serving_default"}
    200 {"predictions": [{"probabilities": [...], "class_index": 2, "label": "triangle",
                          "score": 0.93}, ...]}

    {"inputs": {"image_bytes": [{"b64": "..."}, ...]}}      (or {"inputs": [{"b64": ...}]})
    200 {"outputs": {"probabilities": [[...], ...], "class_index": [...], "label": [...],
                     "score": [...]}}

    {"instances": [{"filenames": "gs://bucket/a.jpg"}, ...]}  (the book's deploy step; or
    "image_uri"; columnar {"inputs": {"filenames": [...]}}): read only under the prefixes
    given with --allow-uri-prefix (none by default: 403); see ``uris``.

The same body elsewhere:

* Vertex AI endpoint: ``POST https://<region>-aiplatform.googleapis.com/v1/projects/<p>/
  locations/<region>/endpoints/<id>:predict`` with the row-format body (Vertex AI takes
  ``instances`` only), or ``gcloud ai endpoints predict <id> --json-request=body.json``.
* KServe InferenceService: ``POST http://<isvc host>/v1/models/<name>:predict``, the path and
  body above (KServe's TensorFlow predictor and this server alike).
* KServe's v2 (Open Inference Protocol), also served here: ``POST /v2/models/<name>/infer``
  with ``{"inputs": [{"name": "image_bytes", "datatype": "BYTES", "shape": [N],
  "data": ["<base64>", ...]}]}`` (the v2 input's name is the signature's: ``inputs`` for
  a detector; ``GET /v2/models/<name>`` describes inputs and outputs); the answer has one
  v2 output per signature output (a classifier's ``probabilities`` FP32 [N, classes],
  ``class_index`` INT64 [N], ``label`` BYTES [N], ``score`` FP32 [N]). JSON whatever its
  content type (``tritonclient.http`` sends none), and the binary tensor extension both
  ways: raw image bytes in (``binary_data_size``, ``Inference-Header-Content-Length``),
  binary outputs when asked (``binary_data_output``, tritonclient's default). A version
  as Triton's clients name it (``model_version="1"``), answered by that version the same
  way, or 404 (``v2_rest``)::

    POST /v2/models/<name>/versions/<N>/infer
    GET  /v2/models/<name>/versions/<N>            {"name", "versions": ["N"], "inputs", ...}
    GET  /v2/models/<name>/versions/<N>/ready
* TF Serving's versions, labels, status and metadata (``tfserving_rest``)::

    POST /v1/models/<name>/versions/<N>:predict, /v1/models/<name>/labels/<label>:predict
    GET  /v1/models/<name>[/versions/<N>|/labels/<label>]     {"name", "ready",
         "model_version_status": [{"version": "1", "state": "AVAILABLE", "status": ...}]}
    GET  /v1/models/<name>[/versions/<N>|/labels/<label>]/metadata   {"model_spec": ...,
         "metadata": {"signature_def": {"signature_def": {"serving_default": ...}}}}

  Every version in the repository is served (``--model-version N``: only N), the latest
  to requests that name none; ``--version-label LABEL=N`` names versions (``stable``: the
  latest unless given). The repository is polled, as TF Serving does: versions published
  while the server runs are loaded in the background and served once loaded (the latest
  and ``stable`` move to the newest), removed ones are no longer served; a version that
  fails to load is logged and skipped (``repository_poll``).
* gRPC, on ``--grpc-port`` (default 8081; 0: none), the same host: KServe's v2
  ``inference.GRPCInferenceService`` (``tritonclient.grpc``: BYTES ``image_bytes`` of raw
  image bytes; a version in ``model_version``, or ``version`` for ModelReady and
  ModelMetadata) and TensorFlow Serving's ``tensorflow.serving.PredictionService``
  (``Predict`` with a DT_STRING ``image_bytes`` tensor, ``GetModelMetadata``; a version or
  label in ``model_spec``) and ``ModelService`` (``GetModelStatus``); see ``tfserving``. Status codes: INVALID_ARGUMENT (what REST answers with 400), NOT_FOUND,
  RESOURCE_EXHAUSTED (a message over ``--max-body-bytes``), UNAVAILABLE (over the in-flight
  bound, which REST and gRPC share, or not loaded yet).
* SageMaker's container contract: ``POST /invocations`` (the TF Serving body) and
  ``GET /ping``. Vertex AI's custom-container contract: ``AIP_HTTP_PORT``,
  ``AIP_PREDICT_ROUTE``, ``AIP_HEALTH_ROUTE`` and ``AIP_STORAGE_URI`` (the SavedModel, for
  ``--model-dir``) are read from the environment (see ``__main__``).

Errors are JSON, ``{"error": "<why>"}``:

* 400: malformed JSON, a body that is not an object, both or neither of ``instances`` and
  ``inputs``, an unknown key or input name, a value that is not ``{"b64": ...}`` or
  ``{"filenames": ...}``, a file that is missing, bad base64, bytes that are not an image the model decodes, an
  unsupported format, too many instances or too large an image, an unknown
  ``signature_name``.
* 403: a file outside the allowed prefixes (or none allowed).
* 404: unknown model, version, label or route. 413: a body over ``--max-body-bytes``,
  refused from its Content-Length before it is read, or while a chunked body is read.
* 503 with ``Retry-After: 1``: more than ``--max-inflight`` predict requests at once
  (refused at once, nothing queues beyond the bound), or the model is not loaded yet.

Health routes, for Kubernetes probes; none counts against the in-flight bound::

    liveness   GET /v2/health/live   200 {"live": true}   (or GET /: {"status": "alive"})
               as soon as the server listens: while the model loads, while predictions
               run, while draining
    readiness  GET /v2/health/ready  200 {"ready": true}; 503 while the model loads and
               from SIGTERM on. Per model, the same: GET /v1/models/<name> (KServe v1,
               {"name": ..., "ready": true}, with TF Serving's model_version_status)
               and GET /v2/models/<name>/ready
    metrics    GET /metrics          Prometheus, with image_classifier_model_call_images
               (images per signature call) and image_classifier_rejected_requests_total

    livenessProbe:  {httpGet: {path: /v2/health/live, port: 8080}, periodSeconds: 10}
    readinessProbe: {httpGet: {path: /v2/health/ready, port: 8080}, periodSeconds: 2}
    # terminationGracePeriodSeconds >= --shutdown-delay-s + --grace-period-s + a few;
    # in a pod the server listens on --host 0.0.0.0

Shutdown: on SIGTERM (or SIGINT) readiness turns false; with ``--shutdown-delay-s`` the
server keeps serving that long (time for Kubernetes to take it out of the Service's
endpoints; a second signal ends the delay), then stops accepting connections, lets the
requests in flight finish within ``--grace-period-s`` and exits 0.

Server-side batching (``--batch-max-size`` > 0): the images of concurrent requests run
together in one signature call, at most ``--batch-max-size`` images (a larger request runs
alone, never split), one call at a time; requests that arrive while a call runs form the
next one, so batches grow with load, and ``--batch-timeout-ms`` is how long the first
request of a batch waits for company. Each caller gets its own rows; an image that fails
to decode fails only its own request. 0 turns batching off: each request is its own call,
several at once in threads. On by default, with no wait: on two CPU cores bench/serve.py
measured the same latency as without batching for one client and 1.7 times the
throughput for 32 (docs/benchmarks.md); a wait only added its own length to latency.

What this package adds to KServe: the request formats above and the checks of each image
before the model sees it (a header check, size limits, TensorFlow's decode error as 400,
not 500); the body-size and in-flight bounds (an ASGI middleware); JSON bodies for
FastAPI's own errors; readiness that covers model loading (the model loads in the
background once the server listens) and shutdown (a ``DataPlane`` subclass and a uvicorn
``Server`` subclass); batching; the binary tensor extension for image bytes; TF Serving's
gRPC API; files under an allow-list; and a loopback bind address: kserve 0.21's REST
server hard-codes ``0.0.0.0``, so ``LoopbackModelServer`` sets uvicorn's host (its gRPC
server, which runs in another process with its own bounds, is replaced by ``grpc_server``,
in the REST server's event loop).

Its modules:

``limits``       ``ServerLimits``, the server's limits in one object, and their options;
                 ``InflightBound``, the in-flight count REST and gRPC share
``protocol``     requests and answers: parsing, image checks, the answer in each format
``uris``         ``UriReader``: the files requests name, under the allowed prefixes only
``batching``     ``Batcher``, concurrent requests in one signature call
``model``        ``ImageModel``, the ``kserve.Model`` that runs the signature of each
                 served version (``ServedVersion``: its input name and outputs read
                 from the loaded signature)
``tfserving``    TF Serving's gRPC ``PredictionService`` and ``ModelService`` on the
                 model, and the status and metadata protos its REST API answers too
``tfserving_rest``  TF Serving's REST routes for versions, labels, status and metadata
``v2_rest``      KServe v2's REST model routes (metadata, readiness, infer), with versions
``repository_poll``  the model repository's poll: versions published and removed while
                 the server runs
``grpc_server``  the gRPC server: both services, the in-flight bound, message limits
``http``         the REST server: the limits middleware, JSON errors, readiness, draining,
                 SageMaker's and Vertex AI's routes, and ``serve``, which runs it all
``__main__``  the command line

Importing this package loads none of TensorFlow, KServe or uvicorn (only ``limits``);
``components.deploy.server.http.serve`` does.

Usage::

    python -m components.deploy.server --model-repository DIR --model-name NAME \\
        [--model-version N] [--version-label canary=2] [--http-port 8080] \\
        [--grpc-port 8081] [--host 127.0.0.1] \\
        [--allow-uri-prefix gs://bucket/images/] [--max-inflight 32] \\
        [--max-body-bytes 16777216] [--batch-max-size 32] [--batch-timeout-ms 0] \\
        [--file-system-poll-wait-seconds 30] ...
    python -m components.deploy.server --model-dir DIR_OR_GS_URI ...   (one SavedModel)

It serves every version in the repository, the latest by default (or only
``--model-version``), and looks for versions published or removed every
``--file-system-poll-wait-seconds`` (30 by default, where TF Serving's is 1: versions
come at the pace of pipeline runs, and each look at a gs:// repository is a listing and
a stat per version; 0: versions are read at start-up only).
"""

from components.deploy.server.limits import ServerLimits

__all__ = ["ServerLimits"]
