#include "zk.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#define THREADED /* the synchronous calls of the mt client */
#include <zookeeper/zookeeper.h>

#include "grid_types.h"
#include "log.h"

struct zk {
  zhandle_t *zh;
  zk_event_cb cb;
  void *arg;
  struct ACL_vector *acl;    /* of the znodes it makes (but ZK_OPEN ones) */
};

static int zk_err(int zrc) {
  switch (zrc) {
    case ZOK: return 0;
    case ZNONODE: return GRID_ENOTFOUND;
    case ZNODEEXISTS: return GRID_EEXIST;
    case ZBADVERSION: return GRID_EVERSION;
    case ZNOTEMPTY: return GRID_EEXIST;
    case ZBADARGUMENTS: return GRID_EINVAL;
    case ZNOAUTH: case ZAUTHFAILED: return GRID_EAUTH;
    default: return GRID_ECLUSTER; /* connection loss, session expired, ... */
  }
}

static void zk_watcher(zhandle_t *zh, int type, int state, const char *path,
                       void *ctx) {
  (void)zh;
  (void)path;
  zk_t *z = ctx;
  if (type == ZOO_SESSION_EVENT)
    LOG_D("zk", "\"session event\" state=%d", state);
  if (z && z->cb) z->cb(z->arg);
}

/* The C client logs to stderr at INFO by default: keep its warnings. */
static void zk_log_quiet(void) { zoo_set_debug_level(ZOO_LOG_LEVEL_WARN); }

static void zk_auth_done(int rc, const void *data) {
  (void)data;
  if (rc != ZOK)
    LOG_E("zk", "\"ZooKeeper refused zk_auth's credentials\" error=\"%s\"", zerror(rc));
}

int zk_open(const char *hosts, int session_timeout_ms, zk_event_cb cb, void *arg,
            const char *auth, zk_t **out) {
  zk_t *z = calloc(1, sizeof *z);
  if (!z) return GRID_ENOMEM;
  z->cb = cb;
  z->arg = arg;
  /* With credentials, what this node makes is theirs alone (digest ACL:
   * every node of the cluster has the same); without, open to all. */
  z->acl = auth && *auth ? &ZOO_CREATOR_ALL_ACL : &ZOO_OPEN_ACL_UNSAFE;
  /* Once per process (several nodes may start at once in one process). */
  static pthread_once_t log_once = PTHREAD_ONCE_INIT;
  pthread_once(&log_once, zk_log_quiet);
  z->zh = zookeeper_init(hosts, zk_watcher, session_timeout_ms, NULL, z, 0);
  if (!z->zh) {
    free(z);
    return GRID_ECLUSTER;
  }
  /* Sent before any request of the session (and again after a reconnect,
   * by the client library). */
  if (auth && *auth &&
      zoo_add_auth(z->zh, "digest", auth, (int)strlen(auth), zk_auth_done, NULL) != ZOK) {
    zookeeper_close(z->zh);
    free(z);
    return GRID_ECLUSTER;
  }
  *out = z;
  return 0;
}

void zk_close(zk_t *z) {
  if (!z) return;
  zookeeper_close(z->zh);
  free(z);
}

int zk_connected(zk_t *z) { return zoo_state(z->zh) == ZOO_CONNECTED_STATE; }
int zk_expired(zk_t *z) { return zoo_state(z->zh) == ZOO_EXPIRED_SESSION_STATE; }
int zk_session_timeout_ms(zk_t *z) { return zoo_recv_timeout(z->zh); }

typedef struct zk_ping_req {
  zk_ping_cb done;
  void *arg;
} zk_ping_req_t;

static void zk_ping_done(int rc, const struct Stat *st, const void *data) {
  (void)st;
  zk_ping_req_t *pr = (zk_ping_req_t *)data;
  /* "/" always exists: ZOK and ZNONODE both mean the server answered. */
  pr->done(pr->arg, rc == ZOK || rc == ZNONODE ? 0 : zk_err(rc));
  free(pr);
}

int zk_ping(zk_t *z, zk_ping_cb done, void *arg) {
  zk_ping_req_t *pr = malloc(sizeof *pr);
  if (!pr) return GRID_ENOMEM;
  pr->done = done;
  pr->arg = arg;
  int rc = zoo_aexists(z->zh, "/", 0, zk_ping_done, pr);
  if (rc != ZOK) {
    free(pr);
    return zk_err(rc);
  }
  return 0;
}

