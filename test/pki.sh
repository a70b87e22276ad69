#!/usr/bin/env bash
#
# pki.sh OUTDIR
#
# Generates the complete test PKI used by the wxpay_signplan tests and the
# WeChat Pay simulator (test/sim/simulator.js) into OUTDIR, with the openssl
# command-line tool (OpenSSL 3.0 or later).  Everything is regenerated on each
# run.  Every file is made world-readable because the tests run PostgreSQL as
# another OS user.  On success the only output is "pki: OUTDIR".
#
# Files:
#   ca.key ca.crt                     private test CA (10 years)
#   other_ca.key other_ca.crt         a second CA that signed nothing we serve
#   server.key server.crt             TLS server cert, localhost + 127.0.0.1
#   server_expired.key/.crt           same SANs, expired in 2020
#   server_otherhost.key/.crt         SAN DNS:wrong.example.com only
#   merchant.key                      merchant API key, PKCS#8
#   merchant_pkcs1.key                same key, PKCS#1
#   merchant_encrypted.key            same key, encrypted PKCS#8, pass "secret"
#   merchant.crt merchant_serial.txt  merchant certificate and its serial
#   wrong_merchant.key                an unrelated PKCS#8 key
#   merchant_1024.key                 a 1024-bit key ("too small" checks)
#   platform_pub.key platform_pub.pem platform key pair for public-key mode
#   pub_key_id.txt                    its key id
#   platform_cert{,2,_expired}.key/.crt and *_serial.txt
#                                     platform certificates (certificate mode)
#   apiv3_key.txt                     32 random alphanumeric characters
#
set -euo pipefail

