#!/bin/bash
# Makes throw-away TLS credentials for tests, in QEMU's layout, with the
# openssl command line (nothing is ever committed):
#   mkcreds.sh x509 DIR [NAME]   a CA and, signed by it, server-cert.pem /
#                                server-key.pem (for 127.0.0.1, 127.0.0.2,
#                                ::1, localhost and NAME) and client-cert.pem /
#                                client-key.pem (CN=pmigrate-source); and
#                                DIR/other/, the same CA with a client that
#                                is someone else (CN=other-source)
#   mkcreds.sh psk FILE [ID]     one identity:hexkey line (32 random bytes)
# Keys are P-256 (fast handshakes), valid for 2 days, files mode 0600.
set -eu
umask 077
kind=${1:?usage: mkcreds.sh x509 DIR [NAME] | psk FILE [ID]}
out=${2:?usage: mkcreds.sh x509 DIR [NAME] | psk FILE [ID]}

if [ "$kind" = psk ]; then
	printf '%s:%s\n' "${3:-pmigrate}" "$(openssl rand -hex 32)" >"$out"
	exit 0
fi
[ "$kind" = x509 ] || { echo "mkcreds.sh: unknown kind '$kind'" >&2; exit 2; }
name=${3:-}
mkdir -p "$out"
cd "$out"
key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

key ca-key.pem
openssl req -x509 -new -key ca-key.pem -out ca-cert.pem -days 2 -subj "/O=pmigrate tests/CN=pmigrate test CA" \
	-addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null

# sign CN EXT OUT: a certificate for OUT-key.pem signed by the CA.
sign() {
	key "$3-key.pem"
	openssl req -new -key "$3-key.pem" -subj "/O=pmigrate tests/CN=$1" -out "$3.csr" 2>/dev/null
	printf '%s\n' "$2" >"$3.ext"
	openssl x509 -req -in "$3.csr" -CA ca-cert.pem -CAkey ca-key.pem -CAcreateserial -days 2 \
		-extfile "$3.ext" -out "$3-cert.pem" 2>/dev/null
	rm -f "$3.csr" "$3.ext"
}
san="IP:127.0.0.1,IP:127.0.0.2,IP:::1,DNS:localhost${name:+,DNS:$name}"
sign "${name:-pmigrate-destination}" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth
subjectAltName=$san" server
sign pmigrate-source "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=clientAuth" client
sign other-source "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=clientAuth" other
mkdir -p other
mv other-cert.pem other/client-cert.pem
mv other-key.pem other/client-key.pem
cp ca-cert.pem other/
rm -f ca-cert.srl
