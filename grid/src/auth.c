#include "auth.h"

#include <ctype.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "coll.h"
#include "grid_types.h"
#include "log.h"
#include "op.h"

#define AUTH_SALT_BYTES 16
#define AUTH_HASH_BYTES 32

typedef struct auth_user {
  char name[AUTH_NAME_MAX];
  unsigned char salt[AUTH_SALT_BYTES];
  size_t salt_len;
  unsigned char hash[AUTH_HASH_BYTES];
  size_t hash_len;                 /* 0: no password */
  uint32_t iterations;
  int cert;
  size_t ngrants;
  auth_grant_t grants[AUTH_GRANTS_MAX];
} auth_user_t;

/* Failed logins of one address. */
typedef struct auth_failures {
  char ip[48];
  uint32_t count;
  int64_t until_ms;                /* refused until then */
  int64_t last_ms;
} auth_failures_t;

struct auth {
  pthread_rwlock_t lock;           /* users, deflt */
  int required;
  int has_default;                 /* requirepass */
  auth_user_t deflt;
  auth_user_t *users;
  size_t nusers;
  unsigned char *stored;           /* the users as stored, packed */
  size_t stored_len;
  _Atomic uint64_t epoch;          /* moves at every change of the users */
  int64_t failures_max, lockout_ms;
  pthread_mutex_t flock;           /* failures */
  auth_failures_t *failures;       /* AUTH_THROTTLE_ADDRS_MAX */
};

/* ---- roles and users ----------------------------------------------------- */

int auth_parse_role(const char *s, auth_grant_t *g) {
  memset(g, 0, sizeof *g);
  const char *colon = strchr(s, ':');
  size_t n = colon ? (size_t)(colon - s) : strlen(s);
  if (n == 4 && !strncmp(s, "read", 4)) g->level = AUTH_READ;
  else if (n == 5 && !strncmp(s, "write", 5)) g->level = AUTH_WRITE;
  else if (n == 5 && !strncmp(s, "admin", 5)) g->level = AUTH_ADMIN;
  else return GRID_EINVAL;
  if (colon) {
    const char *cache = colon + 1;
    size_t cl = strlen(cache);
    if (cl == 0 || cl > AUTH_NAME_MAX) return GRID_EINVAL;
    for (const char *p = cache; *p; p++)
      if (!isalnum((unsigned char)*p) && *p != '_' && *p != '-' && *p != '.') return GRID_EINVAL;
    memcpy(g->cache, cache, cl + 1);
  }
  return 0;
}

static int auth_name_ok(const char *name) {
  size_t n = strlen(name);
  if (n == 0 || n >= AUTH_NAME_MAX) return 0;
  for (const char *p = name; *p; p++)
    if (!isalnum((unsigned char)*p) && !strchr("_-.@", *p)) return 0;
  return 1;
}

static int auth_hash(const char *password, const unsigned char *salt, size_t salt_len,
                     uint32_t iterations, unsigned char out[AUTH_HASH_BYTES]) {
  return PKCS5_PBKDF2_HMAC(password, (int)strlen(password), salt, (int)salt_len, (int)iterations,
                           EVP_sha256(), AUTH_HASH_BYTES, out) == 1
             ? 0
             : GRID_ENOMEM;
}

/* The user of a stored record; 0, or GRID_EPROTO for one that is not. */
static int auth_user_from(const Grid__User *u, auth_user_t *out) {
  memset(out, 0, sizeof *out);
  if (!u->name || !auth_name_ok(u->name) || u->salt.len > AUTH_SALT_BYTES ||
      (u->hash.len && u->hash.len != AUTH_HASH_BYTES) || u->n_roles > AUTH_GRANTS_MAX)
    return GRID_EPROTO;
  snprintf(out->name, sizeof out->name, "%s", u->name);
  if (u->salt.len) memcpy(out->salt, u->salt.data, u->salt.len);
  out->salt_len = u->salt.len;
  if (u->hash.len) memcpy(out->hash, u->hash.data, u->hash.len);
  out->hash_len = u->hash.len;
  out->iterations = u->iterations;
  out->cert = u->cert;
  for (size_t i = 0; i < u->n_roles; i++)
    if (auth_parse_role(u->roles[i], &out->grants[out->ngrants++]) != 0) return GRID_EPROTO;
  return 0;
}

