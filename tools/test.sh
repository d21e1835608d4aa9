#!/usr/bin/env bash
# Installs what the tests need (tools/setup_env.sh), then runs the whole test suite against the
# installed package. Extra arguments go to pytest.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$ROOT/tools/setup_env.sh"
VENV="${VENV:-$ROOT/.venv}"
cd "$ROOT"
# Run from the checkout but import the installed sparseops (python/ is not on sys.path).
exec "$VENV/bin/python" -m pytest tests -q "$@"
