# Shared helpers of scripts/run, scripts/test and scripts/bench. Sourced, not executed.
# Everything the project needs is installed or started from here, so a fresh machine
# needs only Rust, a C compiler and PostgreSQL.

FLOWLINE_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
FLOWLINE_CACHE="${FLOWLINE_CACHE:-$HOME/.cache/flowline}"
TANSU_VERSION=0.6.0

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Prints the path of a tansu $TANSU_VERSION binary, installing it from crates.io if needed
# (its default features have no storage engine, hence the explicit features).
ensure_tansu() {
  local bin
  if [ -n "${TANSU_BIN:-}" ]; then echo "$TANSU_BIN"; return; fi
  bin="$(command -v tansu || true)"
  if [ -n "$bin" ] && "$bin" --version 2>/dev/null | grep -q " $TANSU_VERSION\$"; then echo "$bin"; return; fi
  bin="$FLOWLINE_CACHE/tansu-$TANSU_VERSION/bin/tansu"
  if [ ! -x "$bin" ]; then
    say "installing tansu $TANSU_VERSION (a Kafka-protocol broker; about 10 minutes, once)"
    cargo install tansu --version "$TANSU_VERSION" --locked --features dynostore,libsql \
      --root "$FLOWLINE_CACHE/tansu-$TANSU_VERSION" >&2 || die "could not install tansu"
  fi
  echo "$bin"
}

# A free TCP port on 127.0.0.1.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_for_port() { # port seconds what
  local i
  for ((i = 0; i < $2 * 10; i++)); do port_open "$1" && return 0; sleep 0.1; done
  die "$3 did not start listening on 127.0.0.1:$1 within $2 s"
}

# start_broker PORT DATA_DIR LOG: starts tansu with durable sqlite storage; sets BROKER_PID.
start_broker() {
  local port=$1 dir=$2 log=$3 tansu
  tansu="$(ensure_tansu)"
  port_open "$port" && die "port $port is taken; set KAFKA_BROKERS to use a running Kafka instead"
  mkdir -p "$dir"
  # The sqlite path is relative to the working directory.
  (cd "$dir" && exec "$tansu" broker --cluster-id flowline \
      --listener-url "tcp://127.0.0.1:$port" --advertised-listener-url "tcp://127.0.0.1:$port" \
      --storage-engine sqlite://tansu.db >"$log" 2>&1) &
  BROKER_PID=$!
  wait_for_port "$port" 30 "the tansu broker (log: $log)"
}

# Stops a process and waits for it (tansu may take seconds to release its port).
stop_pid() {
  local pid=$1
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
}

# Makes sure PostgreSQL answers at $DATABASE_URL (default: the local server), starting an
# installed but stopped local cluster.
ensure_postgres() {
  local url="${1:-postgres://postgres@127.0.0.1:5432/postgres}"
  command -v pg_isready >/dev/null || die "PostgreSQL client tools are missing: apt-get install postgresql (or set DATABASE_URL to a reachable server and install postgresql-client)"
  pg_isready -q -d "$url" && return 0
  if command -v pg_ctlcluster >/dev/null && [ -d /etc/postgresql ]; then
    local version
    version="$(ls /etc/postgresql | sort -V | tail -n 1)"
    say "starting the local PostgreSQL $version cluster"
    pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
    for _ in $(seq 1 50); do pg_isready -q -d "$url" && return 0; sleep 0.2; done
  fi
  die "PostgreSQL is not reachable at $url: install it (apt-get install postgresql) and start it, or set DATABASE_URL"
}

# Starts the local Redis if it is installed and stopped (used by later features; not fatal).
ensure_redis() {
  command -v redis-cli >/dev/null || return 0
  redis-cli -u "${REDIS_URL:-redis://127.0.0.1:6379}" ping >/dev/null 2>&1 && return 0
  command -v redis-server >/dev/null || return 0
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no >/dev/null || true
}

# Starts a throw-away broker on a free port unless KAFKA_BROKERS is set, exports
# KAFKA_BROKERS, and removes it all on exit.
start_scratch_broker() {
  BROKER_PID=""
  SCRATCH="$(mktemp -d)"
  trap 'stop_pid "$BROKER_PID"; rm -rf "$SCRATCH"' EXIT
  if [ -z "${KAFKA_BROKERS:-}" ]; then
    local port
    port="$(free_port)"
    start_broker "$port" "$SCRATCH/tansu" "$SCRATCH/tansu.log"
    export KAFKA_BROKERS="127.0.0.1:$port"
    say "tansu broker on $KAFKA_BROKERS (sqlite storage)"
  fi
}

# Makes the Python venv of the test clients ($FLOWLINE_CACHE/venv) with the pinned packages of
# tests/clients/python/requirements.txt (reinstalled when that file changes) and exports
# FLOWLINE_PYTHON, its interpreter.
ensure_python_venv() {
  local venv="$FLOWLINE_CACHE/venv" requirements="$FLOWLINE_ROOT/tests/clients/python/requirements.txt" hash
  command -v python3 >/dev/null || die "python3 is missing: apt-get install python3 python3-venv"
  hash="$(sha256sum "$requirements" | cut -d' ' -f1)"
  if [ ! -x "$venv/bin/python" ]; then
    say "creating the Python venv of the test clients in $venv"
    python3 -m venv "$venv" || die "could not create $venv: apt-get install python3-venv"
  fi
  if [ "$(cat "$venv/.requirements.sha256" 2>/dev/null)" != "$hash" ]; then
    say "installing the Python test clients (tests/clients/python/requirements.txt)"
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements" >&2 ||
      die "pip could not install $requirements"
    echo "$hash" >"$venv/.requirements.sha256"
  fi
  export FLOWLINE_PYTHON="$venv/bin/python"
}

# Installs the npm GraphQL clients the system tests drive (tests/clients/js, versions
# pinned by its package-lock.json) when they are missing or older than the lock; npm's
# download cache lives under $FLOWLINE_CACHE.
ensure_js_clients() {
  local dir="$FLOWLINE_ROOT/tests/clients/js"
  command -v npm >/dev/null || die "node and npm are missing (Node 20+): apt-get install nodejs npm"
  if [ ! -f "$dir/node_modules/.package-lock.json" ] || [ "$dir/package-lock.json" -nt "$dir/node_modules/.package-lock.json" ]; then
    say "installing the npm test clients (npm ci in tests/clients/js)"
    (cd "$dir" && npm ci --no-audit --no-fund --cache "$FLOWLINE_CACHE/npm") >&2 || die "npm ci failed in $dir"
  fi
}

# Installs the npm MCP servers that the mcp_tool tests and `scripts/bench mcp` call
# (tests/mcp-servers, versions pinned by its package-lock.json) when they are missing or
# older than the lock.
ensure_mcp_servers() {
  local dir="$FLOWLINE_ROOT/tests/mcp-servers"
  command -v npm >/dev/null || die "node and npm are missing (Node 20+): apt-get install nodejs npm"
  if [ ! -f "$dir/node_modules/.package-lock.json" ] || [ "$dir/package-lock.json" -nt "$dir/node_modules/.package-lock.json" ]; then
    say "installing the npm MCP servers (npm ci in tests/mcp-servers)"
    (cd "$dir" && npm ci --no-audit --no-fund --cache "$FLOWLINE_CACHE/npm") >&2 || die "npm ci failed in $dir"
  fi
}