/* ---- the table ----------------------------------------------------------- */

auth_t *auth_new(const config_t *cfg) {
  auth_t *a = calloc(1, sizeof *a);
  if (a) a->failures = calloc(AUTH_THROTTLE_ADDRS_MAX, sizeof *a->failures);
  if (!a || !a->failures) {
    if (a) free(a);
    return NULL;
  }
  pthread_rwlock_init(&a->lock, NULL);
  pthread_mutex_init(&a->flock, NULL);
  a->required = cfg->auth || cfg->requirepass[0];
  a->failures_max = cfg->auth_failures_max;
  a->lockout_ms = cfg->auth_lockout_ms;
  atomic_init(&a->epoch, 1);
  if (cfg->requirepass[0]) {
    auth_user_t *d = &a->deflt;
    snprintf(d->name, sizeof d->name, "default");
    d->salt_len = AUTH_SALT_BYTES;
    d->iterations = AUTH_ITERATIONS;
    d->hash_len = AUTH_HASH_BYTES;
    d->ngrants = 1;
    d->grants[0].level = AUTH_ADMIN;
    if (RAND_bytes(d->salt, AUTH_SALT_BYTES) != 1 ||
        auth_hash(cfg->requirepass, d->salt, d->salt_len, d->iterations, d->hash) != 0) {
      auth_free(a);
      return NULL;
    }
    a->has_default = 1;
  }
  return a;
}

void auth_free(auth_t *a) {
  if (!a) return;
  pthread_rwlock_destroy(&a->lock);
  pthread_mutex_destroy(&a->flock);
  free(a->users);
  free(a->stored);
  free(a->failures);
  free(a);
}

int auth_required(const auth_t *a) { return a && a->required; }

int auth_set_stored(auth_t *a, const void *packed, size_t len) {
  Grid__UserList *ul = len ? grid__user_list__unpack(NULL, len, packed) : NULL;
  if (len && !ul) return GRID_EPROTO;
  size_t n = ul ? ul->n_users : 0;
  auth_user_t *users = calloc(n ? n : 1, sizeof *users);
  unsigned char *copy = malloc(len ? len : 1);
  if (!users || !copy) {
    free(users);
    free(copy);
    if (ul) grid__user_list__free_unpacked(ul, NULL);
    return GRID_ENOMEM;
  }
  size_t k = 0;
  for (size_t i = 0; i < n; i++) {
    if (auth_user_from(ul->users[i], &users[k]) == 0) k++;
    else LOG_W("auth", "\"a stored user does not decode: left out\" index=%zu", i);
  }
  if (ul) grid__user_list__free_unpacked(ul, NULL);
  if (len) memcpy(copy, packed, len);
  pthread_rwlock_wrlock(&a->lock);
  free(a->users);
  free(a->stored);
  a->users = users;
  a->nusers = k;
  a->stored = copy;
  a->stored_len = len;
  atomic_fetch_add(&a->epoch, 1);
  pthread_rwlock_unlock(&a->lock);
  return 0;
}

int auth_get_stored(auth_t *a, unsigned char **out, size_t *len) {
  pthread_rwlock_rdlock(&a->lock);
  *len = a->stored_len;
  *out = malloc(a->stored_len ? a->stored_len : 1);
  if (*out && a->stored_len) memcpy(*out, a->stored, a->stored_len);
  pthread_rwlock_unlock(&a->lock);
  return *out ? 0 : GRID_ENOMEM;
}

