#!/usr/bin/env bash
# Validates the deployment artifacts: the Dockerfile, the kustomize overlays
# and the CloudFormation template, with cfn-lint, checkov and
# kubernetes-validate (installed once into a virtualenv) and den itself.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${DEN_LINT_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/den/deploy-lint}
if [ ! -x "$VENV/bin/checkov" ] || [ ! -x "$VENV/bin/cfn-lint" ] || [ ! -x "$VENV/bin/kubernetes-validate" ]; then
  echo "== installing cfn-lint, checkov and kubernetes-validate into $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet 'cfn-lint==1.58.0' 'checkov==3.3.30' 'kubernetes-validate==1.37.0' pyyaml
fi

echo "== cfn-lint deploy/aws/den.yaml deploy/aws/den-lambda.yaml"
"$VENV/bin/cfn-lint" deploy/aws/den.yaml deploy/aws/den-lambda.yaml

# checkov runs offline: no policy downloads, no guideline look-ups.
export BC_SKIP_MAPPING=TRUE
echo "== checkov (CloudFormation, Kubernetes)"
"$VENV/bin/checkov" -d deploy --framework cloudformation kubernetes --compact --quiet --skip-download 2>/dev/null
echo "== checkov (Dockerfile)"
"$VENV/bin/checkov" -f Dockerfile --framework dockerfile --compact --quiet --skip-download 2>/dev/null

echo "== overlays and the Dockerfile"
cargo build --quiet -p den --features aws
"$VENV/bin/python" scripts/check-deploy.py target/debug/den "$VENV/bin/kubernetes-validate"
