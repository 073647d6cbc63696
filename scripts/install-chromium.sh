#!/usr/bin/env bash
# Installs Debian's Chromium for the real-browser test (test/browser.test.ts), which drives it with
# playwright-core. Never a downloaded browser build: the distribution's package, security updates
# included (Debian 12 ships Chromium 156 through bookworm-security).
# Idempotent: when /usr/lib/chromium/chromium is already installed it only prints the version.
set -euo pipefail

bin=/usr/lib/chromium/chromium

if [ -x "$bin" ] && dpkg-query -W -f='${Status}' chromium 2>/dev/null | grep -q 'ok installed'; then
  echo "chromium already installed ($(dpkg-query -W -f='${Version}' chromium))"
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
export DEBIAN_FRONTEND=noninteractive
# Install from the current package lists if they know the package; refresh them first otherwise
# (a fresh container has empty lists), and refresh-and-retry once if the install fails on stale lists.
if ! apt-cache show chromium >/dev/null 2>&1; then $SUDO apt-get update -qq; fi
if ! $SUDO apt-get install -y -qq --no-install-recommends chromium; then
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends chromium
fi
echo "installed chromium $(dpkg-query -W -f='${Version}' chromium) at $bin"
