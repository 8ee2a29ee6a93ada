#include "tls.h"

#include <errno.h>
#include <limits.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>

#include "grid_types.h"

struct tls_ctx {
  pthread_mutex_t lock;  /* cur, swapped by a reload */
  SSL_CTX *cur;
  int is_server;
};

struct tls_sess {
  SSL *ssl;
  BIO *rbio, *wbio;      /* owned by ssl */
  int done;              /* handshake done */
  char err[192];
  char cn[128];
};

/* OpenSSL's error queue must be empty before a call whose failure
 * SSL_get_error reads; emptied only when it is not (clearing costs more
 * than looking, and it is nearly always empty). */
static inline void tls_err_clear(void) {
  if (ERR_peek_error()) ERR_clear_error();
}

/* The reason of the last OpenSSL error, in its words ("wrong version
 * number", "certificate verify failed"), or dflt. */
static const char *tls_reason(const char *dflt) {
  unsigned long e = ERR_peek_last_error();
  const char *r = e ? ERR_reason_error_string(e) : NULL;
  return r ? r : dflt;
}

static const struct {
  const char *name;
  int version;
} tls_versions[] = {
    {"TLSv1", TLS1_VERSION},
    {"TLSv1.1", TLS1_1_VERSION},
    {"TLSv1.2", TLS1_2_VERSION},
    {"TLSv1.3", TLS1_3_VERSION},
};

/* The lowest and highest versions protocols names; 0 when it is empty. */
static int tls_parse_protocols(const char *protocols, int *lo, int *hi, char *err,
                               size_t err_len) {
  *lo = *hi = 0;
  if (!protocols) return 0;
  char buf[256];
  snprintf(buf, sizeof buf, "%s", protocols);
  char *save = NULL;
  for (char *t = strtok_r(buf, " ,", &save); t; t = strtok_r(NULL, " ,", &save)) {
    int v = 0;
    for (size_t i = 0; i < sizeof tls_versions / sizeof tls_versions[0]; i++)
      if (!strcasecmp(t, tls_versions[i].name)) v = tls_versions[i].version;
    if (!v) {
      snprintf(err, err_len,
               "tls_protocols: unknown protocol \"%s\" (expected TLSv1.2 and/or TLSv1.3)", t);
      return GRID_ECONFIG;
    }
    if (!*lo || v < *lo) *lo = v;
    if (v > *hi) *hi = v;
  }
  return 0;
}

/* Whether path can be read, with the words when not. */
static int tls_file_readable(const char *what, const char *path, char *err, size_t err_len) {
  FILE *f = fopen(path, "r");
  if (!f) {
    snprintf(err, err_len, "%s %s: %s", what, path, strerror(errno));
    return GRID_ECONFIG;
  }
  fclose(f);
  return 0;
}

static int tls_ctx_build(int is_server, const tls_settings_t *s, SSL_CTX **out, char *err,
                         size_t err_len) {
  int lo, hi;
  if (tls_parse_protocols(s->protocols, &lo, &hi, err, err_len) != 0) return GRID_ECONFIG;
  int has_cert = s->cert_file && *s->cert_file, has_key = s->key_file && *s->key_file;
  if (is_server && !has_cert) {
    snprintf(err, err_len, "TLS needs a certificate: set tls_cert_file and tls_key_file");
    return GRID_ECONFIG;
  }
  if (has_cert != has_key) {
    snprintf(err, err_len, "a TLS certificate needs its key and a key its certificate: "
             "set both tls_cert_file and tls_key_file");
    return GRID_ECONFIG;
  }
  if ((has_cert && tls_file_readable("tls_cert_file", s->cert_file, err, err_len)) ||
      (has_key && tls_file_readable("tls_key_file", s->key_file, err, err_len)) ||
      (s->ca_file && *s->ca_file &&
       tls_file_readable("tls_ca_cert_file", s->ca_file, err, err_len)))
    return GRID_ECONFIG;
  tls_err_clear();
  SSL_CTX *ctx = SSL_CTX_new(is_server ? TLS_server_method() : TLS_client_method());
  if (!ctx) {
    snprintf(err, err_len, "TLS: %s", tls_reason("out of memory"));
    return GRID_ENOMEM;
  }
  SSL_CTX_set_min_proto_version(ctx, lo ? lo : TLS1_2_VERSION);
  if (hi) SSL_CTX_set_max_proto_version(ctx, hi);
  SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION |
                               (is_server ? SSL_OP_CIPHER_SERVER_PREFERENCE : 0));
  SSL_CTX_set_mode(ctx, SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
  const char *what = NULL;
  if (s->ciphers && *s->ciphers && !SSL_CTX_set_cipher_list(ctx, s->ciphers))
    what = "tls_ciphers: no cipher it names is known";
  else if (s->ciphersuites && *s->ciphersuites && !SSL_CTX_set_ciphersuites(ctx, s->ciphersuites))
    what = "tls_ciphersuites: no suite it names is known";
  else if (has_cert && SSL_CTX_use_certificate_chain_file(ctx, s->cert_file) != 1)
    what = "tls_cert_file: not a PEM certificate";
  else if (has_key && SSL_CTX_use_PrivateKey_file(ctx, s->key_file, SSL_FILETYPE_PEM) != 1)
    what = strstr(tls_reason(""), "mismatch") ? "tls_key_file is not the key of tls_cert_file"
                                              : "tls_key_file: not a PEM private key";
  else if (has_cert && SSL_CTX_check_private_key(ctx) != 1)
    what = "tls_key_file is not the key of tls_cert_file";
  else if (s->ca_file && *s->ca_file) {
    if (SSL_CTX_load_verify_locations(ctx, s->ca_file, NULL) != 1)
      what = "tls_ca_cert_file: no PEM CA certificate in it";
  } else if (SSL_CTX_set_default_verify_paths(ctx) != 1) {
    what = "the system's CA certificates cannot be loaded";
  }
  if (what) {
    snprintf(err, err_len, "%s (%s)", what, tls_reason("unknown reason"));
    SSL_CTX_free(ctx);
    return GRID_ECONFIG;
  }
  if (is_server) {
    static const unsigned char sid[] = "grid";
    SSL_CTX_set_session_id_context(ctx, sid, sizeof sid - 1);
    if (s->clients != TLS_CLIENTS_NO) {
      int mode = SSL_VERIFY_PEER;
      if (s->clients == TLS_CLIENTS_YES) mode |= SSL_VERIFY_FAIL_IF_NO_PEER_CERT;
      SSL_CTX_set_verify(ctx, mode, NULL);
      if (s->ca_file && *s->ca_file) {
        STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(s->ca_file);
        if (names) SSL_CTX_set_client_CA_list(ctx, names);
      }
    } else {
      SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    }
  } else {
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
  }
  *out = ctx;
  return 0;
}