int zk_create(zk_t *z, const char *path, const void *data, size_t len,
              int flags, char *created, size_t created_len) {
  int mode = 0;
  if (flags & ZK_EPHEMERAL) mode |= ZOO_EPHEMERAL;
  if (flags & ZK_SEQUENTIAL) mode |= ZOO_SEQUENCE;
  char dummy[8];
  struct ACL_vector *acl = flags & ZK_OPEN ? &ZOO_OPEN_ACL_UNSAFE : z->acl;
  int rc = zoo_create(z->zh, path, data, data ? (int)len : -1, acl,
                      mode, created ? created : dummy,
                      created ? (int)created_len : (int)sizeof dummy);
  return zk_err(rc);
}

int zk_ensure_path(zk_t *z, const char *path) {
  char buf[512];
  size_t n = strlen(path);
  if (n >= sizeof buf || path[0] != '/') return GRID_EINVAL;
  memcpy(buf, path, n + 1);
  for (size_t i = 1; i <= n; i++) {
    if (buf[i] != '/' && buf[i] != '\0') continue;
    char saved = buf[i];
    buf[i] = '\0';
    int rc = zk_create(z, buf, NULL, 0, ZK_PERSISTENT, NULL, 0);
    buf[i] = saved;
    if (rc != 0 && rc != GRID_EEXIST) return rc;
  }
  return 0;
}

int zk_get(zk_t *z, const char *path, int watch, unsigned char **data,
           size_t *len, int *version) {
  /* Most znodes are small: a small buffer first, the exact size when the
   * data did not fit (ZooKeeper says how big it is). */
  int cap = 4096;
  char *buf = NULL;
  struct Stat st;
  for (;;) {
    char *nb = realloc(buf, (size_t)cap);
    if (!nb) {
      free(buf);
      return GRID_ENOMEM;
    }
    buf = nb;
    int blen = cap;
    int rc = watch ? zoo_wget(z->zh, path, zk_watcher, z, buf, &blen, &st)
                   : zoo_get(z->zh, path, 0, buf, &blen, &st);
    if (rc != ZOK) {
      free(buf);
      return zk_err(rc);
    }
    if (st.dataLength <= cap || cap >= ZK_DATA_BYTES_MAX) {
      *len = blen < 0 ? 0 : (size_t)blen; /* a znode without data: -1 */
      break;
    }
    cap = st.dataLength < ZK_DATA_BYTES_MAX ? st.dataLength : ZK_DATA_BYTES_MAX;
  }
  *data = (unsigned char *)buf;
  if (version) *version = st.version;
  return 0;
}

int zk_set(zk_t *z, const char *path, const void *data, size_t len,
           int expected_version, int *new_version) {
  struct Stat st;
  int rc = zoo_set2(z->zh, path, data, (int)len, expected_version, &st);
  if (rc == ZOK && new_version) *new_version = st.version;
  return zk_err(rc);
}

int zk_delete(zk_t *z, const char *path, int expected_version) {
  return zk_err(zoo_delete(z->zh, path, expected_version));
}

int zk_children(zk_t *z, const char *path, int watch, char ***names,
                size_t *n, int *cversion) {
  struct String_vector sv = {0, NULL};
  struct Stat st;
  int rc = watch ? zoo_wget_children2(z->zh, path, zk_watcher, z, &sv, &st)
                 : zoo_get_children2(z->zh, path, 0, &sv, &st);
  if (rc != ZOK) return zk_err(rc);
  if (cversion) *cversion = st.cversion;
  char **out = calloc((size_t)sv.count + 1, sizeof *out);
  int ok = out != NULL;
  for (int i = 0; ok && i < sv.count; i++) ok = (out[i] = strdup(sv.data[i])) != NULL;
  deallocate_String_vector(&sv);
  if (!ok) {
    zk_children_free(out, (size_t)sv.count);
    return GRID_ENOMEM;
  }
  *names = out;
  *n = (size_t)sv.count;
  return 0;
}

int zk_cversion(zk_t *z, const char *path, int *cversion) {
  struct Stat st;
  int rc = zoo_exists(z->zh, path, 0, &st);
  if (rc == ZOK) *cversion = st.cversion;
  return zk_err(rc);
}

void zk_children_free(char **names, size_t n) {
  if (!names) return;
  for (size_t i = 0; i < n; i++) free(names[i]);
  free(names);
}
