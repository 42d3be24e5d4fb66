#!/usr/bin/env bash
# Installs what a fresh Debian/Ubuntu machine lacks to run OmniQuant locally:
# Java 17+ (Kafka broker), Maven (resolves the Kafka jars from Maven Central), redis-server,
# chromium (headless check of the `omniquant report` page), prometheus (its promtool checks and
# unit-tests the alert rules in docker/prometheus/rules/), openssl (checks the secure mode's certificates),
# gdb (the backtrace of a test process that dies of a signal, scripts/chaos-ci.sh).
# Python 3.11+ is assumed (it runs this project). Safe to run again: installs only what is missing.
set -euo pipefail

missing=()
java_ok() {
  command -v java >/dev/null 2>&1 || return 1
  local v
  v=$(java -version 2>&1 | awk -F'"' '/version/ {print $2}' | cut -d. -f1)
  [ -n "$v" ] && [ "$v" -ge 17 ]
}
java_ok || missing+=(openjdk-17-jre-headless)
command -v mvn >/dev/null 2>&1 || missing+=(maven)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v gdb >/dev/null 2>&1 || missing+=(gdb)

if [ ${#missing[@]} -eq 0 ]; then
  echo "system deps: java $(java -version 2>&1 | awk -F'"' '/version/ {print $2}'), $(mvn -v 2>/dev/null | head -1 | sed 's/\x1b\[[0-9;]*m//g'), $(redis-server --version | cut -d' ' -f1-3), $(chromium --version 2>/dev/null), $(promtool --version 2>&1 | head -1 | cut -d' ' -f1-3)"
  exit 0
fi

echo "system deps missing: ${missing[*]}"
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install them with your package manager (need Java 17+, Maven, redis-server, chromium, prometheus/promtool, openssl, gdb), then retry" >&2
  exit 1
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "run as root or install: apt-get install -y ${missing[*]}" >&2; exit 1
  fi
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
# Debian's redis-server package starts a system service on :6379; the stack runs its own.
# Debian's prometheus package starts one on :9090, where the compose stack publishes its own:
# only promtool is wanted, so stop and disable the service where systemd runs.
if [[ " ${missing[*]} " == *" prometheus "* ]] && command -v systemctl >/dev/null 2>&1 \
  && systemctl is-active --quiet prometheus 2>/dev/null; then
  $SUDO systemctl disable --now prometheus >/dev/null 2>&1 || true
fi
echo "installed: ${missing[*]}"
