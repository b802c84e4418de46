#!/bin/sh
# Makes a private CA, a server certificate and a client certificate for
# tenantd's TLS and mutual TLS (README.md, "TLS and mutual TLS", shows these
# same commands; test/tls.test.ts runs this script and checks they agree).
#
#   scripts/make-certs.sh [DIR]     (default: ./certs)
#
# SERVER_NAMES: the names clients dial, as subjectAltName entries; the
# default covers a local server and the compose cluster's nodes and proxy.
set -eu
DIR=${1:-certs}
SERVER_NAMES=${SERVER_NAMES:-DNS:localhost,IP:127.0.0.1,IP:::1,DNS:proxy,DNS:tenantd,DNS:tenantd-1,DNS:tenantd-2,DNS:tenantd-3}
mkdir -p "$DIR"
cd "$DIR"
umask 077
# make-certs:begin
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 825 -subj "/CN=tenantd CA" -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" -keyout ca.key -out ca.crt
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=tenantd" -keyout server.key -out server.csr
printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth\n' "$SERVER_NAMES" > server.ext
openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 825 -extfile server.ext -out server.crt
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=tenantd-client" -keyout client.key -out client.csr
printf 'extendedKeyUsage=clientAuth\n' > client.ext
openssl x509 -req -in client.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 825 -extfile client.ext -out client.crt
# make-certs:end
rm -f server.csr client.csr server.ext client.ext
# Certificates are public; keys stay 0600 (umask above).
chmod 644 ca.crt server.crt client.crt
