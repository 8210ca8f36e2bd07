#!/bin/sh
# Helm post-renderer: bolts egress-sidecar onto the Deployments a chart renders (LiteLLM's
# official chart, or any) with the kustomize component k8s/components/egress-sidecar.
# Helm writes the rendered manifests to stdin and applies what this prints.
#
#   export EGRESS_SIDECAR_IMAGE=registry.example.com/platform/egress-sidecar@sha256:...
#   export EGRESS_SIDECAR_INIT_IMAGE=registry.example.com/platform/egress-sidecar-init@sha256:...
#   helm install litellm oci://ghcr.io/berriai/litellm-helm -n llm-gateway -f values.yaml \
#     --set-string deploymentLabels.egress-sidecar/inject=true \
#     --post-renderer k8s/helm-post-renderer.sh
#
# Only Deployments labelled egress-sidecar/inject=true are changed (docs/deployment.md).
# Needs kubectl (kustomize v5). Images as name@sha256:digest (preferred) or name:tag.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
kubectl=${KUBECTL:-kubectl}
: "${EGRESS_SIDECAR_IMAGE:?set EGRESS_SIDECAR_IMAGE to your build of the sidecar image}"
: "${EGRESS_SIDECAR_INIT_IMAGE:?set EGRESS_SIDECAR_INIT_IMAGE to your build of the init image}"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cat > "$work/helm.yaml"
# kustomize refuses absolute component paths: a copy beside the chart's output.
cp -R "$here/components/egress-sidecar" "$work/egress-sidecar"

image() {  # kustomize images entry: $1 symbolic name, $2 reference
  case $2 in
    *@sha256:*) printf '  - name: %s\n    newName: %s\n    digest: %s\n' "$1" "${2%%@*}" "${2#*@}" ;;
    *:*) case ${2##*/} in
           *:*) printf '  - name: %s\n    newName: %s\n    newTag: "%s"\n' "$1" "${2%:*}" "${2##*:}" ;;
           *) echo "helm-post-renderer: $1 image '$2' has no tag or digest" >&2; exit 64 ;;
         esac ;;
    *) echo "helm-post-renderer: $1 image '$2' has no tag or digest" >&2; exit 64 ;;
  esac
}
{
  echo "apiVersion: kustomize.config.k8s.io/v1beta1"
  echo "kind: Kustomization"
  echo "resources: [helm.yaml]"
  echo "components: [egress-sidecar]"
  echo "images:"
  image egress-sidecar "$EGRESS_SIDECAR_IMAGE"
  image egress-sidecar-init "$EGRESS_SIDECAR_INIT_IMAGE"
} > "$work/kustomization.yaml"
"$kubectl" kustomize "$work"
