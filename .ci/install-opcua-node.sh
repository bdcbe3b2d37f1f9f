#!/usr/bin/env bash
# Installs the npm project of the node-opcua interop test
# (tests/opcua-node, driven by proxy/opcua_node_test.go) from its
# package-lock.json. Without it that test skips; .ci/run calls this first.
set -euo pipefail
dir="$(cd "$(dirname "$0")/../tests/opcua-node" && pwd)"
if ! command -v npm >/dev/null 2>&1 || ! command -v node >/dev/null 2>&1; then
	echo "install-opcua-node: node and npm are required for the node-opcua interop test" >&2
	exit 1
fi
cd "$dir"
# node-opcua 2.186.4 declares node >= 22.13 but runs on node 20: the engine
# warning is expected.
npm ci --no-audit --no-fund --loglevel=error
node -e 'require("node-opcua"); console.log("install-opcua-node: node-opcua " + require("node-opcua/package.json").version + " on node " + process.version)'
