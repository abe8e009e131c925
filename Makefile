# Image-classification components for Kubeflow Pipelines. `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
UV := $(VENV)/bin/uv
WORK ?= work
SAMPLE := $(WORK)/sample
DEMO := $(WORK)/demo
PER_CLASS ?= 100
DETECTION := $(WORK)/detection
DETECTION_IMAGES ?= 400
MODEL_NAME ?= image-classifier
PORT ?= 8080
GRPC_PORT ?= 8081
SERVE_ARGS ?=
TARGET ?= kfp
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help setup sample-data images demo demo-detection demo-stream serve query test lint compile components lock clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

$(VENV)/.installed: requirements.lock requirements-no-deps.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check uv==0.13.9
	$(UV) pip install -q --python $(PY) --compile-bytecode -r requirements.lock
	$(UV) pip install -q --python $(PY) --compile-bytecode --no-deps -r requirements-no-deps.txt
	$(UV) pip install -q --python $(PY) --no-deps -e .
	touch $@

setup: $(VENV)/.installed ## Create .venv with the pinned dependencies and the project installed

sample-data: setup ## Generate the sample image set (PER_CLASS images per class) under $(SAMPLE)
	$(PY) -m pipelines.sample_data --out $(SAMPLE) --per-class $(PER_CLASS)

# Extra `docker build` arguments; the default reaches PyPI on engines without a bridge network.
DOCKER_BUILD_ARGS ?= --network host

images: setup ## Build every stage image and the Dataflow worker images (IMAGE_REGISTRY, IMAGE_TAG name them)
	$(PY) -m pipelines.build_images --docker-args "$(DOCKER_BUILD_ARGS)" --report build/images.json

# How `make demo` runs the stages: subprocess (this environment) or docker (the stage images).
RUNNER ?= subprocess

demo: sample-data $(if $(filter docker,$(RUNNER)),images) ## Run the whole pipeline locally (kfp local; RUNNER=docker: in the stage images) on the sample set
	$(PY) -m pipelines.run_local --runner $(RUNNER) --image-dir $(SAMPLE)/images --work-dir $(DEMO)

demo-detection: setup ## Run the object-detection pipeline locally (kfp local) on $(DETECTION_IMAGES) generated box-annotated pictures (VOC), 20 epochs
	$(PY) -m pipelines.sample_detection_data --out $(DETECTION)/sample --images $(DETECTION_IMAGES)
	$(PY) -m pipelines.run_local --task detection --voc-dir $(DETECTION)/sample/voc \
		--work-dir $(DETECTION)/run --epochs 20

demo-stream: setup ## After `make demo`: stream the test split through Pub/Sub (emulator) and Beam, print latency (SIGINT at 300 s: the demo still stops what it started)
	timeout -s INT -k 30 300 $(PY) -m pipelines.stream_demo --work-dir $(DEMO) --model-name $(MODEL_NAME)

serve: setup ## Serve the model the demo deployed: REST on 127.0.0.1:$(PORT), gRPC on $(GRPC_PORT) (SERVE_ARGS: more options)
	$(PY) -m components.deploy.server --model-repository $(DEMO)/model_repository \
		--model-name $(MODEL_NAME) --http-port $(PORT) --grpc-port $(GRPC_PORT) $(SERVE_ARGS)

query: ## Ask the running server (make serve) to classify one sample image
	@printf '{"instances": [{"b64": "%s"}]}' "$$(base64 -w0 $(SAMPLE)/images/circle/circle_0000.jpg)" \
		| curl -sS -X POST -H 'Content-Type: application/json' --data-binary @- \
		http://127.0.0.1:$(PORT)/v1/models/$(MODEL_NAME):predict; echo

test: setup ## Run the tests; with a Docker engine, build the stage images first and test them too
	@if docker info >/dev/null 2>&1; then $(MAKE) --no-print-directory images; \
	else echo "make test: no Docker engine answers, so the stage-image tests are skipped"; fi
	$(PY) -m pytest $(PYTEST_ARGS)

