#!/usr/bin/env bash
# Starts PgBouncer in transaction pooling mode in front of a PostgreSQL
# server, in a temp dir, on an ephemeral 127.0.0.1 port: the middle of
# prism-loadtest's "application → PgBouncer → PostgreSQL" baseline.
#
#   scripts/pgbouncer.sh PG_HOST PG_PORT [POOL_SIZE] [USER]
#
# Prints three lines: the DSN to give `prism-loadtest --baseline pg:DSN`,
# the PID, and the temp dir (remove it after `kill PID`). Authentication is
# `trust` (for throwaway test servers only). PgBouncer refuses to run as
# root; as root it runs as `nobody`, which then owns the temp dir.
set -euo pipefail
pg_host=${1:?usage: pgbouncer.sh PG_HOST PG_PORT [POOL_SIZE] [USER]}
pg_port=${2:?usage: pgbouncer.sh PG_HOST PG_PORT [POOL_SIZE] [USER]}
pool_size=${3:-16}
user=${4:-postgres}
bin=${PGBOUNCER:-$(command -v pgbouncer || echo /usr/sbin/pgbouncer)}
[ -x "$bin" ] || { echo "pgbouncer not found (apt-get install -y pgbouncer)" >&2; exit 1; }

dir=$(mktemp -d /tmp/prism-pgbouncer.XXXXXX)
# An ephemeral port: bound, read, released (a small race, fine for a bench).
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
printf '"%s" ""\n' "$user" > "$dir/users.txt"
cat > "$dir/pgbouncer.ini" <<INI
[databases]
* = host=$pg_host port=$pg_port
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $port
unix_socket_dir =
auth_type = trust
auth_file = $dir/users.txt
pool_mode = transaction
default_pool_size = $pool_size
max_client_conn = 1000
; tokio-postgres may send these; PgBouncer would refuse the connection.
ignore_startup_parameters = extra_float_digits,options
logfile = $dir/pgbouncer.log
pidfile = $dir/pgbouncer.pid
INI
if [ "$(id -u)" = 0 ]; then
    chown -R nobody "$dir"
    runuser -u nobody -- "$bin" -d "$dir/pgbouncer.ini"
else
    "$bin" -d "$dir/pgbouncer.ini"
fi
for _ in $(seq 100); do
    [ -s "$dir/pgbouncer.pid" ] && break
    sleep 0.05
done
[ -s "$dir/pgbouncer.pid" ] || { echo "pgbouncer did not start; log:" >&2; cat "$dir/pgbouncer.log" >&2; exit 1; }
echo "postgres://$user@127.0.0.1:$port/postgres"
cat "$dir/pgbouncer.pid"
echo "$dir"