/* The user called name, lock held; requirepass's "default" first. */
static const auth_user_t *auth_find(const auth_t *a, const char *name) {
  if (a->has_default && !strcmp(name, "default")) return &a->deflt;
  for (size_t i = 0; i < a->nusers; i++)
    if (!strcmp(a->users[i].name, name)) return &a->users[i];
  return NULL;
}

/* Fills rec (its strings in arena a) with what USER ADD / PASSWD sets. */
static int auth_set_password(Grid__User *rec, const char *password, arena_t *ar) {
  unsigned char *salt = arena_alloc(ar, AUTH_SALT_BYTES);
  unsigned char *hash = arena_alloc(ar, AUTH_HASH_BYTES);
  if (!salt || !hash || RAND_bytes(salt, AUTH_SALT_BYTES) != 1) return GRID_ENOMEM;
  if (auth_hash(password, salt, AUTH_SALT_BYTES, AUTH_ITERATIONS, hash) != 0) return GRID_ENOMEM;
  rec->salt.data = salt;
  rec->salt.len = AUTH_SALT_BYTES;
  rec->hash.data = hash;
  rec->hash.len = AUTH_HASH_BYTES;
  rec->iterations = AUTH_ITERATIONS;
  return 0;
}

static int auth_check_roles(char *const *roles, size_t n, char *why, size_t why_len) {
  if (n > AUTH_GRANTS_MAX) {
    snprintf(why, why_len, "at most %d roles per user", AUTH_GRANTS_MAX);
    return GRID_EINVAL;
  }
  for (size_t i = 0; i < n; i++) {
    auth_grant_t g;
    if (auth_parse_role(roles[i], &g) != 0) {
      snprintf(why, why_len, "role \"%.64s\": expected read, write or admin, alone (every "
               "cache) or as role:cache", roles[i]);
      return GRID_EINVAL;
    }
  }
  return 0;
}

