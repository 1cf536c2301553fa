#!/usr/bin/env bash
# Create streaming/flink/.venv: PyFlink's own environment (see requirements.txt for why it is
# separate). Idempotent: when the venv already holds exactly requirements.lock it returns at once.
# Usage: streaming/flink/setup_env.sh   (from anywhere; the Makefile calls it)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/.venv"
lock="$here/requirements.lock"
stamp="$venv/.byoc-lock-sha256"
want="$(sha256sum "$lock" | cut -d' ' -f1)"

if [[ -x "$venv/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    echo "flink env up to date: $venv"
    exit 0
fi

command -v uv >/dev/null || { echo "setup_env.sh: uv not found on PATH" >&2; exit 1; }
# PyFlink starts a JVM: it needs Java 11 or 17 (the image and this machine use 17).
if ! command -v java >/dev/null && [[ -z "${JAVA_HOME:-}" ]]; then
    echo "setup_env.sh: no java found; install OpenJDK 17 (apt-get install openjdk-17-jre-headless)" >&2
    exit 1
fi

if [[ ! -x "$venv/bin/python" ]]; then
    uv venv --quiet --python 3.11 "$venv"
fi
# `sync` (not `install`) makes the venv equal to the lock; hashes in the lock are verified.
uv pip sync --quiet --python "$venv/bin/python" "$lock"
echo "$want" > "$stamp"
echo "flink env ready: $venv"
