#!/usr/bin/env bash
# Starts the distributed ecommerce system on this machine: one process per
# service against the local PostgreSQL and NATS JetStream, logs under a temp
# dir. Waits until every service is ready, prints the URLs, and stops them
# all on Ctrl-C or exit.
#
#   examples/ecommerce/deploy/run-local.sh            # build release, run
#   ECOMMERCE_SCHEMA_PREFIX=demo_ run-local.sh        # separate schemas/subjects
#   ECOMMERCE_SEED_STOCK=1000000 run-local.sh         # stock for load runs
#   ECOMMERCE_CONFIG=/path/to.toml run-local.sh       # another config file
#   run-local.sh --mtls                               # mTLS between services
#   ECOMMERCE_PROMETHEUS=0 run-local.sh               # without Prometheus
#
# --mtls makes a throw-away CA and one certificate per service
# (URI SAN spiffe://trellis/<service>) with openssl in the log dir, points
# the peers at https://, and checks readiness on each internal service's
# plain health port (its port + 1000); the gateway stays plain HTTP.
#
# When Debian's Prometheus is installed (apt-get install prometheus), it is
# started too, on 127.0.0.1:${PROMETHEUS_PORT:-9090}, scraping every service
# with the rules of observability/rules.yml (observability/prometheus.yml;
# data under the log dir). With --mtls the internal services' /metrics take
# client certificates only, so Prometheus scrapes the gateway alone.
#
# Every ECOMMERCE_* variable overrides the config file (src/config.rs).
set -euo pipefail

mtls=0
for arg in "$@"; do
  case "$arg" in
    --mtls) mtls=1 ;;
    *) echo "usage: $0 [--mtls]" >&2; exit 2 ;;
  esac
done

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../../.." && pwd)"
config="${ECOMMERCE_CONFIG:-$here/ecommerce.toml}"
services=(identity catalog inventory payments orders shipping analytics gateway)
declare -A ports=([gateway]=8080 [identity]=8081 [catalog]=8082 [inventory]=8083
  [payments]=8084 [orders]=8085 [shipping]=8086 [analytics]=8087)

if [[ -z "${ECOMMERCE_BIN:-}" ]]; then
  echo "building the release binary…"
  (cd "$root" && cargo build --release -p ecommerce --quiet)
  target="${CARGO_TARGET_DIR:-$root/target}"
  ECOMMERCE_BIN="$target/release/ecommerce"
fi

# Orders' client secret, shared by identity and orders only: fresh per run
# unless given (serve mode refuses short or committed secrets).
orders_client_secret="${ECOMMERCE_ORDERS_CLIENT_SECRET:-$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')}"
unset ECOMMERCE_ORDERS_CLIENT_SECRET

