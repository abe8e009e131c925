"""The deploy stage: publish an exported model and serve it, locally, on Vertex AI or KServe.

``model_repository``  versioned repository layout (TF Serving / KServe), idempotent publish
``server``            the local model server (KServe's Python model server, TF Serving REST API)
``local``             ``deploy_local``: publish, start the server, verify it with one request
``vertex``            ``deploy_to_vertex``: a Vertex AI Model version on an endpoint
``kserve``            ``deploy_kserve``: a KServe InferenceService on a cluster
``component``         the KFP components: ``deploy`` (local), ``deploy_vertex``, ``deploy_kserve``
"""

LOOPBACK = "127.0.0.1"
DEFAULT_HTTP_PORT = 8080
# KServe's model server's default gRPC port (TF Serving's is 8500).
DEFAULT_GRPC_PORT = 8081
DEFAULT_MODEL_NAME = "image-classifier"
