#!/usr/bin/env bash
# usage: API_PORT=16443 gen-certs.sh DIR
# Writes a throw-away CA, the API server's serving certificate, an admin client certificate
# (group system:masters), the ServiceAccount signing key pair and a kubeconfig into DIR.
set -euo pipefail
D=${1:?usage: gen-certs.sh DIR}; PORT=${API_PORT:-6443}; mkdir -p "$D"; cd "$D"
openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days 30 -keyout ca.key -out ca.crt -subj "/CN=mcpgate-test-ca" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
sign() { openssl req -newkey rsa:2048 -nodes -sha256 -keyout "$1.key" -out "$1.csr" -subj "$2" 2>/dev/null
         openssl x509 -req -sha256 -days 30 -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -out "$1.crt" \
           -extfile <(printf '%b' "$3") 2>/dev/null; rm -f "$1.csr"; }
sign apiserver "/CN=kube-apiserver" "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n"
sign admin "/O=system:masters/CN=mcpgate-test-admin" "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n"
openssl genrsa -out sa.key 2048 2>/dev/null; openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
b64() { base64 -w0 "$1"; }
cat > kubeconfig <<KC
apiVersion: v1
kind: Config
clusters:
- name: mcpgate-test
  cluster:
    server: https://127.0.0.1:${PORT}
    certificate-authority-data: $(b64 ca.crt)
users:
- name: admin
  user:
    client-certificate-data: $(b64 admin.crt)
    client-key-data: $(b64 admin.key)
contexts:
- name: mcpgate-test
  context: {cluster: mcpgate-test, user: admin}
current-context: mcpgate-test
KC
