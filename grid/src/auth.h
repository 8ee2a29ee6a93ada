/*
 * auth: who may do what on a node with auth = on.
 *
 * Users have a password, stored only as PBKDF2-HMAC-SHA256 of it with a
 * random salt of the user's own (OpenSSL's libcrypto), or log in with a
 * TLS client certificate whose common name is their name; and roles:
 * read, write (which reads too) or admin (which does everything), each
 * for every cache or for one ("read:things"). requirepass makes the user
 * "default", admin, as Redis's requirepass does.
 *
 * The users live where the node's state lives: ZooKeeper's users znode in
 * a cluster (the cluster thread hands what it reads to auth_set_stored),
 * the node's memory alone otherwise. A connection logs in once (a
 * principal: the user's name and roles) and every request it sends is
 * checked against them; a change of the users reaches open connections at
 * their next request (a deleted user's connection is refused from then).
 *
 * Failed logins are logged with the peer's address and counted per
 * address (an IPv6 address's /64): past auth_failures_max, the address is
 * refused without a password check for auth_lockout_ms, doubled at each
 * further failure (at most AUTH_LOCKOUT_MS_MAX), so guessing is slow and
 * costs the node nothing; the count is forgotten after
 * AUTH_FAILURES_FORGET_MS without a failure. A login of a user that does
 * not exist costs the same hash as one that does.
 */
#ifndef GRID_AUTH_H
#define GRID_AUTH_H

#include <stddef.h>
#include <stdint.h>

#include "arena.h"
#include "config.h"
#include "grid.pb-c.h"

#define AUTH_NAME_MAX 64           /* a user's name, at most, with its NUL */
#define AUTH_PASSWORD_BYTES_MAX 256
#define AUTH_GRANTS_MAX 32         /* roles of one user */
#define AUTH_USERS_MAX 4096
#define AUTH_ITERATIONS 10000      /* PBKDF2's, for new passwords */
#define AUTH_THROTTLE_ADDRS_MAX 4096 /* addresses whose failures are counted */
#define AUTH_LOCKOUT_MS_MAX 60000
#define AUTH_FAILURES_FORGET_MS 600000 /* failures of an address forgotten after this quiet */

enum { AUTH_READ = 1, AUTH_WRITE = 2, AUTH_ADMIN = 3 };

typedef struct auth_grant {
  int level;                       /* AUTH_* */
  char cache[AUTH_NAME_MAX + 1];   /* "": every cache */
} auth_grant_t;

/* Who a connection is logged in as. */
typedef struct auth_principal {
  char name[AUTH_NAME_MAX];        /* "": not logged in */
  uint64_t epoch;                  /* the users' epoch its roles are of */
  size_t ngrants;
  auth_grant_t grants[AUTH_GRANTS_MAX];
} auth_principal_t;

typedef struct auth auth_t;

/* The node's users: requirepass's "default" from cfg. NULL when out of
 * memory. */
auth_t *auth_new(const config_t *cfg);
void auth_free(auth_t *a);
/* Whether logins are required (auth = on). */
int auth_required(const auth_t *a);

/* The users as stored (a packed UserList; len 0: none), from ZooKeeper. */
int auth_set_stored(auth_t *a, const void *packed, size_t len);
/* The stored users, packed (for a change made on a single node). *out is
 * malloc'd. */
int auth_get_stored(auth_t *a, unsigned char **out, size_t *len);
/* USER's change (add, del, passwd, roles) to the packed list in, as a new
 * packed list *out (malloc'd). Pure: the caller stores it. 0, or
 * GRID_EEXIST / GRID_ENOTFOUND / GRID_EINVAL with words in why. */
int auth_change(const void *in, size_t in_len, const Grid__Request *rq, unsigned char **out,
                size_t *out_len, char *why, size_t why_len);
/* USER LIST: every user (names, roles, cert; no secrets) into rp. */
void auth_list(auth_t *a, Grid__Reply *rp, arena_t *arena);

/* Logs in with a password (user "" is "default"): 0 with *p, or GRID_EAUTH
 * with words in why (and the failure logged with ip). */
int auth_login(auth_t *a, const char *user, const char *password, const char *ip,
               auth_principal_t *p, char *why, size_t why_len);
/* Logs in as the user a verified client certificate names (cn): 0 or
 * GRID_EAUTH (counted as a failed login when counted is set; not when the
 * certificate was only tried, a password login may follow). */
int auth_login_cert(auth_t *a, const char *cn, const char *ip, auth_principal_t *p,
                    int counted, char *why, size_t why_len);

/* Whether p may send rq: 0, GRID_ENOPERM (a role is missing: *scoped
 * tells that p has the role on other caches) or GRID_EAUTH (p's user is
 * gone), with words. p's roles are read again first when the users
 * changed. */
int auth_allow(auth_t *a, auth_principal_t *p, const Grid__Request *rq, int *scoped, char *why,
               size_t why_len);
/* The same for a role the caller names (level on cache; cache NULL: every
 * cache; "*": any one cache; level 0: any role at all). */
int auth_allow_level(auth_t *a, auth_principal_t *p, int level, const char *cache, int *scoped,
                     char *why, size_t why_len);
/* Whether got is the secret want, in constant time (cluster_secret). */
int auth_secret_ok(const char *want, const char *got);
/* Whether s names a role ("read", "write:things"); *g gets it. */
int auth_parse_role(const char *s, auth_grant_t *g);

#endif
