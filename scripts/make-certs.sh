#!/usr/bin/env bash
# Makes a throwaway CA and certificates for local mutual-TLS testing.
#
#   scripts/make-certs.sh [OUT_DIR] [NAME ...]
#
# OUT_DIR defaults to data/certs; NAMEs default to node1 .. node5 and ctl.
# For each NAME it writes NAME.pem and NAME-key.pem, signed by ca.pem
# (ca-key.pem is kept beside it so more names can be added later: the CA is
# reused when OUT_DIR already has one). Every certificate is valid for
# server and client use, for the names localhost, NAME and the address
# 127.0.0.1, plus EXTRA_SANS (e.g. "DNS:deckhand-0.deckhand,IP:10.0.0.5").
# A NAME of the form node<ID> also gets the URI SAN deckhand://node/<ID>:
# with TLS, nodes accept a heartbeat or Raft message claiming node ID only
# from a certificate that names it, and a node refuses to start with a
# certificate naming another id. Other names (ctl) name no node.
#
# Point each node at its files:
#   [security]
#   tls_cert = "data/certs/node1.pem"
#   tls_key  = "data/certs/node1-key.pem"
#   tls_ca   = "data/certs/ca.pem"
# and ctl at the ctl certificate:
#   deckhand ctl --ca data/certs/ca.pem --cert data/certs/ctl.pem --key data/certs/ctl-key.pem status
#
# These are for testing: keys are unencrypted and the CA lives next to them.
set -euo pipefail

out=${1:-data/certs}
shift || true
names=("$@")
if [ ${#names[@]} -eq 0 ]; then
  names=(node1 node2 node3 node4 node5 ctl)
fi
days=${DAYS:-30}
command -v openssl >/dev/null || { echo "make-certs.sh: openssl is required (apt-get install openssl)" >&2; exit 2; }
for n in "${names[@]}"; do
  case "$n" in
    ""|*[!A-Za-z0-9._-]*) echo "make-certs.sh: bad name '$n' (letters, digits, '.', '_', '-')" >&2; exit 2;;
  esac
done

mkdir -p "$out"
chmod 700 "$out"
if [ ! -f "$out/ca.pem" ] || [ ! -f "$out/ca-key.pem" ]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -keyout "$out/ca-key.pem" -out "$out/ca.pem" -days "$days" \
    -subj "/CN=deckhand test CA" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
  echo "made CA $out/ca.pem"
fi

for n in "${names[@]}"; do
  sans="DNS:localhost,DNS:$n,IP:127.0.0.1${EXTRA_SANS:+,$EXTRA_SANS}"
  if [[ "$n" =~ ^node([0-9]+)$ ]]; then
    sans="$sans,URI:deckhand://node/${BASH_REMATCH[1]}"
  fi
  ext=$(mktemp)
  printf 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=%s\n' "$sans" >"$ext"
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -keyout "$out/$n-key.pem" -out "$out/$n.csr" -subj "/CN=$n" 2>/dev/null
  openssl x509 -req -in "$out/$n.csr" -CA "$out/ca.pem" -CAkey "$out/ca-key.pem" \
    -CAcreateserial -out "$out/$n.pem" -days "$days" -extfile "$ext" 2>/dev/null
  rm -f "$out/$n.csr" "$ext"
  chmod 600 "$out/$n-key.pem"
  echo "made $out/$n.pem ($sans)"
done