lint: setup ## ruff on the Python code, hadolint on the stage Dockerfiles
	$(VENV)/bin/ruff check components pipelines tests bench
	$(VENV)/bin/ruff format --check components pipelines tests bench
	$(VENV)/bin/hadolint --config .hadolint.yaml containers/*/Dockerfile

# Which task's pipeline compile, submit and submit-vertex take: classification or detection.
PIPELINE ?= classification
PIPELINE_YAML = build/$(if $(filter detection,$(PIPELINE)),detection-)pipeline-$(TARGET).yaml

compile: setup ## Compile a pipeline to build/: TARGET=kfp|vertex, PIPELINE=classification|detection
	$(PY) -m pipelines.compile --pipeline $(PIPELINE) --target $(TARGET) --output $(PIPELINE_YAML)

components: setup ## Compile each stage's component to build/components/<name>.yaml (on the IMAGE_REGISTRY, IMAGE_TAG images)
	$(PY) -m pipelines.compile_components --output-dir build/components

# Cloud runs (pipelines/submit.py): the target is compiled into build/ first, against the
# images IMAGE_REGISTRY and IMAGE_TAG name. PARAMS: a YAML or JSON file of pipeline
# parameters (see pipelines/params.example.yaml).
EXPERIMENT ?= $(if $(filter detection,$(PIPELINE)),object-detection,image-classification)
.PHONY: submit submit-vertex

submit: setup ## Run the pipeline on Kubeflow Pipelines: KFPHOST=url [PIPELINE=detection] [PARAMS=file] [EXPERIMENT=name] [CACHE=on|off] [SCHEDULE="0 3 * * *" [SCHEDULE_NAME=] [MAX_CONCURRENT_RUNS=]]: a recurring run
	$(PY) -m pipelines.submit kfp --pipeline $(PIPELINE) --host "$(KFPHOST)" --experiment "$(EXPERIMENT)" \
		$(if $(PARAMS),--params "$(PARAMS)") $(if $(CACHE),--cache "$(CACHE)") \
		$(if $(SCHEDULE),--schedule "$(SCHEDULE)") $(if $(SCHEDULE_NAME),--schedule-name "$(SCHEDULE_NAME)") \
		$(if $(MAX_CONCURRENT_RUNS),--max-concurrent-runs "$(MAX_CONCURRENT_RUNS)")

submit-vertex: setup ## Run it on Vertex AI: PROJECT= REGION= BUCKET= [PIPELINE=detection] [PARAMS=file] [SERVICE_ACCOUNT=email] [ENCRYPTION_KEY=kms key] [NETWORK=projects/num/global/networks/name] [FAILURE_POLICY=slow|fast] [LABELS=k=v,...] [CACHE=on|off] [SCHEDULE="0 3 * * *" [SCHEDULE_NAME=] [MAX_CONCURRENT_RUNS=]]: a schedule
	$(PY) -m pipelines.submit vertex --pipeline $(PIPELINE) --project "$(PROJECT)" --region "$(REGION)" --bucket "$(BUCKET)" \
		$(if $(PARAMS),--params "$(PARAMS)") $(if $(SERVICE_ACCOUNT),--service-account "$(SERVICE_ACCOUNT)") \
		$(if $(ENCRYPTION_KEY),--encryption-key "$(ENCRYPTION_KEY)") $(if $(NETWORK),--network "$(NETWORK)") \
		$(if $(FAILURE_POLICY),--failure-policy "$(FAILURE_POLICY)") $(if $(LABELS),--labels "$(LABELS)") \
		$(if $(CACHE),--cache "$(CACHE)") $(if $(SCHEDULE),--schedule "$(SCHEDULE)") \
		$(if $(SCHEDULE_NAME),--schedule-name "$(SCHEDULE_NAME)") \
		$(if $(MAX_CONCURRENT_RUNS),--max-concurrent-runs "$(MAX_CONCURRENT_RUNS)")

lock: ## Re-resolve requirements.lock from pyproject.toml
	$(UV) pip compile pyproject.toml --extra all --extra dev --python-version 3.11 \
		--python-platform x86_64-manylinux_2_28 -o requirements.lock

clean: ## Remove generated data, runs and build outputs (keeps .venv)
	rm -rf $(WORK) build .pytest_cache
