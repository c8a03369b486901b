#!/usr/bin/env bash
# Installs the pinned npm oidc-provider (package.json) for the console's
# OpenID Connect test into tests/oidc/node_modules, once.
set -euo pipefail
cd "$(dirname "$0")"
if [ -f node_modules/oidc-provider/package.json ] && grep -q '"version": "9.13.3"' node_modules/oidc-provider/package.json; then
  exit 0
fi
command -v npm >/dev/null || { echo "oidc: npm is missing" >&2; exit 1; }
echo "oidc: installing oidc-provider"
npm install --no-audit --no-fund --silent
