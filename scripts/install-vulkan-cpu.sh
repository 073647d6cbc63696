#!/usr/bin/env bash
# Installs Mesa's lavapipe (a software Vulkan driver) so Dawn can give WebGPU on a machine with no GPU.
#
# Why backports: Debian 12's own Mesa 22.3 lacks shaderUniform*ArrayDynamicIndexing features that Dawn
# requires and Dawn refuses the adapter; Mesa 25.0.7 from bookworm-backports works. Idempotent: when a
# lavapipe ICD from Mesa >= 25 is already installed it does nothing and exits in well under a second.
set -euo pipefail

need_mesa_major=25
icd=/usr/share/vulkan/icd.d/lvp_icd.json

installed_version() { dpkg-query -W -f='${Version}' mesa-vulkan-drivers 2>/dev/null || true; }

v="$(installed_version)"
if [ -f "$icd" ] && [ -n "$v" ] && [ "${v%%.*}" -ge "$need_mesa_major" ] 2>/dev/null \
   && dpkg-query -W -f='${Status}' libvulkan1 2>/dev/null | grep -q 'ok installed'; then
  echo "lavapipe already installed (mesa-vulkan-drivers $v)"
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
. /etc/os-release
if [ "${VERSION_CODENAME:-}" != "bookworm" ]; then
  echo "note: this script targets Debian 12 (bookworm); found ${PRETTY_NAME:-unknown}. Installing the distribution's mesa-vulkan-drivers." >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq mesa-vulkan-drivers libvulkan1
  exit 0
fi

src=/etc/apt/sources.list.d/bookworm-backports.list
if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
  echo "deb http://deb.debian.org/debian bookworm-backports main" | $SUDO tee "$src" >/dev/null
fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq -t bookworm-backports mesa-vulkan-drivers libvulkan1
echo "installed mesa-vulkan-drivers $(installed_version)"