int auth_change(const void *in, size_t in_len, const Grid__Request *rq, unsigned char **out,
                size_t *out_len, char *why, size_t why_len) {
  char name[AUTH_NAME_MAX + 1];
  snprintf(name, sizeof name, "%.*s", (int)(rq->key.len < AUTH_NAME_MAX ? rq->key.len : AUTH_NAME_MAX),
           rq->key.data ? (const char *)rq->key.data : "");
  if (!auth_name_ok(name) || rq->key.len >= AUTH_NAME_MAX) {
    snprintf(why, why_len, "a user's name is 1..%d of [A-Za-z0-9_.@-]", AUTH_NAME_MAX - 1);
    return GRID_EINVAL;
  }
  char password[AUTH_PASSWORD_BYTES_MAX + 1];
  if (rq->value.len > AUTH_PASSWORD_BYTES_MAX ||
      (rq->value.len && memchr(rq->value.data, 0, rq->value.len))) {
    snprintf(why, why_len, "a password is at most %d bytes, without NUL",
             AUTH_PASSWORD_BYTES_MAX);
    return GRID_EINVAL;
  }
  snprintf(password, sizeof password, "%.*s", (int)rq->value.len,
           rq->value.data ? (const char *)rq->value.data : "");
  Grid__UserList *ul = in_len ? grid__user_list__unpack(NULL, in_len, in) : NULL;
  if (in_len && !ul) {
    snprintf(why, why_len, "the stored users do not decode");
    return GRID_EPROTO;
  }
  size_t n = ul ? ul->n_users : 0, at = n;
  for (size_t i = 0; i < n; i++)
    if (ul->users[i]->name && !strcmp(ul->users[i]->name, name)) at = i;
  arena_t ar;
  arena_init(&ar, 4096);
  Grid__User **users = arena_alloc(&ar, (n + 1) * sizeof *users);
  Grid__User *rec = arena_alloc(&ar, sizeof *rec);
  int rc = users && rec ? 0 : GRID_ENOMEM;
  if (rc == 0) {
    for (size_t i = 0; i < n; i++) users[i] = ul->users[i];
    grid__user__init(rec);
  }
  size_t nout = n;
  switch (rc ? GRID__USER_ACTION__USER_NONE : rq->user_action) {
    case GRID__USER_ACTION__USER_ADD:
      if (at < n) {
        snprintf(why, why_len, "user \"%s\" exists (user passwd changes a password)", name);
        rc = GRID_EEXIST;
      } else if (n >= AUTH_USERS_MAX) {
        snprintf(why, why_len, "at most %d users", AUTH_USERS_MAX);
        rc = GRID_ELIMIT;
      } else if (!password[0] && !rq->user_cert) {
        snprintf(why, why_len, "a user needs a password, or --cert to log in with a TLS "
                 "client certificate naming it");
        rc = GRID_EINVAL;
      } else if ((rc = auth_check_roles(rq->roles, rq->n_roles, why, why_len)) == 0) {
        rec->name = name;
        rec->cert = rq->user_cert;
        rec->roles = rq->roles;
        rec->n_roles = rq->n_roles;
        if (password[0]) rc = auth_set_password(rec, password, &ar);
        users[nout++] = rec;
      }
      break;
    case GRID__USER_ACTION__USER_DEL:
    case GRID__USER_ACTION__USER_PASSWD:
    case GRID__USER_ACTION__USER_ROLES:
      if (at == n) {
        snprintf(why, why_len, "no user \"%s\"", name);
        rc = GRID_ENOTFOUND;
        break;
      }
      if (rq->user_action == GRID__USER_ACTION__USER_DEL) {
        users[at] = users[--nout];
        break;
      }
      *rec = *users[at];
      if (rq->user_action == GRID__USER_ACTION__USER_PASSWD) {
        if (!password[0]) {
          snprintf(why, why_len, "an empty password");
          rc = GRID_EINVAL;
        } else {
          rc = auth_set_password(rec, password, &ar);
        }
      } else if ((rc = auth_check_roles(rq->roles, rq->n_roles, why, why_len)) == 0) {
        rec->roles = rq->roles;
        rec->n_roles = rq->n_roles;
      }
      users[at] = rec;
      break;
    default:
      if (rc == 0) {
        snprintf(why, why_len, "user: expected add, del, passwd or roles");
        rc = GRID_EINVAL;
      }
  }
  if (rc == 0) {
    Grid__UserList next = GRID__USER_LIST__INIT;
    next.users = users;
    next.n_users = nout;
    *out_len = grid__user_list__get_packed_size(&next);
    *out = malloc(*out_len ? *out_len : 1);
    if (!*out) rc = GRID_ENOMEM;
    else grid__user_list__pack(&next, *out);
  }
  arena_close(&ar);
  if (ul) grid__user_list__free_unpacked(ul, NULL);
  return rc;
}

void auth_list(auth_t *a, Grid__Reply *rp, arena_t *ar) {
  pthread_rwlock_rdlock(&a->lock);
  size_t n = a->nusers + (a->has_default ? 1 : 0);
  Grid__User **us = arena_alloc(ar, (n ? n : 1) * sizeof *us);
  size_t k = 0;
  for (size_t i = 0; us && i < n; i++) {
    const auth_user_t *u = a->has_default ? (i == 0 ? &a->deflt : &a->users[i - 1]) : &a->users[i];
    Grid__User *m = arena_alloc(ar, sizeof *m);
    char **roles = arena_alloc(ar, (u->ngrants ? u->ngrants : 1) * sizeof *roles);
    if (!m || !roles) break;
    grid__user__init(m);
    m->name = arena_dup(ar, u->name, strlen(u->name) + 1);
    m->cert = u->cert;
    m->iterations = u->hash_len ? u->iterations : 0; /* whether it has a password */
    for (size_t g = 0; g < u->ngrants; g++) {
      const auth_grant_t *gr = &u->grants[g];
      const char *lv = gr->level == AUTH_ADMIN ? "admin" : gr->level == AUTH_WRITE ? "write" : "read";
      char buf[AUTH_NAME_MAX + 8];
      snprintf(buf, sizeof buf, "%s%s%s", lv, gr->cache[0] ? ":" : "", gr->cache);
      roles[g] = arena_dup(ar, buf, strlen(buf) + 1);
    }
    m->roles = roles;
    m->n_roles = u->ngrants;
    us[k++] = m;
  }
  pthread_rwlock_unlock(&a->lock);
  rp->users = us;
  rp->n_users = k;
}

