#!/bin/sh
# Configure a node's containerd (1.7 or newer, config version 2) for Strata, restarting it
# only when something changed: safe to run again and again (the DaemonSet runs it at every
# start). The Strata DaemonSet (strata-daemonset.yaml) carries a copy of this script in its
# ConfigMap; tests/containerd_diff.rs runs it against a scratch config.
#
#   1. /etc/containerd/conf.d/strata.toml: Strata's proxy snapshotter ("strata") and diff
#      service ("strata-diff", first in the diff service's list), pulled in by an `imports`
#      line in config.toml (added when there is none; if config.toml imports other files, this
#      one is added to its list).
#   2. With STRATA_CRI_SNAPSHOTTER=true (the default): the CRI plugin's `snapshotter` set to
#      "strata" in config.toml itself (an imported CRI table would replace the node's whole CRI
#      configuration). The line is changed, added to the table, or the table appended.
#   3. The result is checked with `containerd config dump`; on failure config.toml is put back.
#   4. containerd is restarted (running containers keep running: their shims stay) when, and
#      only when, a file changed.
#
# Environment (defaults for the DaemonSet, which mounts the host's /etc/containerd and runs
# commands on the host through nsenter):
#   CONTAINERD_CONFIG   /etc/containerd/config.toml
#   CONTAINERD_DROPIN   /etc/containerd/conf.d/strata.toml
#   STRATA_SOCKET_DIR   /run/strata
#   STRATA_CRI_SNAPSHOTTER  true
#   HOST                nsenter -t 1 -m -u -i -n -p --   (empty: run here)
#   RESTART             systemctl restart containerd     ("" or "none": do not restart)
set -eu

CONFIG="${CONTAINERD_CONFIG:-/etc/containerd/config.toml}"
DROPIN="${CONTAINERD_DROPIN:-/etc/containerd/conf.d/strata.toml}"
SOCKDIR="${STRATA_SOCKET_DIR:-/run/strata}"
CRI="${STRATA_CRI_SNAPSHOTTER:-true}"
HOST="${HOST-nsenter -t 1 -m -u -i -n -p --}"
RESTART="${RESTART-systemctl restart containerd}"

say() { echo "strata-node-setup: $*" >&2; }
changed=0

mkdir -p "$(dirname "$CONFIG")" "$(dirname "$DROPIN")"
[ -e "$CONFIG" ] || { say "no $CONFIG: writing a minimal one"; printf 'version = 2\n' >"$CONFIG"; changed=1; }
if ! grep -q '^version *= *2' "$CONFIG"; then
    say "$CONFIG is not a version 2 containerd configuration (containerd 1.7: version = 2); change it by hand (README, Kubernetes)"
    exit 1
fi

# 1. The drop-in.
want="$(cat <<EOF
# Written by strata-node-setup.sh (Strata). containerd imports it from config.toml.
[proxy_plugins]
  [proxy_plugins.strata]
    type = "snapshot"
    address = "$SOCKDIR/containerd-snapshotter.sock"
  [proxy_plugins.strata-diff]
    type = "diff"
    address = "$SOCKDIR/containerd-diff.sock"

[plugins."io.containerd.service.v1.diff-service"]
  default = ["strata-diff", "walking"]
EOF
)"
if [ "$(cat "$DROPIN" 2>/dev/null || true)" != "$want" ]; then
    printf '%s\n' "$want" >"$DROPIN"
    say "wrote $DROPIN"
    changed=1
fi

backup="$CONFIG.strata-backup"
cp -p "$CONFIG" "$backup.new"
orig="$(cat "$CONFIG")"

# 2. The imports line.
if grep -q '^imports *=' "$CONFIG"; then
    if ! grep '^imports *=' "$CONFIG" | grep -qF "\"$DROPIN\""; then
        sed -i "s|^imports *= *\[|imports = [\"$DROPIN\", |" "$CONFIG"
        sed -i "s|^imports = \[\"$DROPIN\", *\]|imports = [\"$DROPIN\"]|" "$CONFIG"
    fi
else
    sed -i "0,/^version *= *2.*/s||&\nimports = [\"$DROPIN\"]|" "$CONFIG"
fi

# 3. The CRI snapshotter.
table='[plugins."io.containerd.grpc.v1.cri".containerd]'
if [ "$CRI" = true ]; then
    if grep -qF "$table" "$CONFIG"; then
        # The table's own lines: from its header to the next header.
        awk -v t="$table" '
            $0 == t || index($0, t) == 1 && substr($0, length(t) + 1) ~ /^[ \t]*$/ { inside = 1; print; next }
            /^[ \t]*\[/ { if (inside && !done) { print "  snapshotter = \"strata\""; done = 1 } inside = 0 }
            inside && /^[ \t]*snapshotter *=/ { if (!done) { sub(/=.*/, "= \"strata\""); done = 1; print } ; next }
            { print }
            END { if (inside && !done) print "  snapshotter = \"strata\"" }
        ' "$CONFIG" >"$CONFIG.strata-tmp"
        cat "$CONFIG.strata-tmp" >"$CONFIG"
        rm -f "$CONFIG.strata-tmp"
    else
        printf '\n%s\n  snapshotter = "strata"\n' "$table" >>"$CONFIG"
    fi
fi

if [ "$(cat "$CONFIG")" != "$orig" ]; then
    changed=1
    [ -e "$backup" ] || mv "$backup.new" "$backup"
    say "changed $CONFIG (the original is in $backup)"
fi
rm -f "$backup.new"

# 4. Check with containerd itself.
if ! $HOST containerd --config "$CONFIG" config dump >/dev/null 2>"$CONFIG.strata-err"; then
    say "containerd rejects the result: $(cat "$CONFIG.strata-err"); putting $CONFIG back"
    printf '%s\n' "$orig" >"$CONFIG"
    rm -f "$CONFIG.strata-err"
    exit 1
fi
rm -f "$CONFIG.strata-err"

if [ "$changed" = 0 ]; then
    say "containerd already configured for Strata: nothing changed"
elif [ -n "$RESTART" ] && [ "$RESTART" != none ]; then
    say "restarting containerd"
    $HOST $RESTART
else
    say "containerd configured for Strata; restart it to apply"
fi