int tls_ctx_new(int is_server, const tls_settings_t *s, tls_ctx_t **out, char *err,
                size_t err_len) {
  SSL_CTX *ssl_ctx;
  int rc = tls_ctx_build(is_server, s, &ssl_ctx, err, err_len);
  if (rc != 0) return rc;
  tls_ctx_t *ctx = calloc(1, sizeof *ctx);
  if (!ctx) {
    SSL_CTX_free(ssl_ctx);
    snprintf(err, err_len, "out of memory");
    return GRID_ENOMEM;
  }
  pthread_mutex_init(&ctx->lock, NULL);
  ctx->cur = ssl_ctx;
  ctx->is_server = is_server;
  *out = ctx;
  return 0;
}

int tls_ctx_reload(tls_ctx_t *ctx, const tls_settings_t *s, char *err, size_t err_len) {
  SSL_CTX *ssl_ctx;
  int rc = tls_ctx_build(ctx->is_server, s, &ssl_ctx, err, err_len);
  if (rc != 0) return rc;
  pthread_mutex_lock(&ctx->lock);
  SSL_CTX *old = ctx->cur;
  ctx->cur = ssl_ctx;
  pthread_mutex_unlock(&ctx->lock);
  SSL_CTX_free(old); /* sessions on it hold their own references */
  return 0;
}

void tls_ctx_free(tls_ctx_t *ctx) {
  if (!ctx) return;
  SSL_CTX_free(ctx->cur);
  pthread_mutex_destroy(&ctx->lock);
  free(ctx);
}

/* ---- sessions ------------------------------------------------------------ */

tls_sess_t *tls_sess_new(tls_ctx_t *ctx, const char *server_name) {
  tls_sess_t *s = calloc(1, sizeof *s);
  if (!s) return NULL;
  pthread_mutex_lock(&ctx->lock);
  s->ssl = SSL_new(ctx->cur);
  pthread_mutex_unlock(&ctx->lock);
  s->rbio = BIO_new(BIO_s_mem());
  s->wbio = BIO_new(BIO_s_mem());
  if (!s->ssl || !s->rbio || !s->wbio) {
    BIO_free(s->rbio);
    BIO_free(s->wbio);
    SSL_free(s->ssl);
    free(s);
    return NULL;
  }
  BIO_set_mem_eof_return(s->rbio, -1); /* empty: "try again", not EOF */
  SSL_set_bio(s->ssl, s->rbio, s->wbio);
  if (ctx->is_server) {
    SSL_set_accept_state(s->ssl);
  } else {
    SSL_set_connect_state(s->ssl);
    if (server_name && *server_name) {
      unsigned char ip[16];
      if (inet_pton(AF_INET, server_name, ip) == 1 || inet_pton(AF_INET6, server_name, ip) == 1) {
        X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(s->ssl), server_name);
      } else {
        SSL_set_tlsext_host_name(s->ssl, server_name);
        SSL_set1_host(s->ssl, server_name);
      }
    }
  }
  return s;
}

