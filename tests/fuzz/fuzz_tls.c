/*
 * fuzz_tls: a real node's TLS ports (tls_port, tls_resp_port), fed what a
 * stranger may send before and instead of a TLS handshake: the node must
 * refuse it (an alert, or "this port speaks TLS" to a plain client) and
 * close, without a crash, a leak or a hang, and keep serving.
 *
 * Input: byte 0: bit 0 picks the RESP TLS port (else the native one);
 * bit 1 sends a real ClientHello first (made once by a client session), so
 * that the bytes after it reach the server's handshake in the middle;
 * bits 4..7 cut the rest into sends as the other network targets do. The
 * node's certificate is made at start (OpenSSL, in memory, written to a
 * temporary directory).
 */
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fuzz_common.h"
#include "tls.h"

static node_t *node;
static unsigned char hello[16384];
static size_t hello_len;

/* A self-signed certificate and its key, as PEM files in dir. */
static void make_cert(const char *dir, char *cert_path, char *key_path, size_t len) {
  EVP_PKEY *k = EVP_EC_gen("P-256");
  X509 *x = X509_new();
  if (!k || !x) fuzz_die("fuzz_tls: no key");
  ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
  X509_gmtime_adj(X509_getm_notBefore(x), 0);
  X509_gmtime_adj(X509_getm_notAfter(x), 86400);
  X509_set_pubkey(x, k);
  X509_NAME *name = X509_get_subject_name(x);
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)"fuzz", -1, -1, 0);
  X509_set_issuer_name(x, name);
  if (!X509_sign(x, k, EVP_sha256())) fuzz_die("fuzz_tls: cannot sign");
  snprintf(cert_path, len, "%s/cert.pem", dir);
  snprintf(key_path, len, "%s/key.pem", dir);
  FILE *cf = fopen(cert_path, "w"), *kf = fopen(key_path, "w");
  if (!cf || !kf || !PEM_write_X509(cf, x) || !PEM_write_PrivateKey(kf, k, NULL, NULL, 0, NULL, NULL))
    fuzz_die("fuzz_tls: cannot write the certificate");
  fclose(cf);
  fclose(kf);
  X509_free(x);
  EVP_PKEY_free(k);
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  char dir[] = "/tmp/grid-fuzz-tls-XXXXXX";
  if (!mkdtemp(dir)) fuzz_die("fuzz_tls: no temporary directory");
  char cert[256], key[256], err[256];
  make_cert(dir, cert, key, sizeof cert);
  config_t cfg;
  fuzz_node_config(&cfg);
  if (config_set(&cfg, "tls_port", "0", err, sizeof err) != 0 ||
      config_set(&cfg, "tls_resp_port", "0", err, sizeof err) != 0 ||
      config_set(&cfg, "tls_cert_file", cert, err, sizeof err) != 0 ||
      config_set(&cfg, "tls_key_file", key, err, sizeof err) != 0 ||
      config_set(&cfg, "tls_auth_clients", "no", err, sizeof err) != 0)
    fuzz_die("fuzz_tls: %s", err);
  node = fuzz_node_start_for_run(&cfg);
  /* The node has read its files: they may go. */
  unlink(cert);
  unlink(key);
  rmdir(dir);
  /* A client's first flight, to put before the input. */
  tls_settings_t s;
  memset(&s, 0, sizeof s);
  tls_ctx_t *ctx;
  if (tls_ctx_new(0, &s, &ctx, err, sizeof err) != 0) fuzz_die("fuzz_tls: %s", err);
  tls_sess_t *cs = tls_sess_new(ctx, "localhost");
  if (!cs || tls_sess_handshake(cs) == TLS_FAILED) fuzz_die("fuzz_tls: no ClientHello");
  hello_len = tls_sess_take(cs, hello, sizeof hello);
  tls_sess_free(cs);
  tls_ctx_free(ctx);
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size == 0) return 0;
  uint8_t control = data[0];
  int fd = fuzz_connect(control & 1 ? node->tls_resp_port : node->tls_port);
  fuzz_output_t out;
  fuzz_exchange(fd, control & 2 ? hello : NULL, control & 2 ? hello_len : 0, data + 1, size - 1,
                fuzz_chunk_bytes(control), 0, &out);
  fuzz_output_free(&out);
  return 0;
}
