/*
 * tls: the OpenSSL boundary, for the node's listeners and links and for the
 * client alike.
 *
 * A context (tls_ctx_t) is what a side's settings make: certificate, key,
 * CA, whether the peer must show a certificate, protocol versions and
 * ciphers. It can be built again from the same files (SIGHUP) while
 * connections run: a session keeps the OpenSSL context it started with,
 * new sessions take the new one.
 *
 * A session (tls_sess_t) speaks TLS over memory, never over a socket: the
 * caller feeds it the bytes it read (tls_sess_feed), reads the plaintext
 * (tls_sess_read), writes plaintext (tls_sess_write) and sends what the
 * session has to send (tls_sess_take). So the same session works under
 * libuv's reads and writes on a loop and under a blocking socket in the
 * client, and the caller keeps its own buffers, bounds and backpressure.
 */
#ifndef GRID_TLS_H
#define GRID_TLS_H

#include <stddef.h>
#include <sys/types.h>

typedef struct tls_ctx tls_ctx_t;
typedef struct tls_sess tls_sess_t;

/* Whether a server asks for its clients' certificates. */
typedef enum {
  TLS_CLIENTS_NO = 0,       /* not asked */
  TLS_CLIENTS_YES = 1,      /* required, verified against the CA */
  TLS_CLIENTS_OPTIONAL = 2, /* asked; verified when one is shown */
} tls_clients_t;

typedef struct tls_settings {
  const char *cert_file;    /* PEM certificate (chain); server: required */
  const char *key_file;     /* its PEM private key */
  const char *ca_file;      /* PEM CA certificates that sign peers; NULL or
                               "": the system's default store */
  tls_clients_t clients;    /* server only */
  const char *protocols;    /* "TLSv1.2 TLSv1.3" (Redis's tls-protocols);
                               NULL or "": TLS 1.2 and later */
  const char *ciphers;      /* TLS 1.2 cipher list; NULL or "": OpenSSL's */
  const char *ciphersuites; /* TLS 1.3 suites; NULL or "": OpenSSL's */
} tls_settings_t;

/* A server (is_server) or client context from s. On failure err says which
 * file or setting was refused and why, in words for the user. */
int tls_ctx_new(int is_server, const tls_settings_t *s, tls_ctx_t **out, char *err,
                size_t err_len);
/* Builds the context again from s and puts it in place for new sessions;
 * on failure the old one stays and err says why. */
int tls_ctx_reload(tls_ctx_t *ctx, const tls_settings_t *s, char *err, size_t err_len);
void tls_ctx_free(tls_ctx_t *ctx);

/* A session on ctx. A client session checks that the server's certificate
 * names server_name (a host name or an IP address; NULL: not checked). */
tls_sess_t *tls_sess_new(tls_ctx_t *ctx, const char *server_name);
void tls_sess_free(tls_sess_t *s);

/* Results of the calls below besides byte counts. */
#define TLS_AGAIN (-1)   /* more bytes from the peer are needed */
#define TLS_CLOSED (-2)  /* the peer closed TLS (close_notify) */
#define TLS_FAILED (-3)  /* handshake or record refused: tls_sess_error */

/* Bytes read from the socket, handed to the session. 0, or TLS_FAILED when
 * out of memory. */
int tls_sess_feed(tls_sess_t *s, const void *p, size_t n);
/* Goes on with the handshake: 1 when done, TLS_AGAIN, or TLS_FAILED. Its
 * output waits in tls_sess_take. */
int tls_sess_handshake(tls_sess_t *s);
int tls_sess_handshake_done(const tls_sess_t *s);
/* Plaintext, at most n bytes: a count > 0, TLS_AGAIN, TLS_CLOSED or
 * TLS_FAILED. Does the handshake first while it is not done. */
ssize_t tls_sess_read(tls_sess_t *s, void *p, size_t n);
/* Whether plaintext or whole records are buffered, so that a read would
 * return bytes without new input. */
int tls_sess_readable(const tls_sess_t *s);
/* Encrypts n bytes of plaintext (all of them): 0 or TLS_FAILED. Only once
 * the handshake is done. */
int tls_sess_write(tls_sess_t *s, const void *p, size_t n);
/* Sends close_notify (its bytes wait in tls_sess_take). */
void tls_sess_close_notify(tls_sess_t *s);
/* Bytes waiting to be sent, and taking them: copies at most n bytes to p. */
size_t tls_sess_pending(const tls_sess_t *s);
size_t tls_sess_take(tls_sess_t *s, void *p, size_t n);
/* Why the session failed, in words ("certificate has expired", "no
 * certificate presented", ...); "" when it has not. */
const char *tls_sess_error(const tls_sess_t *s);
/* Whether the peer showed a certificate that the CA verified. */
int tls_sess_peer_verified(const tls_sess_t *s);
/* Whether that certificate names host (a host name or an IP address). */
int tls_sess_peer_names(const tls_sess_t *s, const char *host);
/* The peer's certificate subject common name, verified; "" if none. */
const char *tls_sess_peer_cn(const tls_sess_t *s);
/* The protocol version and cipher agreed, for logs ("TLSv1.3",
 * "TLS_AES_256_GCM_SHA384"). */
const char *tls_sess_version(const tls_sess_t *s);
const char *tls_sess_cipher(const tls_sess_t *s);

#endif
