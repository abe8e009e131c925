#!/bin/sh
# The steps every stage image shares, in one place: each containers/<stage>/Dockerfile copies
# this script with requirements.lock and pyproject.toml to /tmp/src and runs
#
#   install.sh dependencies EXTRAS [CONSTRAINTS]
#       The stage's third-party packages: the project package with the pyproject.toml extras
#       EXTRAS (comma-separated, "" for none) while its code folders and README are still
#       empty, so that this layer, the largest, is rebuilt only when the lock, pyproject.toml
#       or CONSTRAINTS change (and is shared by images with the same extras). Every
#       version comes from requirements.lock (and CONSTRAINTS, a file beside it, for what the
#       lock does not hold). The NVIDIA libraries that wheels install are registered with the
#       dynamic linker: TensorFlow's RUNPATH misses some of them (curand, nvJitLink, NVRTC).
#   install.sh no-deps NAME...
#       The named packages of requirements-no-deps.txt (copied beside it) at its versions,
#       without their dependencies: the deploy image's tensorflow-serving-api, the export
#       image's TF.js converter (tensorflowjs and what it imports), the train and export
#       images' keras-hub, whose `tensorflow` requirement tensorflow-cpu meets under another
#       name (see that file). `pip check` accepts those complaints, and those about what is
#       never imported here (tensorflowjs' flax, TF-DF, importlib-resources and packaging pin;
#       JAX's SciPy; keras-hub's tensorflow-text, for its text tokenizers only).
#   install.sh package
#       The project's own code and README, copied in by then (its dependencies are in
#       place), `pip check`, and the runtime user app (UID 1000). Its home and the folders
#       where the KFP launcher puts artifacts (/gcs, /minio, /s3) can be written by any UID,
#       as /tmp can, so the image also runs as the UID a runtime assigns (docker run --user,
#       Kubernetes runAsUser, OpenShift's random UIDs). /tmp/src is removed.
set -eu
src=/tmp/src

case "${1:-}" in
dependencies)
    extras=${2?"install.sh dependencies EXTRAS [CONSTRAINTS]"}
    constraints=${3:+$src/$3}
    mkdir -p "$src/components" "$src/pipelines"
    touch "$src/README.md"
    pip install --no-cache-dir -c "$src/requirements.lock" ${constraints:+-c "$constraints"} \
        "$src${extras:+[$extras]}"
    purelib=$(python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
    for lib in "$purelib"/nvidia/*/lib; do
        if [ -d "$lib" ]; then echo "$lib"; fi
    done >/etc/ld.so.conf.d/zz-nvidia-pip-wheels.conf
    ldconfig
    ;;
no-deps)
    shift
    if [ "$#" -eq 0 ]; then
        echo "install.sh no-deps NAME...: name the packages of requirements-no-deps.txt" >&2
        exit 2
    fi
    pins=""
    for name in "$@"; do
        # The name compared as a string (grep would read "." in a name as any character).
        pin=$(awk -F'==' -v name="$name" '$1 == name' "$src/requirements-no-deps.txt")
        if [ -z "$pin" ]; then
            echo "install.sh: $name is not pinned in requirements-no-deps.txt" >&2
            exit 1
        fi
        pins="$pins $pin"
    done
    # shellcheck disable=SC2086 # one word per pin
    pip install --no-cache-dir --no-deps $pins
    ;;
package)
    pip install --no-cache-dir --no-deps --force-reinstall "$src"
    broken=$(pip check | grep -v -E -e '^No broken requirements found\.$' \
        -e '^(tensorflow-serving-api|tensorflowjs|tf-keras) [0-9.]+ requires tensorflow, which is not installed\.$' \
        -e '^keras-hub [0-9.]+ requires tensorflow-text, which is not installed\.$' \
        -e '^tensorflowjs [0-9.]+ requires (flax|importlib[-_]resources|tensorflow[-_]decision[-_]forests), which is not installed\.$' \
        -e '^tensorflowjs [0-9.]+ has requirement packaging~=23\.1, but you have packaging [0-9.]+\.$' \
        -e '^(jax|jaxlib) [0-9.]+ requires scipy, which is not installed\.$' || true)
    if [ -n "$broken" ]; then
        echo "$broken" >&2
        exit 1
    fi
    rm -rf "$src"
    groupadd --gid 1000 app
    useradd --uid 1000 --gid 1000 --home-dir /home/app --create-home --shell /usr/sbin/nologin app
    install -d -m 1777 /gcs /minio /s3
    chmod 1777 /home/app
    ;;
*)
    echo "usage: install.sh dependencies EXTRAS [CONSTRAINTS] | install.sh no-deps NAME... | install.sh package" >&2
    exit 2
    ;;
esac
