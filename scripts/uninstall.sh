#!/usr/bin/env bash
# Remove Mail Stronghold's program and units. Mail, settings, state and the user stay
# unless PURGE=1 (then /etc/stronghold, /var/lib/stronghold, the socket dir and the user go too).
set -euo pipefail
DESTDIR=${DESTDIR:-}
PREFIX=${PREFIX:-/opt/stronghold}
UNITDIR=${UNITDIR:-/etc/systemd/system}
SPOOL=${POSTFIX_SPOOL:-/var/spool/postfix}
[ "$(id -u)" -eq 0 ] || { echo "uninstall: run as root" >&2; exit 1; }
if [ -z "$DESTDIR" ] && [ -d /run/systemd/system ]; then
  systemctl disable --now stronghold-milter stronghold-web stronghold-jobs.timer 2>/dev/null || true
fi
rm -f "$DESTDIR$UNITDIR"/stronghold-milter.service "$DESTDIR$UNITDIR"/stronghold-web.service \
      "$DESTDIR$UNITDIR"/stronghold-jobs.service "$DESTDIR$UNITDIR"/stronghold-jobs.timer
rm -rf "$DESTDIR$PREFIX"
if [ "${PURGE:-}" = 1 ]; then
  rm -rf "$DESTDIR/etc/stronghold" "$DESTDIR/var/lib/stronghold" "$DESTDIR$SPOOL/stronghold"
  [ -n "$DESTDIR" ] || ! getent passwd stronghold >/dev/null || userdel stronghold
  echo "uninstall: removed the program, units, settings, state (quarantine, models, SQLite) and the user"
else
  echo "uninstall: removed the program and units; kept /etc/stronghold, /var/lib/stronghold (PURGE=1 removes them)"
fi
