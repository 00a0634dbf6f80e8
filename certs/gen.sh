#!/usr/bin/env bash
# Development PKI for the water tower: a CA, a broker certificate, and client certificates
# for the gateway (ISBBasin) and the console (ISBRemote). EC P-256 keys throughout.
#
#   bash certs/gen.sh OUTDIR [--broker-dns NAME]... [--broker-ip IP]... [--days N]
#                            [--expired-broker] [--key-format pkcs8|sec1|pkcs1-rsa]
#
# OUTDIR gets ca.crt, ca.key, broker.crt, broker.key, gateway.crt, gateway.key,
# console.crt, console.key. The broker certificate always names localhost and 127.0.0.1;
# add the names your clients use with --broker-dns / --broker-ip. --expired-broker makes a
# broker certificate that expired yesterday (for tests); --key-format picks the encoding of
# the gateway's key (PKCS#8 by default; SEC1, or an RSA key in PKCS#1).
#
# Private keys are written only to OUTDIR (mode 600); never commit them. See certs/README.md.
set -euo pipefail

out="${1:?usage: gen.sh OUTDIR [options]}"
shift
dns=(localhost)
ips=(127.0.0.1)
days=825
expired=0
key_format=pkcs8
while [ $# -gt 0 ]; do
  case "$1" in
    --broker-dns) dns+=("$2"); shift 2 ;;
    --broker-ip) ips+=("$2"); shift 2 ;;
    --days) days="$2"; shift 2 ;;
    --expired-broker) expired=1; shift ;;
    --key-format) key_format="$2"; shift 2 ;;
    *) echo "gen.sh: unknown option $1" >&2; exit 2 ;;
  esac
done

mkdir -p "$out"
cd "$out"
umask 077

ec_key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1"; }

# The CA.
ec_key ca.key
openssl req -x509 -new -key ca.key -sha256 -days "$((days + 365))" -subj "/CN=fieldgate development CA" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
  -out ca.crt

san=""
for d in "${dns[@]}"; do san="${san:+$san,}DNS:$d"; done
for i in "${ips[@]}"; do san="${san:+$san,}IP:$i"; done

# sign NAME CN EXT: a certificate for NAME.key, signed by the CA.
sign() {
  local name="$1" cn="$2" ext="$3"
  openssl req -new -key "$name.key" -subj "/CN=$cn" -out "$name.csr"
  printf '%b\n' "$ext" > "$name.ext"
  if [ "$name" = broker ] && [ "$expired" = 1 ]; then
    # openssl x509 cannot back-date; openssl ca can.
    mkdir -p ca-db && : > ca-db/index.txt && echo 1000 > ca-db/serial
    cat > ca-db/ca.cnf <<CNF
[ca]
default_ca = dev
[dev]
database = ca-db/index.txt
serial = ca-db/serial
new_certs_dir = ca-db
default_md = sha256
policy = any
copy_extensions = none
[any]
commonName = supplied
CNF
    openssl ca -batch -config ca-db/ca.cnf -cert ca.crt -keyfile ca.key -in "$name.csr" \
      -startdate "$(date -u -d '-10 days' +%y%m%d%H%M%SZ)" \
      -enddate "$(date -u -d '-1 day' +%y%m%d%H%M%SZ)" \
      -extfile "$name.ext" -out "$name.crt" 2>/dev/null
    rm -rf ca-db
  else
    openssl x509 -req -in "$name.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -sha256 \
      -days "$days" -extfile "$name.ext" -out "$name.crt" 2>/dev/null
  fi
  rm -f "$name.csr" "$name.ext"
}

ec_key broker.key
sign broker broker "subjectAltName=$san\nextendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature"

case "$key_format" in
  pkcs8) ec_key gateway.key ;;
  sec1) openssl ecparam -name prime256v1 -genkey -noout -out gateway.key ;;
  pkcs1-rsa) openssl genrsa -traditional -out gateway.key 2048 2>/dev/null ;;
  *) echo "gen.sh: --key-format pkcs8, sec1 or pkcs1-rsa" >&2; exit 2 ;;
esac
sign gateway ISBBasin "extendedKeyUsage=clientAuth\nkeyUsage=critical,digitalSignature"

ec_key console.key
sign console ISBRemote "extendedKeyUsage=clientAuth\nkeyUsage=critical,digitalSignature"

rm -f ca.srl
chmod 644 ./*.crt
echo "certificates in $out: ca.crt broker.crt gateway.crt console.crt (keys: *.key)"
