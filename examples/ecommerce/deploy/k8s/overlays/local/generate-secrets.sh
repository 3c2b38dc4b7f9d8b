#!/usr/bin/env sh
# Writes fresh random secrets for the local overlay into secrets/*.env (git
# ignores them), which kustomization.yaml's secretGenerator turns into the
# Secrets the base needs. Run once before `kubectl apply -k` on this
# directory; existing files are kept (the database's roles were made with
# them), `--force` replaces them all.
#
#   deploy/k8s/overlays/local/generate-secrets.sh [--force] [DIR]
#
# Production: do not use this; provide the same Secrets from your secret
# store (deploy/README.md, "Secrets").
set -eu

force=0
if [ "${1:-}" = "--force" ]; then force=1; shift; fi
dir="${1:-$(cd "$(dirname "$0")" && pwd)/secrets}"
mkdir -p "$dir"
chmod 700 "$dir"

if [ "$force" = 0 ] && [ -f "$dir/postgres.env" ]; then
  echo "secrets exist in $dir (use --force to replace them)"
  exit 0
fi

# 32 random bytes, hex: 64 characters, safe in URLs.
rand() { od -An -N32 -tx1 /dev/urandom | tr -d ' \n'; }

umask 077
services="identity catalog inventory payments orders shipping analytics"
{
  echo "POSTGRES_PASSWORD=$(rand)"
  for s in $services; do
    pw=$(rand)
    upper=$(echo "$s" | tr '[:lower:]' '[:upper:]')
    echo "${upper}_DB_PASSWORD=$pw"
    echo "ECOMMERCE_DATABASE_URL=postgres://$s:$pw@postgres:5432/ecommerce" >"$dir/$s.env"
  done
} >"$dir/postgres.env"
{
  for s in orders shipping analytics; do
    pw=$(rand)
    upper=$(echo "$s" | tr '[:lower:]' '[:upper:]')
    echo "${upper}_NATS_PASSWORD=$pw"
    echo "ECOMMERCE_NATS_URL=nats://$s:$pw@nats:4222" >>"$dir/$s.env"
  done
} >"$dir/nats.env"
echo "ECOMMERCE_ORDERS_CLIENT_SECRET=$(rand)" >"$dir/client-orders.env"
echo "wrote $(ls "$dir" | wc -l | tr -d ' ') secret files to $dir"
