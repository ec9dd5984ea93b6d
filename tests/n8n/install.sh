#!/usr/bin/env bash
# Install the pinned n8n the n8n end-to-end tier drives (tests/test_e2e_n8n.py), once.
#
# It goes into a cache directory outside the repo, one per version, and is reused when it
# is already there: the install takes minutes and ~1 GB, so a clean clone must not pay it
# twice on a machine that keeps $HOME. A half-finished install is never reused: npm works
# in a temporary directory that is renamed into place only when npm succeeded.
#
# n8n-nodes-base depends on xlsx by a URL on cdn.sheetjs.com, which is not a package
# registry (and not reachable from CI): the install overrides it with xlsx 0.18.5, the
# last version on npm. Only the spreadsheet nodes use it; no workflow here does.
#
# Prints the n8n executable's path on stdout (everything else goes to stderr). With
# --check it installs nothing: it prints the path if n8n is there, else exits 1 (the
# tests ask it this way, so where n8n lives is decided here only).
set -euo pipefail
cd "$(dirname "$0")"

version=$(tr -d '[:space:]' < VERSION)
root="${ARCHIVER_NPM_CACHE:-$HOME/.cache/archiver-ci}"
dest="$root/n8n-$version"
bin="$dest/node_modules/.bin/n8n"

if [ "${1:-}" = "--check" ]; then
  [ -x "$bin" ] || exit 1
  echo "$bin"
  exit 0
fi

if [ ! -x "$bin" ]; then
  command -v npm >/dev/null 2>&1 || { echo "install.sh: npm (Node 20.19+) is needed" >&2; exit 1; }
  mkdir -p "$root"
  tmp=$(mktemp -d "$root/.n8n-$version.XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  echo "+ npm install n8n@$version into $dest" >&2
  start=$(date +%s)
  cat > "$tmp/package.json" <<JSON
{
  "name": "archiver-n8n-tier",
  "private": true,
  "dependencies": {"n8n": "$version"},
  "overrides": {"xlsx": "0.18.5"}
}
JSON
  npm install --prefix "$tmp" --no-audit --no-fund --loglevel=error >&2
  rm -rf "$dest"
  mv "$tmp" "$dest"
  trap - EXIT
  echo "n8n $version installed in $(( $(date +%s) - start )) s" >&2
fi
echo "$bin"
