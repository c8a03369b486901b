#!/usr/bin/env bash
# Puts the OHIF viewer's built dist/ (npm @ohif/app, which ships it) into
# tests/ohif/node_modules/@ohif/app, once. Only the package's own tarball is
# needed to serve the viewer, so it is fetched with `npm pack`, not installed
# with its (build-time) dependency tree.
set -euo pipefail
cd "$(dirname "$0")"
VERSION=3.13.2
DEST=node_modules/@ohif/app
if [ -f "$DEST/.version" ] && [ "$(cat "$DEST/.version")" = "$VERSION" ] && [ -f "$DEST/dist/index.html" ]; then
  exit 0
fi
command -v npm >/dev/null || { echo "ohif: npm is missing" >&2; exit 1; }
echo "ohif: fetching @ohif/app@$VERSION"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
npm pack --silent --pack-destination "$tmp" "@ohif/app@$VERSION" >/dev/null
rm -rf "$DEST"
mkdir -p "$DEST"
tar xzf "$tmp"/ohif-app-"$VERSION".tgz -C "$DEST" --strip-components=1
echo "$VERSION" > "$DEST/.version"