if [ $# -ne 1 ] || [ -z "$1" ]; then
    echo "usage: $0 OUTDIR" >&2
    exit 2
fi

OUT=$1
mkdir -p "$OUT"
umask 022

WORK=$(mktemp -d "${TMPDIR:-/tmp}/wxpay-pki.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
LOG=$WORK/openssl.log
: >"$LOG"

# Run openssl quietly; show its output only if it fails.
ossl() {
    if ! openssl "$@" >>"$LOG" 2>&1; then
        echo "pki.sh: openssl $1 failed:" >&2
        cat "$LOG" >&2
        exit 1
    fi
}

# A random positive 20-byte serial in hex: the top nibble is forced to 1..7 so
# that the top bit is clear and the serial always prints as 40 hex digits.
rand_serial() {
    local hex first
    hex=$(openssl rand -hex 20)
    first=$(( (16#${hex:0:1} % 7) + 1 ))
    echo "${first}${hex:1}" | tr 'a-f' 'A-F'
}

# Format a date for "openssl ca -startdate/-enddate" (GeneralizedTime, UTC).
gdate() {
    date -u -d "$1" +%Y%m%d%H%M%SZ
}

# ---------------------------------------------------------------------------
# openssl configuration shared by "req" and "ca".
CNF=$WORK/openssl.cnf
cat >"$CNF" <<EOF
[ req ]
distinguished_name = req_dn
prompt             = no
string_mask        = utf8only

[ req_dn ]
CN = unused

[ ca ]
default_ca = test_ca

[ test_ca ]
dir             = $WORK/ca
database        = \$dir/index.txt
new_certs_dir   = \$dir/newcerts
serial          = \$dir/serial
certificate     = $OUT/ca.crt
private_key     = $OUT/ca.key
default_md      = sha256
policy          = policy_any
unique_subject  = no
copy_extensions = none
email_in_dn     = no
preserve        = yes

[ policy_any ]
countryName            = optional
stateOrProvinceName    = optional
localityName           = optional
organizationName       = optional
organizationalUnitName = optional
commonName             = supplied

[ ext_ca ]
basicConstraints       = critical, CA:true
keyUsage               = critical, keyCertSign, cRLSign
subjectKeyIdentifier   = hash

[ ext_server ]
basicConstraints       = critical, CA:false
keyUsage               = critical, digitalSignature, keyEncipherment
extendedKeyUsage       = serverAuth
subjectKeyIdentifier   = hash
authorityKeyIdentifier = keyid
subjectAltName         = DNS:localhost, IP:127.0.0.1

[ ext_otherhost ]
basicConstraints       = critical, CA:false
keyUsage               = critical, digitalSignature, keyEncipherment
extendedKeyUsage       = serverAuth
subjectKeyIdentifier   = hash
authorityKeyIdentifier = keyid
subjectAltName         = DNS:wrong.example.com

[ ext_signing ]
basicConstraints       = critical, CA:false
keyUsage               = critical, digitalSignature, nonRepudiation, keyEncipherment
subjectKeyIdentifier   = hash
authorityKeyIdentifier = keyid
EOF
mkdir -p "$WORK/ca/newcerts"
: >"$WORK/ca/index.txt"

# ---------------------------------------------------------------------------
# Keys.  Generated in parallel: this is most of the run time.
rsa_key() {
    # rsa_key FILE BITS -> PKCS#8 PEM
    openssl genpkey -algorithm RSA -pkeyopt "rsa_keygen_bits:$2" -out "$1" 2>>"$WORK/keygen.log"
}

KEYS2048="ca other_ca server server_expired server_otherhost merchant wrong_merchant
          platform_pub platform_cert platform_cert2 platform_cert_expired"
pids=()
for k in $KEYS2048; do
    rsa_key "$OUT/$k.key" 2048 &
    pids+=($!)
done
rsa_key "$OUT/merchant_1024.key" 1024 &
pids+=($!)
for p in "${pids[@]}"; do
    if ! wait "$p"; then
        echo "pki.sh: key generation failed:" >&2
        cat "$WORK/keygen.log" >&2
        exit 1
    fi
done

# ---------------------------------------------------------------------------
# The two CAs (self-signed, 10 years).
ossl req -config "$CNF" -new -x509 -key "$OUT/ca.key" -sha256 -days 3650 \
    -subj "/O=wxpay_signplan tests/CN=wxpay_signplan test CA" \
    -extensions ext_ca -set_serial "0x$(rand_serial)" -out "$OUT/ca.crt"
ossl req -config "$CNF" -new -x509 -key "$OUT/other_ca.key" -sha256 -days 3650 \
    -subj "/O=wxpay_signplan tests/CN=wxpay_signplan other CA" \
    -extensions ext_ca -set_serial "0x$(rand_serial)" -out "$OUT/other_ca.crt"

# issue NAME SUBJECT EXTENSIONS START END
#   Signs NAME.key with the test CA into NAME.crt, with a random explicit
#   serial and exact validity dates ("openssl ca" can back-date, which
#   "openssl x509 -req" in OpenSSL 3.0 cannot).  Prints the serial.
issue() {
    local name=$1 subj=$2 ext=$3 start=$4 end=$5 serial
    serial=$(rand_serial)
    echo "$serial" >"$WORK/ca/serial"
    ossl req -config "$CNF" -new -key "$OUT/$name.key" -subj "$subj" -out "$WORK/$name.csr"
    ossl ca -config "$CNF" -batch -notext -in "$WORK/$name.csr" -out "$OUT/$name.crt" \
        -extensions "$ext" -startdate "$start" -enddate "$end"
}

# Write NAME.crt's serial (upper-case hex, as openssl prints it) to FILE.
serial_of() {
    local s
    s=$(openssl x509 -in "$OUT/$1.crt" -noout -serial)
    s=${s#serial=}
    printf '%s\n' "$s" | tr 'a-f' 'A-F' >"$2"
}

NOW_MINUS_1D=$(gdate "1 day ago")

# TLS server certificates.
issue server "/CN=localhost" ext_server "$NOW_MINUS_1D" "$(gdate "825 days")"
issue server_expired "/CN=localhost" ext_server 20200101000000Z 20200201000000Z
issue server_otherhost "/CN=wrong.example.com" ext_otherhost "$NOW_MINUS_1D" "$(gdate "825 days")"

# Merchant API key in its various encodings, and its certificate.
ossl pkey -in "$OUT/merchant.key" -traditional -out "$OUT/merchant_pkcs1.key"
ossl pkcs8 -topk8 -v2 aes-256-cbc -in "$OUT/merchant.key" -passout pass:secret \
    -out "$OUT/merchant_encrypted.key"
issue merchant "/O=wxpay_signplan test merchant/OU=1900000001/CN=1900000001" ext_signing \
    "$NOW_MINUS_1D" "$(gdate "5 years")"
serial_of merchant "$OUT/merchant_serial.txt"

# Public-key mode platform key.
ossl pkey -in "$OUT/platform_pub.key" -pubout -out "$OUT/platform_pub.pem"
echo "PUB_KEY_ID_0119000000012025112500000000000001" >"$OUT/pub_key_id.txt"

# Certificate mode platform certificates.
issue platform_cert "/O=Tenpay.com/OU=Tenpay.com CA Center/CN=Tenpay.com Test Platform 1" \
    ext_signing "$NOW_MINUS_1D" "$(gdate "5 years")"
serial_of platform_cert "$OUT/platform_cert_serial.txt"
issue platform_cert2 "/O=Tenpay.com/OU=Tenpay.com CA Center/CN=Tenpay.com Test Platform 2" \
    ext_signing "$NOW_MINUS_1D" "$(gdate "5 years")"
serial_of platform_cert2 "$OUT/platform_cert2_serial.txt"
issue platform_cert_expired "/O=Tenpay.com/OU=Tenpay.com CA Center/CN=Tenpay.com Test Platform Expired" \
    ext_signing 20200101000000Z 20210101000000Z
serial_of platform_cert_expired "$OUT/platform_cert_expired_serial.txt"

# APIv3 key: 32 random alphanumeric characters.
apiv3=$(openssl rand -base64 120 | tr -dc 'A-Za-z0-9')
if [ ${#apiv3} -lt 32 ]; then
    echo "pki.sh: could not generate the APIv3 key" >&2
    exit 1
fi
echo "${apiv3:0:32}" >"$OUT/apiv3_key.txt"

chmod 755 "$OUT"
chmod 644 "$OUT"/ca.key "$OUT"/ca.crt "$OUT"/other_ca.key "$OUT"/other_ca.crt \
    "$OUT"/server*.key "$OUT"/server*.crt "$OUT"/merchant*.key "$OUT"/merchant.crt \
    "$OUT"/merchant_serial.txt "$OUT"/wrong_merchant.key "$OUT"/platform_* \
    "$OUT"/pub_key_id.txt "$OUT"/apiv3_key.txt

echo "pki: $OUT"
