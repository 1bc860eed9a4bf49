#!/usr/bin/env bash
# Installs the system packages the product and its tests need, idempotently:
#   orthanc + orthanc-python  the PACS the service mode forwards from and writes verdicts back to
#   mricron-data              Colin27 (a real single-subject head) used as sample anatomy
#   dcmtk                     storescu: a second, independent DICOM sender for SCP tests and the ingest bench
#   chromium chromium-driver  a real headless browser for the dashboard's browser test
# Runs as root (CI and the development machines); with sudo otherwise.
set -euo pipefail
needed=()
for pkg in orthanc orthanc-python mricron-data dcmtk chromium chromium-driver; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || needed+=("$pkg")
done
if [ ${#needed[@]} -eq 0 ]; then
    exit 0
fi
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
echo "installing system packages: ${needed[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${needed[@]}" >/dev/null
# Debian starts a system-wide Orthanc on install; the product runs its own instances.
$SUDO service orthanc stop >/dev/null 2>&1 || true
