#!/usr/bin/env bash
# Install the Debian packages Mail Stronghold and its tests need (idempotent).
set -euo pipefail
# Dovecot: the local stack and the tests run private instances (their own config, loopback ports
# 1143 or free ones, unix sockets in their own folders); a system Dovecot that the packages may
# start uses /etc/dovecot, 143 and 993, so the two never collide and ours never touch it.
# python3-venv, python3-dev, gcc and systemd: `make install` builds its venv (and the native core,
# stronghold/native/*.c) with Debian's Python, and
# its test verifies the units with systemd-analyze. bogofilter: the accuracy peer (make bench-accuracy).
PKGS=(postfix clamav-daemon clamav postgresql chromium libmilter-dev swaks
      dovecot-imapd dovecot-lmtpd dovecot-sieve openssl python3-venv python3-dev gcc libc6-dev systemd bogofilter)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# npm fetches the corpus; a Node.js install that did not come from Debian is fine too.
command -v npm >/dev/null 2>&1 || missing+=(npm)
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "installing: ${missing[*]}"
# Postfix asks questions on install; answer them ahead of time.
echo "postfix postfix/main_mailer_type select No configuration" | $SUDO debconf-set-selections
echo "postfix postfix/mailname string localhost" | $SUDO debconf-set-selections
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
