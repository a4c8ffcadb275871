#!/usr/bin/env bash
# One-shot GPU benchmark (see benchmarks/README.md); arguments pass through, e.g. --json FILE.
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python3}" -m benchmarks.gpu "$@"