/* ---- logins ---------------------------------------------------------------- */

/* The key failures are counted under: the address, or an IPv6 address's
 * /64 (one host may have a whole one to rotate through). */
static void auth_failures_key(const char *ip, char *key, size_t len) {
  snprintf(key, len, "%s", ip);
  if (!strchr(ip, ':') || strchr(ip, '.')) return; /* IPv4 (or IPv4-mapped) */
  int colons = 0;
  for (char *p = key; *p; p++) {
    if (*p == ':' && ++colons == 4) {
      *p = '\0';
      return;
    }
    if (*p == ':' && p[1] == ':') return; /* "::" within the prefix: as it is */
  }
}

/* The failures of ip (made when need be; the oldest is reused), lock held. */
static auth_failures_t *auth_failures_of(auth_t *a, const char *ip_in, int make) {
  char ip[48];
  auth_failures_key(ip_in, ip, sizeof ip);
  auth_failures_t *oldest = &a->failures[0];
  for (size_t i = 0; i < AUTH_THROTTLE_ADDRS_MAX; i++) {
    auth_failures_t *f = &a->failures[i];
    if (f->ip[0] && !strcmp(f->ip, ip)) return f;
    if (f->last_ms < oldest->last_ms) oldest = f;
  }
  if (!make) return NULL;
  memset(oldest, 0, sizeof *oldest);
  snprintf(oldest->ip, sizeof oldest->ip, "%s", ip);
  return oldest;
}

/* Whether ip is refused now, with the words. */
static int auth_locked_out(auth_t *a, const char *ip, char *why, size_t why_len) {
  int64_t now = clock_mono_ms();
  pthread_mutex_lock(&a->flock);
  auth_failures_t *f = auth_failures_of(a, ip, 0);
  int64_t left = f && f->until_ms > now ? f->until_ms - now : 0;
  pthread_mutex_unlock(&a->flock);
  if (!left) return 0;
  snprintf(why, why_len, "too many failed logins from %s: refused for %lld ms more", ip,
           (long long)left);
  return 1;
}

static void auth_failed(auth_t *a, const char *user, const char *ip, const char *how) {
  int64_t now = clock_mono_ms();
  pthread_mutex_lock(&a->flock);
  auth_failures_t *f = auth_failures_of(a, ip, 1);
  /* Failures are forgotten after AUTH_FAILURES_FORGET_MS without one (a
   * success in between does not wipe them: it would let guesses go on
   * between logins of the guesser's own). */
  if (f->last_ms && now - f->last_ms > AUTH_FAILURES_FORGET_MS) f->count = 0;
  f->count++;
  f->last_ms = now;
  int64_t lockout = 0;
  if (f->count >= (uint32_t)a->failures_max) {
    uint32_t extra = f->count - (uint32_t)a->failures_max;
    lockout = a->lockout_ms;
    for (uint32_t i = 0; i < extra && lockout < AUTH_LOCKOUT_MS_MAX; i++) lockout *= 2;
    if (lockout > AUTH_LOCKOUT_MS_MAX) lockout = AUTH_LOCKOUT_MS_MAX;
    f->until_ms = now + lockout;
  }
  uint32_t count = f->count;
  pthread_mutex_unlock(&a->flock);
  LOG_W("auth", "\"login failed\" user=\"%.64s\" peer=%s how=%s failures=%u refused_ms=%lld", user,
        ip, how, count, (long long)lockout);
}

