#!/usr/bin/env bash
# Install Mail Stronghold as a system service on Debian 12 (see docs/install.md).
#
#   sudo make install                      # the package, config, state, socket dir, units, user
#   sudo DESTDIR=/tmp/root make install    # the same into a scratch root (packagers, tests)
#
# Settings (environment): DESTDIR, PREFIX (/opt/stronghold), PYTHON (/usr/bin/python3),
# UNITDIR (/etc/systemd/system), POSTFIX_SPOOL (/var/spool/postfix), NO_USER=1 (do not
# create the stronghold user: a package's postinst does that).
set -euo pipefail
SRC=$(cd "$(dirname "$0")/.." && pwd)
DESTDIR=${DESTDIR:-}
PREFIX=${PREFIX:-/opt/stronghold}
PYTHON=${PYTHON:-/usr/bin/python3}
UNITDIR=${UNITDIR:-/etc/systemd/system}
SPOOL=${POSTFIX_SPOOL:-/var/spool/postfix}
STATE=/var/lib/stronghold
ETC=/etc/stronghold
ACCOUNT=stronghold

say() { printf 'install: %s\n' "$*"; }
die() { printf 'install: error: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run as root (sudo make install)"
"$PYTHON" -c 'import sys, venv; assert sys.version_info >= (3, 11)' 2>/dev/null \
  || die "$PYTHON with the venv module (3.11+) is needed: apt-get install python3-venv python3-dev"
[ -e /usr/include/libmilter/mfapi.h ] || die "libmilter headers are needed: apt-get install libmilter-dev"
command -v gcc >/dev/null 2>&1 || die "a C compiler is needed (pymilter and the native core are built from source): apt-get install gcc"

if [ -z "${NO_USER:-}" ] && ! getent passwd "$ACCOUNT" >/dev/null; then
  useradd --system --user-group --home-dir "$STATE" --no-create-home --shell /usr/sbin/nologin \
    --comment "Mail Stronghold" "$ACCOUNT"
  say "created system user $ACCOUNT"
fi
if getent group postfix >/dev/null && getent passwd "$ACCOUNT" >/dev/null; then
  usermod -a -G postfix "$ACCOUNT"  # to hand its socket to group postfix
fi
owner() { getent passwd "$ACCOUNT" >/dev/null && echo "$1" || echo root; }

# the package, in a virtual environment of its own
say "installing the package into $DESTDIR$PREFIX"
"$PYTHON" -m venv "$DESTDIR$PREFIX"
# setuptools builds in build/ and keeps files from earlier builds there (a module since
# moved or deleted would be installed again): start from an empty one.
rm -rf "$SRC/build"
"$DESTDIR$PREFIX/bin/pip" install --quiet --disable-pip-version-check "$SRC"
if [ -n "$DESTDIR" ]; then  # scripts must name where the venv will live, not the scratch root
  grep -rlI "^#!$DESTDIR$PREFIX/" "$DESTDIR$PREFIX/bin" | xargs -r sed -i "1s|^#!$DESTDIR$PREFIX/|#!$PREFIX/|"
fi
install -D -m 0644 "$SRC/docs/install.md" "$DESTDIR$PREFIX/share/doc/install.md"

# configuration: written once, never overwritten
install -d -m 0750 -o root -g "$(owner "$ACCOUNT")" "$DESTDIR$ETC"
if [ ! -e "$DESTDIR$ETC/stronghold.toml" ]; then
  "$DESTDIR$PREFIX/bin/python" -m stronghold.cli config example \
    --set data_dir="$STATE" --set models_dir="$STATE/models" \
    --set milter_socket="unix:$SPOOL/stronghold/milter.sock" > "$DESTDIR$ETC/stronghold.toml.new"
  chown root:"$(owner "$ACCOUNT")" "$DESTDIR$ETC/stronghold.toml.new"
  chmod 0640 "$DESTDIR$ETC/stronghold.toml.new"
  mv "$DESTDIR$ETC/stronghold.toml.new" "$DESTDIR$ETC/stronghold.toml"
  say "wrote $ETC/stronghold.toml (every setting listed; edit database_url for PostgreSQL)"
else
  say "kept the existing $ETC/stronghold.toml"
fi

# state and models: the milter's own; models not writable by others (the loader refuses them)
install -d -m 0750 -o "$(owner "$ACCOUNT")" -g "$(owner "$ACCOUNT")" "$DESTDIR$STATE"
install -d -m 0755 -o "$(owner "$ACCOUNT")" -g "$(owner "$ACCOUNT")" "$DESTDIR$STATE/models"
if [ -e "$SRC/models/model.joblib" ] && [ ! -e "$DESTDIR$STATE/models/model.joblib" ]; then
  for f in "$SRC"/models/model.joblib "$SRC"/models/model.npy "$SRC"/models/model.json; do
    install -m 0644 -o "$(owner "$ACCOUNT")" -g "$(owner "$ACCOUNT")" "$f" "$DESTDIR$STATE/models/"
  done
  say "copied the trained model from $SRC/models"
fi

# the milter socket inside Postfix's queue directory: reachable by chrooted smtpd too
if getent group postfix >/dev/null; then
  install -d -m 0750 -o "$(owner "$ACCOUNT")" -g postfix "$DESTDIR$SPOOL/stronghold"
else
  install -d -m 0750 -o "$(owner "$ACCOUNT")" "$DESTDIR$SPOOL/stronghold"
  say "warning: no group postfix (is Postfix installed?): $SPOOL/stronghold left to $ACCOUNT"
fi

# systemd units
install -d "$DESTDIR$UNITDIR"
install -m 0644 "$SRC"/deploy/systemd/stronghold-*.service "$SRC"/deploy/systemd/stronghold-*.timer "$DESTDIR$UNITDIR/"
if [ -z "$DESTDIR" ] && [ -d /run/systemd/system ]; then
  systemctl daemon-reload
fi

chrooted=$(postconf -F smtp/inet/chroot 2>/dev/null | awk '{print $3}' || true)
if [ "$chrooted" = "n" ]; then milter="unix:$SPOOL/stronghold/milter.sock"; else milter="unix:/stronghold/milter.sock"; fi
cat <<MSG

Mail Stronghold is installed in $PREFIX.
  settings   $ETC/stronghold.toml   (check them: $PREFIX/bin/stronghold milter --check-config)
  state      $STATE   models $STATE/models   socket $SPOOL/stronghold/milter.sock
Next:
  sudo -u $ACCOUNT STRONGHOLD_CONFIG=$ETC/stronghold.toml $PREFIX/bin/stronghold train --index ...  (if no model yet)
  systemctl enable --now stronghold-milter stronghold-web stronghold-jobs.timer
  Postfix (main.cf; smtpd is ${chrooted:-probably} chrooted, so the path is seen from inside $SPOOL):
    smtpd_milters = $milter
    non_smtpd_milters = $milter
    milter_default_action = tempfail
    milter_protocol = 6
    smtpd_delay_open_until_valid_rcpt = no    (queue ids on RCPT-stage log lines)
    message_size_limit at most max_message_bytes (--check-config compares them)
MSG
