#!/usr/bin/env bash
# Fuzzes both run modes against the OpenAPI documents they serve, with
# schemathesis (v4, `pip install schemathesis`): every operation gets
# schema-valid requests (and the coverage phase's edge cases), and each
# answer must be no server error, a documented status, valid against the
# documented schema, and no refusal of a schema-valid request
# (positive_data_acceptance: 400/422 on valid data means the document
# does not state a constraint the server enforces). Exits non-zero on any
# violation.
#
#   examples/ecommerce/tools/schemathesis.sh [local|distributed|both]
#
#   ECOMMERCE_BIN=path        the binary (default: cargo build, debug)
#   ST_MAX_EXAMPLES=N         examples per operation (default 8)
#   ECOMMERCE_DATABASE_URL, ECOMMERCE_NATS_URL   distributed mode's servers
#                             (default: 127.0.0.1's PostgreSQL and NATS)
#
# One process: `ecommerce serve-local`, a customer token from register +
# login for the customer operations and the printed operator token for
# /admin and /analytics (one process has no key file to mint one token with
# every scope). Distributed: one process per service on free ports, schemas
# and subjects under a fresh prefix, identity's key in a temp file so
# `ecommerce token` mints a token with every scope; the gateway's document
# and the internal services' own documents (inventory, payments, identity's
# client-credentials grant) are fuzzed. The event streams (`.../events`)
# never end, so they are left to tests/openapi.rs.
set -euo pipefail

mode="${1:-both}"
case "$mode" in local | distributed | both) ;; *)
  echo "usage: $0 [local|distributed|both]" >&2
  exit 2
  ;;
