#!/bin/sh
# Check the Prometheus rules and the example Alertmanager config, as CI does.
# Needs: promtool (Debian: prometheus), amtool (Debian: prometheus-alertmanager), python3
# with PyYAML. Usage: k8s/tests/check.sh   (from the repository root or anywhere)
set -eu
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python=${PYTHON:-python3}
# rules.yaml = the PrometheusRule's spec (a plain Prometheus rules file)
"$python" -c 'import sys, yaml; doc = yaml.safe_load(open(sys.argv[1])); yaml.safe_dump(doc["spec"], open(sys.argv[2], "w"), sort_keys=False)' \
    "$here/../prometheus-rule.yaml" "$work/rules.yaml"
cp "$here/prometheus-rule.test.yaml" "$work/"
promtool check rules "$work/rules.yaml"
(cd "$work" && promtool test rules prometheus-rule.test.yaml)
amtool check-config "$here/../alertmanager-example.yaml"