logs="$(mktemp -d "${TMPDIR:-/tmp}/ecommerce-logs.XXXXXX")"
pids=()
stop() {
  trap - EXIT INT TERM
  if ((${#pids[@]})); then
    echo
    echo "stopping ${#pids[@]} processes…"
    kill -TERM "${pids[@]}" 2>/dev/null || true
    wait "${pids[@]}" 2>/dev/null || true
  fi
  echo "logs kept in $logs"
}
trap stop EXIT
trap 'exit 130' INT TERM

# A CA and a certificate per service, valid two days, for --mtls.
make_pki() {
  local pki="$1" service
  mkdir -p "$pki"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj "/CN=ecommerce local ca" -keyout "$pki/ca.key" -out "$pki/ca.pem" 2>/dev/null
  for service in "${services[@]}"; do
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
      -subj "/CN=$service" -keyout "$pki/$service.key" -out "$pki/$service.csr" 2>/dev/null
    printf 'subjectAltName=URI:spiffe://trellis/%s,DNS:%s\nextendedKeyUsage=serverAuth,clientAuth\nbasicConstraints=CA:FALSE\n' \
      "$service" "$service" >"$pki/$service.ext"
    openssl x509 -req -in "$pki/$service.csr" -CA "$pki/ca.pem" -CAkey "$pki/ca.key" \
      -CAcreateserial -days 2 -extfile "$pki/$service.ext" -out "$pki/$service.crt" 2>/dev/null
  done
}

# Where each service's readiness is probed: with mTLS the internal ones
# answer plain HTTP only on their health port.
probe_port() {
  if ((mtls)) && [[ "$1" != gateway ]]; then
    echo $((ports[$1] + 1000))
  else
    echo "${ports[$1]}"
  fi
}

if ((mtls)); then
  make_pki "$logs/pki"
  export ECOMMERCE_TLS_CA="$logs/pki/ca.pem"
  for service in "${services[@]}"; do
    if [[ "$service" != gateway ]]; then
      export "ECOMMERCE_${service^^}_URL=https://127.0.0.1:${ports[$service]}"
    fi
  done
  echo "mTLS on: certificates in $logs/pki"
fi

# The data dir (identity's signing key) is relative to where we start.
cd "$here"
mkdir -p data
for service in "${services[@]}"; do
  tls_env=()
  if ((mtls)); then
    tls_env=("ECOMMERCE_TLS_CERT=$logs/pki/$service.crt" "ECOMMERCE_TLS_KEY=$logs/pki/$service.key")
  fi
  # Only identity (which checks it) and orders (which presents it) hold
  # orders' client secret.
  if [[ "$service" == identity || "$service" == orders ]]; then
    tls_env+=("ECOMMERCE_ORDERS_CLIENT_SECRET=$orders_client_secret")
  fi
  env "${tls_env[@]}" "$ECOMMERCE_BIN" serve --service "$service" --config "$config" \
    >"$logs/$service.log" 2>&1 &
  pids+=("$!")
  echo "started $service (pid $!, log $logs/$service.log)"
done

ready() { curl -fsS -o /dev/null "http://127.0.0.1:$1/ready" 2>/dev/null; }
deadline=$((SECONDS + 60))
for service in "${services[@]}"; do
  until ready "$(probe_port "$service")"; do
    for i in "${!pids[@]}"; do
      if ! kill -0 "${pids[$i]}" 2>/dev/null; then
        echo "${services[$i]} exited; its log:" >&2
        tail -n 30 "$logs/${services[$i]}.log" >&2
        exit 1
      fi
    done
    if ((SECONDS > deadline)); then
      echo "$service is not ready after 60 s; see $logs/$service.log" >&2
      exit 1
    fi
    sleep 0.2
  done
done

prometheus_url=""
prometheus_bin="$(command -v prometheus || true)"
if [[ "${ECOMMERCE_PROMETHEUS:-1}" != 0 && -n "$prometheus_bin" ]]; then
  prom_config="$here/observability/prometheus.yml"
  if ((mtls)); then
    # Only the gateway's internal port is plain HTTP.
    mkdir -p "$logs/prometheus-config"
    cp "$here/observability/rules.yml" "$logs/prometheus-config/"
    awk '/^scrape_configs:/ {print; print "  - job_name: gateway"; print "    static_configs:"; print "      - targets: [\"127.0.0.1:9080\"]"; exit} {print}' \
      "$prom_config" >"$logs/prometheus-config/prometheus.yml"
    prom_config="$logs/prometheus-config/prometheus.yml"
  fi
  prom_port="${PROMETHEUS_PORT:-9090}"
  "$prometheus_bin" --config.file="$prom_config" --storage.tsdb.path="$logs/prometheus" \
    --web.listen-address="127.0.0.1:$prom_port" --enable-feature=exemplar-storage \
    >"$logs/prometheus.log" 2>&1 &
  pids+=("$!")
  echo "started prometheus (pid $!, log $logs/prometheus.log)"
  prometheus_url="http://127.0.0.1:$prom_port"
  for _ in $(seq 1 50); do
    curl -fsS -o /dev/null "$prometheus_url/-/ready" 2>/dev/null && break
    sleep 0.2
  done
elif [[ -z "$prometheus_bin" ]]; then
  echo "prometheus not installed (apt-get install prometheus): not started"
fi

echo
echo "every service is ready:"
for service in "${services[@]}"; do
  if ((mtls)) && [[ "$service" != gateway ]]; then
    printf '  %-10s https://127.0.0.1:%s  (mTLS; probes on http://127.0.0.1:%s/ready)\n' \
      "$service" "${ports[$service]}" "$(probe_port "$service")"
  else
    if [[ "$service" == gateway ]]; then
      printf '  %-10s http://127.0.0.1:%s  (/ready; /metrics on :%s)\n' "$service" "${ports[$service]}" "$((ports[$service] + 1000))"
    else
      printf '  %-10s http://127.0.0.1:%s  (/ready /metrics)\n' "$service" "${ports[$service]}"
    fi
  fi
done
if [[ -n "$prometheus_url" ]]; then
  printf '  %-10s %s  (targets: %s/targets, alerts: %s/alerts)\n' prometheus "$prometheus_url" "$prometheus_url" "$prometheus_url"
fi
cat <<MSG

Public entry: http://127.0.0.1:8080/api/v1 (the gateway). Try:
  $ECOMMERCE_BIN load --url http://127.0.0.1:8080 --concurrency 16 --duration 10s
  curl -s http://127.0.0.1:8080/ready

Ctrl-C stops everything.
MSG
wait -n "${pids[@]}" || true
echo "a service exited; stopping the rest" >&2
