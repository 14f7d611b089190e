#!/usr/bin/env bash
# Idempotent set-up for a fresh Debian 12 machine: system peers the tests talk to, then a venv
# with wardready installed in editable mode. Sourced by demo.sh and test.sh.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# Programs nobody here wrote: the tests and the demo use them as real peers.
apt_packages=(
  iproute2 nftables iptables iputils-ping fping util-linux python3-venv
  libnetfilter-queue-dev            # builds netfilterqueue: delay and jitter on test lines
  dnsmasq-base                      # dns
  postgresql                        # the collector's second database
  iperf3                            # bandwidth
  sip-tester kamailio kamailio-tls-modules coturn   # sip, stun, turn
  snmpsim snmpd snmp cups-ipp-utils dbus sane-utils # printers and scanners
  avahi-daemon                      # discovery: mDNS on a test LAN
  openssh-server                    # ssh
  faketime                          # ward PCs whose clock is wrong
  prometheus prometheus-alertmanager                # rules, routes and dashboards
  systemd-container debootstrap                     # ansible: hosts that boot real systemd
)

missing=()
for p in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: need root to install: ${missing[*]}" >&2
    exit 1
  fi
  echo "setup: installing ${missing[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

venv="$root/.venv"
stamp="$venv/.wardready-installed"
want=$(sha256sum "$root/pyproject.toml" | cut -d' ' -f1)
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "setup: installing wardready into $venv" >&2
  "$venv/bin/python" -m pip install -q --upgrade pip >/dev/null
  "$venv/bin/python" -m pip install -q -e "$root[dev]"
  echo "$want" > "$stamp"
fi
# The light agent's dependencies as wheels, for the test that installs the agent alone into a
# clean venv without reaching any package index.
wheelhouse="$root/.cache/agent-wheelhouse"
if [ ! -f "$wheelhouse/.stamp" ] || [ "$(cat "$wheelhouse/.stamp")" != "$want" ]; then
  echo "setup: fetching the agent's wheels into $wheelhouse" >&2
  rm -rf "$wheelhouse"
  "$venv/bin/python" -m pip download -q -d "$wheelhouse" "$root" 2>&1 | grep -v '^WARNING: Location' >&2 || true
  echo "$want" > "$wheelhouse/.stamp"
fi
export WARDREADY_AGENT_WHEELHOUSE="$wheelhouse"
# The collector's too ([collector] extra): the Ansible tests install both on hosts that reach no
# package index.
collector_wheelhouse="$root/.cache/collector-wheelhouse"
if [ ! -f "$collector_wheelhouse/.stamp" ] || [ "$(cat "$collector_wheelhouse/.stamp")" != "$want" ]; then
  echo "setup: fetching the collector's wheels into $collector_wheelhouse" >&2
  rm -rf "$collector_wheelhouse"
  "$venv/bin/python" -m pip download -q -d "$collector_wheelhouse" "$root[collector]" 2>&1 | grep -v '^WARNING: Location' >&2 || true
  echo "$want" > "$collector_wheelhouse/.stamp"
fi
export WARDREADY_COLLECTOR_WHEELHOUSE="$collector_wheelhouse"
export PATH="$venv/bin:$PATH"
