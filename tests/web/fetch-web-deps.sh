#!/usr/bin/env bash
# Installs the npm packages the web tests drive zfarm with, none written here:
# the official OpenAI client (openai), an OpenAPI 3.1 validator
# (@seriousme/openapi-schema-validator) and playwright-core (drives Debian's
# chromium; it downloads no browser). Pinned versions, into DIR/node_modules.
# Prints DIR. Usage: tests/web/fetch-web-deps.sh [DIR]   (default: build/npm-web)
set -euo pipefail
dir=${1:-build/npm-web}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
pkgs=(openai@6.49.0 @seriousme/openapi-schema-validator@2.11.0 playwright-core@1.65.2)
have() { [ -f "$dir/node_modules/$1/package.json" ] &&
  [ "$(node -p "require('$dir/node_modules/$1/package.json').version" 2>/dev/null)" = "$2" ]; }
if ! have openai 6.49.0 || ! have @seriousme/openapi-schema-validator 2.11.0 ||
   ! have playwright-core 1.65.2; then
  npm install --prefix "$dir" --no-audit --no-fund --silent --no-save "${pkgs[@]}" >&2
fi
echo "$dir"