void tls_sess_free(tls_sess_t *s) {
  if (!s) return;
  SSL_free(s->ssl); /* and its BIOs */
  free(s);
}

int tls_sess_feed(tls_sess_t *s, const void *p, size_t n) {
  while (n > 0) {
    int chunk = n > INT_MAX ? INT_MAX : (int)n;
    int w = BIO_write(s->rbio, p, chunk);
    if (w <= 0) {
      snprintf(s->err, sizeof s->err, "out of memory");
      return TLS_FAILED;
    }
    p = (const char *)p + w;
    n -= (size_t)w;
  }
  return 0;
}

/* Records why the session failed, in words. */
static int tls_sess_failed(tls_sess_t *s, int ssl_err) {
  long v = SSL_get_verify_result(s->ssl);
  const char *reason = ssl_err == SSL_ERROR_SYSCALL ? "the peer closed the connection"
                                                    : tls_reason("protocol error");
  if (v != X509_V_OK)
    snprintf(s->err, sizeof s->err, "%s: %s", reason, X509_verify_cert_error_string(v));
  else
    snprintf(s->err, sizeof s->err, "%s", reason);
  return TLS_FAILED;
}

int tls_sess_handshake(tls_sess_t *s) {
  if (s->done) return 1;
  tls_err_clear();
  int r = SSL_do_handshake(s->ssl);
  if (r == 1) {
    s->done = 1;
    X509 *cert = SSL_get0_peer_certificate(s->ssl);
    if (cert && SSL_get_verify_result(s->ssl) == X509_V_OK)
      X509_NAME_get_text_by_NID(X509_get_subject_name(cert), NID_commonName, s->cn,
                                sizeof s->cn);
    return 1;
  }
  int e = SSL_get_error(s->ssl, r);
  if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) return TLS_AGAIN;
  return tls_sess_failed(s, e);
}

int tls_sess_handshake_done(const tls_sess_t *s) { return s->done; }

ssize_t tls_sess_read(tls_sess_t *s, void *p, size_t n) {
  if (!s->done) {
    int h = tls_sess_handshake(s);
    if (h != 1) return h;
  }
  tls_err_clear();
  int r = SSL_read(s->ssl, p, n > INT_MAX ? INT_MAX : (int)n);
  if (r > 0) return r;
  int e = SSL_get_error(s->ssl, r);
  if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) return TLS_AGAIN;
  if (e == SSL_ERROR_ZERO_RETURN) return TLS_CLOSED;
  return tls_sess_failed(s, e);
}

int tls_sess_readable(const tls_sess_t *s) {
  return SSL_pending(s->ssl) > 0 || BIO_ctrl_pending(s->rbio) > 0;
}

int tls_sess_write(tls_sess_t *s, const void *p, size_t n) {
  while (n > 0) {
    tls_err_clear();
    int chunk = n > INT_MAX ? INT_MAX : (int)n;
    int w = SSL_write(s->ssl, p, chunk);
    if (w <= 0) return tls_sess_failed(s, SSL_get_error(s->ssl, w));
    p = (const char *)p + w;
    n -= (size_t)w;
  }
  return 0;
}

void tls_sess_close_notify(tls_sess_t *s) {
  if (!s->done) return;
  tls_err_clear();
  SSL_shutdown(s->ssl);
}

size_t tls_sess_pending(const tls_sess_t *s) { return BIO_ctrl_pending(s->wbio); }

size_t tls_sess_take(tls_sess_t *s, void *p, size_t n) {
  int r = BIO_read(s->wbio, p, n > INT_MAX ? INT_MAX : (int)n);
  return r > 0 ? (size_t)r : 0;
}

const char *tls_sess_error(const tls_sess_t *s) { return s->err; }
const char *tls_sess_peer_cn(const tls_sess_t *s) { return s->cn; }
int tls_sess_peer_names(const tls_sess_t *s, const char *host) {
  X509 *cert = tls_sess_peer_verified(s) ? SSL_get0_peer_certificate(s->ssl) : NULL;
  if (!cert || !host || !*host) return 0;
  unsigned char ip[16];
  if (inet_pton(AF_INET, host, ip) == 1 || inet_pton(AF_INET6, host, ip) == 1)
    return X509_check_ip_asc(cert, host, 0) == 1;
  return X509_check_host(cert, host, 0, 0, NULL) == 1;
}

int tls_sess_peer_verified(const tls_sess_t *s) {
  return s->done && SSL_get0_peer_certificate(s->ssl) &&
         SSL_get_verify_result(s->ssl) == X509_V_OK;
}
const char *tls_sess_version(const tls_sess_t *s) { return SSL_get_version(s->ssl); }
const char *tls_sess_cipher(const tls_sess_t *s) {
  const char *c = SSL_get_cipher_name(s->ssl);
  return c ? c : "";
}