/* p from u, as of the users' epoch (read under the same lock as u). */
static void auth_principal_of(const auth_user_t *u, uint64_t epoch, auth_principal_t *p) {
  snprintf(p->name, sizeof p->name, "%s", u->name);
  p->epoch = epoch;
  p->ngrants = u->ngrants;
  memcpy(p->grants, u->grants, u->ngrants * sizeof *p->grants);
}

int auth_login(auth_t *a, const char *user, const char *password, const char *ip,
               auth_principal_t *p, char *why, size_t why_len) {
  if (!user || !*user) user = "default";
  if (auth_locked_out(a, ip, why, why_len)) return GRID_EAUTH;
  /* The hash is computed before the lock: a slow PBKDF2 holds no writer. */
  pthread_rwlock_rdlock(&a->lock);
  const auth_user_t *u = auth_find(a, user);
  auth_user_t copy;
  int found = u && u->hash_len;
  if (found) copy = *u;
  /* The roles are as of this epoch: a change while the hash runs moves it,
   * and the connection reads its user again at its first request. */
  uint64_t epoch = atomic_load(&a->epoch);
  pthread_rwlock_unlock(&a->lock);
  if (!found) { /* the same work as for a user that exists: no timing tells */
    memset(&copy, 0, sizeof copy);
    copy.salt_len = AUTH_SALT_BYTES;
    copy.iterations = AUTH_ITERATIONS;
  }
  unsigned char h[AUTH_HASH_BYTES];
  int ok = password && strlen(password) <= AUTH_PASSWORD_BYTES_MAX &&
           auth_hash(password, copy.salt, copy.salt_len, copy.iterations, h) == 0 &&
           CRYPTO_memcmp(h, copy.hash, AUTH_HASH_BYTES) == 0 && found;
  if (!ok) {
    auth_failed(a, user, ip, "password");
    snprintf(why, why_len, "invalid username-password pair or user is disabled.");
    return GRID_EAUTH;
  }
  auth_principal_of(&copy, epoch, p);
  return 0;
}

int auth_login_cert(auth_t *a, const char *cn, const char *ip, auth_principal_t *p, int counted,
                    char *why, size_t why_len) {
  if (auth_locked_out(a, ip, why, why_len)) return GRID_EAUTH;
  pthread_rwlock_rdlock(&a->lock);
  const auth_user_t *u = cn && *cn ? auth_find(a, cn) : NULL;
  int ok = u && u->cert;
  if (ok) auth_principal_of(u, atomic_load(&a->epoch), p);
  pthread_rwlock_unlock(&a->lock);
  if (!ok) {
    if (counted) auth_failed(a, cn ? cn : "", ip, "certificate");
    snprintf(why, why_len, "no user logs in with the TLS client certificate of \"%.64s\"",
             cn ? cn : "");
    return GRID_EAUTH;
  }
  return 0;
}

int auth_secret_ok(const char *want, const char *got) {
  size_t wl = strlen(want), gl = got ? strlen(got) : 0;
  return wl == gl && CRYPTO_memcmp(want, got, wl) == 0;
}

/* ---- checks ---------------------------------------------------------------- */

/* p's roles again, when the users changed since they were read. */
static int auth_refresh(auth_t *a, auth_principal_t *p, char *why, size_t why_len) {
  uint64_t e = atomic_load(&a->epoch);
  if (p->epoch == e) return 0;
  pthread_rwlock_rdlock(&a->lock);
  const auth_user_t *u = auth_find(a, p->name);
  if (u) auth_principal_of(u, atomic_load(&a->epoch), p);
  pthread_rwlock_unlock(&a->lock);
  if (u) return 0;
  snprintf(why, why_len, "user \"%s\" no longer exists", p->name);
  return GRID_EAUTH;
}