esac

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../../.." && pwd)"
work="$(mktemp -d "${TMPDIR:-/tmp}/ecommerce-schemathesis.XXXXXX")"
pids=()
pg_prefix=""
stop() {
  if ((${#pids[@]})); then
    kill -TERM "${pids[@]}" 2>/dev/null || true
    wait "${pids[@]}" 2>/dev/null || true
  fi
  # Leave no schemas behind (the services have stopped: no locks held).
  if [[ -n "$pg_prefix" ]] && command -v psql >/dev/null; then
    psql "$ECOMMERCE_DATABASE_URL" -qAt -c "SELECT nspname FROM pg_namespace WHERE nspname LIKE '${pg_prefix}%'" |
      while read -r schema; do PGOPTIONS=--client-min-messages=warning psql "$ECOMMERCE_DATABASE_URL" -q -c "DROP SCHEMA \"$schema\" CASCADE"; done || true
  fi
  rm -rf "$work"
}
trap stop EXIT

command -v st >/dev/null || {
  echo "schemathesis missing: pip install schemathesis" >&2
  exit 1
}
if [[ -z "${ECOMMERCE_BIN:-}" ]]; then
  (cd "$root" && cargo build -p ecommerce --bin ecommerce --quiet)
  # A copy: the shared target dir may be rebuilt while this runs.
  cp "${CARGO_TARGET_DIR:-$root/target}/debug/ecommerce" "$work/ecommerce"
  ECOMMERCE_BIN="$work/ecommerce"
fi

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_ready() { # url log
  for _ in $(seq 1 300); do
    curl -fsS -o /dev/null "$1/ready" 2>/dev/null && return 0
    sleep 0.2
  done
  echo "not ready: $1; log:" >&2
  tail -n 30 "$2" >&2
  return 1
}

# The fuzzer injects faults too (the /admin routes): a saga stuck behind
# them ends at its deadline, and `POST /orders` answers 202 after
# waiting it out plus 5 s; a short deadline keeps that under the request
# timeout below.
export ECOMMERCE_SAGA_DEADLINE="${ECOMMERCE_SAGA_DEADLINE:-3s}"

checks=not_a_server_error,status_code_conformance,response_schema_conformance,positive_data_acceptance
# PUT /admin/flags/{key} takes a whole flagd definition whose validity is
# cross-field (the default variant must be one of the variants, targeting
# must name them), which no JSON Schema states: it is fuzzed with every
# check but positive_data_acceptance, on its own (one process; the
# gateway's document does not route it).
whole_flag='^/api/v1/admin/flags/\{key\}$'
checks_whole_flag=not_a_server_error,status_code_conformance,response_schema_conformance
failed=0
# The event streams never end (one regex: a second flag would replace it).
streams='/events$'
fuzz() { # base-url doc-url token [st args...]
  local base="$1" doc="$2" token="$3"
  shift 3
  echo "--- st run $doc $*"
  if ! st run "$doc" --url "$base" --checks "$checks" \
    --max-examples "${ST_MAX_EXAMPLES:-8}" --seed 14 --request-timeout 20 \
    --header "Authorization: Bearer $token" --no-color "$@"; then
    failed=1
  fi
}

customer_token() { # base-url
  local creds='{"email":"fuzzer@example.com","password":"fuzzer password"}'
  curl -fsS -o /dev/null -H 'content-type: application/json' -d "$creds" "$1/api/v1/identity/register"
  curl -fsS -H 'content-type: application/json' -d "$creds" "$1/api/v1/identity/login" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])'
}

run_local() {
  local port url log="$work/local.log"
  port="$(free_port)"
  url="http://127.0.0.1:$port"
  ECOMMERCE_ADDR="127.0.0.1:$port" "$ECOMMERCE_BIN" serve-local --data-dir "$work/local" >"$log" 2>&1 &
  pids+=("$!")
  wait_ready "$url" "$log"
  local ops customer
  ops="$(sed -n 's/^OPS //p' "$log")"
  customer="$(customer_token "$url")"
  echo "=== one process on $url"
  fuzz "$url" "$url/api/v1/openapi.json" "$customer" --exclude-path-regex "^/api/v1/(admin|analytics)/|$streams"
  fuzz "$url" "$url/api/v1/openapi.json" "$ops" --include-path-regex '^/api/v1/(admin|analytics)/' --exclude-path-regex "$streams|$whole_flag"
  checks="$checks_whole_flag" fuzz "$url" "$url/api/v1/openapi.json" "$ops" --include-path-regex "$whole_flag"
}

run_distributed() {
  local prefix="st$$_" services=(identity catalog inventory payments orders shipping analytics gateway)
  declare -A ports
  local service
  for service in "${services[@]}"; do ports[$service]="$(free_port)"; done
  export ECOMMERCE_DATABASE_URL="${ECOMMERCE_DATABASE_URL:-postgres://postgres:postgres@127.0.0.1:5432/test}"
  export ECOMMERCE_NATS_URL="${ECOMMERCE_NATS_URL:-nats://127.0.0.1:4222}"
  export ECOMMERCE_SCHEMA_PREFIX="$prefix" ECOMMERCE_SIGNING_KEY_FILE="$work/identity-key.pem"
  pg_prefix="$prefix"
  export ECOMMERCE_DRAIN=10ms
  for service in "${services[@]}"; do
    if [[ "$service" != gateway ]]; then
      export "ECOMMERCE_${service^^}_URL=http://127.0.0.1:${ports[$service]}"
    fi
  done
  local secret
  secret="$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')"
  for service in "${services[@]}"; do
    local env_extra=("ECOMMERCE_LISTEN=127.0.0.1:${ports[$service]}")
    [[ "$service" == gateway ]] && env_extra+=("ECOMMERCE_HEALTH_LISTEN=127.0.0.1:$(free_port)")
    [[ "$service" == identity || "$service" == orders ]] && env_extra+=("ECOMMERCE_ORDERS_CLIENT_SECRET=$secret")
    # Identity writes the key the others' JWKS clients and `token` read.
    env "${env_extra[@]}" "$ECOMMERCE_BIN" serve --service "$service" \
      >"$work/$service.log" 2>&1 &
    pids+=("$!")
    [[ "$service" == identity ]] && wait_ready "http://127.0.0.1:${ports[identity]}" "$work/identity.log"
  done
  for service in "${services[@]}"; do
    wait_ready "http://127.0.0.1:${ports[$service]}" "$work/$service.log"
  done
  local token
  token="$("$ECOMMERCE_BIN" token --subject fuzzer \
    --scope "orders:read orders:write catalog:read analytics:read ops:admin inventory:write payments:write")"
  echo "=== distributed, schemas ${prefix}*"
  local gateway="http://127.0.0.1:${ports[gateway]}"
  fuzz "$gateway" "$gateway/api/v1/openapi.json" "$token" --exclude-path-regex "$streams"
  for service in inventory payments; do
    local url="http://127.0.0.1:${ports[$service]}"
    fuzz "$url" "$url/api/v1/openapi.json" "$token"
  done
  local identity="http://127.0.0.1:${ports[identity]}"
  fuzz "$identity" "$identity/api/v1/openapi.json" "$token" --include-path /api/v1/identity/token
}

[[ "$mode" == distributed ]] || run_local
[[ "$mode" == local ]] || run_distributed
if ((failed)); then
  echo "schemathesis found violations (see above)" >&2
  exit 1
fi
echo "schemathesis: no violations"
