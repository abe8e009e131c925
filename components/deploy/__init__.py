"""The deploy stage: publish an exported model to a model repository and serve it.

``model_repository``  versioned repository layout (TF Serving / KServe), idempotent publish
``server``            the local model server (KServe's Python model server, TF Serving REST API)
``local``             ``deploy_local``: publish, start the server, verify it with one request
``component``         the KFP component
"""

LOOPBACK = "127.0.0.1"
DEFAULT_HTTP_PORT = 8080
# Seconds the server gives open requests to finish after SIGTERM.
GRACE_PERIOD_S = 10
