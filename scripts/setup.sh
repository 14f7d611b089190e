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
  prometheus-node-exporter prometheus-blackbox-exporter prometheus-snmp-exporter  # bench: the bar
  chromium                          # the board's browser tests (driven by playwright)
  libpango-1.0-0 libpangoft2-1.0-0                  # WeasyPrint: audit PDFs
  fonts-noto-core fonts-dejavu-core                 # every Vietnamese letter in the PDFs
  poppler-utils                                     # pdftotext, pdftoppm: audit PDF tests
  systemd-container debootstrap                     # ansible: hosts that boot real systemd
  wrk haproxy                                       # national bench load; collector replicas
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
# Wheels of every dependency, for the tests that install wardready where no package index is
# reached: the light agent alone into a clean venv, and the agent and the collector on the
# Ansible tests' hosts.
fetch_wheels() {  # DIR SPEC
  local dir=$1 spec=$2 log="$root/.cache/pip-download.log"
  if [ -f "$dir/.stamp" ] && [ "$(cat "$dir/.stamp")" = "$want" ]; then
    return
  fi
  echo "setup: fetching the wheels of $spec into $dir" >&2
  rm -rf "$dir"
  mkdir -p "$root/.cache"
  if ! "$venv/bin/python" -m pip download -q -d "$dir" "$spec" 2>"$log"; then
    grep -v '^WARNING: Location' "$log" >&2
    exit 1
  fi
  echo "$want" > "$dir/.stamp"
}
fetch_wheels "$root/.cache/agent-wheelhouse" "$root"
fetch_wheels "$root/.cache/collector-wheelhouse" "$root[collector]"
export WARDREADY_AGENT_WHEELHOUSE="$root/.cache/agent-wheelhouse"
export WARDREADY_COLLECTOR_WHEELHOUSE="$root/.cache/collector-wheelhouse"
export PATH="$venv/bin:$PATH"
