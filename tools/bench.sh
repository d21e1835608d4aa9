#!/usr/bin/env bash
# Installs what the benchmarks need (tools/setup_env.sh), then runs the benchmark harness.
# Arguments go to `python -m sparseops.bench` (e.g. --quick, --device cuda, --family sparse24).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$ROOT/tools/setup_env.sh"
VENV="${VENV:-$ROOT/.venv}"
cd "$ROOT"
exec "$VENV/bin/python" -m sparseops.bench "$@"