int auth_allow_level(auth_t *a, auth_principal_t *p, int level, const char *cache, int *scoped,
                     char *why, size_t why_len) {
  int rc = auth_refresh(a, p, why, why_len);
  if (rc != 0) return rc;
  int other = 0;
  for (size_t i = 0; i < p->ngrants; i++) {
    const auth_grant_t *g = &p->grants[i];
    if (g->level < level) continue;
    if (!g->cache[0] || (cache && !strcmp(g->cache, cache)) || level == 0 ||
        (cache && !strcmp(cache, "*")))
      return 0;
    other = 1;
  }
  if (scoped) *scoped = other;
  const char *lv = level == AUTH_ADMIN ? "admin" : level == AUTH_WRITE ? "write" : "read";
  if (level == 0) snprintf(why, why_len, "user \"%s\" has no role", p->name);
  else if (cache)
    snprintf(why, why_len, "user \"%s\" has no %s role on cache \"%.64s\"", p->name, lv, cache);
  else
    snprintf(why, why_len, "user \"%s\" has no %s role on every cache", p->name, lv);
  return GRID_ENOPERM;
}

/* What rq needs: the role and the cache (NULL: every cache; own: the one
 * it runs on). -1: never from a client. */
static int auth_need(const Grid__Request *rq, const char *own, const char **cache) {
  *cache = own;
  switch (rq->op) {
    case GRID__OP__PING: case GRID__OP__STATS: case GRID__OP__PMAP: case GRID__OP__LIST_CACHES:
      return 0;
    case GRID__OP__CREATE_CACHE:
      *cache = rq->cache_config && rq->cache_config->name ? rq->cache_config->name : "";
      return AUTH_ADMIN;
    case GRID__OP__DROP_CACHE:
      return AUTH_ADMIN;
    case GRID__OP__LEAVE: case GRID__OP__ACCEPT_LOSS: case GRID__OP__SNAPSHOT:
    case GRID__OP__USER:
      *cache = NULL;
      return AUTH_ADMIN;
    case GRID__OP__SUBSCRIBE: case GRID__OP__UNSUBSCRIBE:
      return AUTH_READ;
    case GRID__OP__COLL:
      return coll_cmd_writes((int)rq->coll_cmd) ? AUTH_WRITE : AUTH_READ;
    default:
      break;
  }
  if (op_has(rq->op, OP_PEER) || !op_has(rq->op, OP_KNOWN)) return -1;
  if (op_is_write(rq->op)) return AUTH_WRITE;
  if (op_has(rq->op, OP_DATA)) return AUTH_READ;
  *cache = NULL;
  return AUTH_ADMIN;
}

/* auth_allow for rq, whose cache is within (a step of EXEC without a
 * cache of its own runs on the EXEC's). */
static int auth_allow_in(auth_t *a, auth_principal_t *p, const Grid__Request *rq,
                         const char *within, int *scoped, char *why, size_t why_len) {
  const char *own = rq->cache && rq->cache[0] ? rq->cache : within;
  if (rq->op == GRID__OP__EXEC) { /* each step where it runs, and WATCH's reads */
    for (size_t i = 0; i < rq->n_steps; i++) {
      int rc = auth_allow_in(a, p, rq->steps[i], own, scoped, why, why_len);
      if (rc != 0) return rc;
    }
    return rq->n_watch ? auth_allow_level(a, p, AUTH_READ, own, scoped, why, why_len)
                       : auth_refresh(a, p, why, why_len);
  }
  const char *cache;
  int level = auth_need(rq, own, &cache);
  if (level < 0) {
    snprintf(why, why_len, "%s is an operation between nodes", op_name(rq->op));
    return GRID_ENOPERM;
  }
  return auth_allow_level(a, p, level, cache, scoped, why, why_len);
}

int auth_allow(auth_t *a, auth_principal_t *p, const Grid__Request *rq, int *scoped, char *why,
               size_t why_len) {
  return auth_allow_in(a, p, rq, "default", scoped, why, why_len);
}
