/*
 * cinderfs_fuse3: a small N-API binding of libfuse3's low-level API.
 *
 * libfuse's multi-threaded loop runs on threads of its own. Each request is
 * handed to JavaScript through one threadsafe function, with a request id;
 * JavaScript answers later (from its own thread) by calling a reply function
 * with that id. Ids index a slot table with a generation per slot, so a
 * stale or doubled reply is refused instead of touching freed memory.
 *
 * Data paths, without copies of our own:
 *  - reads: JavaScript replies with Buffers (the block cache's blocks, as
 *    views) that go to the kernel as an iovec (fuse_reply_iov);
 *  - writes: JavaScript gets the payload in place, in the libfuse thread's
 *    receive buffer, as an external Buffer. That thread waits until the
 *    write is answered, so the buffer stays valid while the upload copies it
 *    into its staging window (the one copy).
 *
 * Inode numbers, generations, lookup counts and timeouts are JavaScript's
 * (src/fuse/inodes.ts); nothing here keeps file-system state. Kernel cache
 * notifications go out from a thread of their own: the kernel may hold
 * locks for a request that only the JavaScript thread can answer.
 */
#define FUSE_USE_VERSION 312
#define _GNU_SOURCE
#include <fuse_lowlevel.h>
#include <node_api.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define CHECK(call)                                                        \
  do {                                                                     \
    if ((call) != napi_ok) {                                               \
      napi_throw_error(env, NULL, "cinderfs_fuse3: " #call " failed");     \
      return NULL;                                                         \
    }                                                                      \
  } while (0)

#define MAX_IOV 64
/* Ends the loop thread's sleep at unmount; a realtime signal nothing else here uses. */
#define WAKE_SIGNAL (SIGRTMIN + 3)
#define MiB (1024 * 1024)

/* ---- request slots ---------------------------------------------------- */

struct slot {
  fuse_req_t req;
  uint32_t gen;
  int busy;
  /* write: the libfuse thread waits for the reply (its buffer is the payload) */
  int waiting;
  int answered;
};

static pthread_mutex_t slots_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t answered_cond = PTHREAD_COND_INITIALIZER;
static struct slot *slots;
static uint32_t slot_count;
static uint32_t *free_slots;
static uint32_t free_count;

/* Ids are gen * 2^24 + index: exact in a JavaScript number for 2^29 generations. */
#define INDEX_BITS 24
#define INDEX_MASK ((1u << INDEX_BITS) - 1)

static uint64_t slot_open(fuse_req_t req, int waiting) {
  pthread_mutex_lock(&slots_lock);
  if (free_count == 0) {
    uint32_t grown = slot_count == 0 ? 256 : slot_count * 2;
    if (grown > INDEX_MASK + 1u) abort(); /* 16 M requests in flight: a bug, not load */
    struct slot *more = realloc(slots, grown * sizeof *slots);
    uint32_t *more_free = realloc(free_slots, grown * sizeof *free_slots);
    if (more == NULL || more_free == NULL) abort();
    slots = more;
    free_slots = more_free;
    for (uint32_t i = grown; i > slot_count; i--) {
      memset(&slots[i - 1], 0, sizeof slots[i - 1]);
      free_slots[free_count++] = i - 1;
    }
    slot_count = grown;
  }
  uint32_t index = free_slots[--free_count];
  struct slot *s = &slots[index];
  s->req = req;
  s->gen = (s->gen + 1) & ((1u << 29) - 1);
  s->busy = 1;
  s->waiting = waiting;
  s->answered = 0;
  uint64_t id = ((uint64_t)s->gen << INDEX_BITS) | index;
  pthread_mutex_unlock(&slots_lock);
  return id;
}

static void slot_free_locked(uint32_t index) {
  slots[index].busy = 0;
  slots[index].req = NULL;
  free_slots[free_count++] = index;
}

/* The request of a live id, taken for its one reply; NULL if stale. */
static fuse_req_t slot_take(uint64_t id) {
  uint32_t index = id & INDEX_MASK;
  uint32_t gen = (uint32_t)(id >> INDEX_BITS);
  fuse_req_t req = NULL;
  pthread_mutex_lock(&slots_lock);
  if (index < slot_count && slots[index].busy && slots[index].gen == gen && !slots[index].answered) {
    req = slots[index].req;
    if (slots[index].waiting) {
      slots[index].answered = 1;
      pthread_cond_broadcast(&answered_cond);
    } else {
      slot_free_locked(index);
    }
  }
  pthread_mutex_unlock(&slots_lock);
  return req;
}

static void slot_wait(uint64_t id) {
  uint32_t index = id & INDEX_MASK;
  int state;
  /* libfuse cancels its workers at exit; never while this one holds the slot lock. */
  pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, &state);
  pthread_mutex_lock(&slots_lock);
  while (!slots[index].answered) pthread_cond_wait(&answered_cond, &slots_lock);
  slot_free_locked(index);
  pthread_mutex_unlock(&slots_lock);
  pthread_setcancelstate(state, NULL);
}

/* ---- calls into JavaScript ------------------------------------------- */

struct call {
  const char *op;
  uint64_t id; /* 0: an event that takes no reply */
  fuse_ino_t ino, ino2;
  uint64_t fh;
  uint64_t a, b; /* op-specific numbers: size, offset, flags, mode, nlookup, ... */
  int64_t off;
  char *name, *name2;
  const char *data;
  size_t len;
  struct stat attr;
  int to_set;
};

static struct session {
  struct fuse_session *se;
  napi_threadsafe_function tsfn;
  pthread_t loop;
  int running;
  unsigned max_threads;
  /* notifications */
  pthread_t notifier;
  pthread_mutex_t nlock;
  pthread_cond_t ncond;
  struct notice *head, *tail;
  int stopping;
} S;

static struct call *call_new(const char *op, fuse_req_t req, fuse_ino_t ino) {
  struct call *c = calloc(1, sizeof *c);
  if (c == NULL) abort();
  c->op = op;
  c->ino = ino;
  if (req != NULL) c->id = slot_open(req, 0);
  return c;
}

static void call_free(struct call *c) {
  free(c->name);
  free(c->name2);
  free(c);
}

static char *copy_name(const char *name) {
  char *copy = strdup(name);
  if (copy == NULL) abort();
  return copy;
}

static void on_interrupt(fuse_req_t req, void *data);

static void dispatch(struct call *c) {
  if (napi_call_threadsafe_function(S.tsfn, c, napi_tsfn_blocking) != napi_ok) {
    fuse_req_t req = c->id != 0 ? slot_take(c->id) : NULL;
    if (req != NULL) fuse_reply_err(req, EIO);
    call_free(c);
  }
}

/* A request JavaScript may give up on when its caller is interrupted. */
static void dispatch_interruptible(struct call *c, fuse_req_t req) {
  fuse_req_interrupt_func(req, on_interrupt, (void *)(uintptr_t)c->id);
  dispatch(c);
}

static void on_interrupt(fuse_req_t req, void *data) {
  struct call *c = call_new("interrupt", NULL, 0);
  c->a = (uint64_t)(uintptr_t)data;
  c->b = (uint64_t)fuse_req_ctx(req)->pid;
  dispatch(c);
}

static napi_value number(napi_env env, double value) {
  napi_value out;
  napi_create_double(env, value, &out);
  return out;
}

static napi_value string(napi_env env, const char *text) {
  napi_value out;
  if (text == NULL) napi_get_null(env, &out);
  else napi_create_string_utf8(env, text, NAPI_AUTO_LENGTH, &out);
  return out;
}

static double ms_of(struct timespec t) {
  return (double)t.tv_sec * 1000.0 + (double)t.tv_nsec / 1e6;
}

/* handler(op, id, ino, a, b, fh, name, name2, data) */
static void call_js(napi_env env, napi_value handler, void *context, void *data) {
  (void)context;
  struct call *c = data;
  if (env == NULL) {
    call_free(c);
    return;
  }
  napi_value argv[9], undefined, result;
  napi_get_undefined(env, &undefined);
  argv[0] = string(env, c->op);
  argv[1] = number(env, (double)c->id);
  argv[2] = number(env, (double)c->ino);
  argv[3] = number(env, (double)c->a);
  argv[4] = number(env, (double)c->b);
  argv[5] = number(env, (double)c->fh);
  argv[6] = string(env, c->name);
  argv[7] = string(env, c->name2);
  argv[8] = undefined;
  if (c->data != NULL) {
    napi_create_external_buffer(env, c->len, (void *)c->data, NULL, NULL, &argv[8]);
  } else if (c->to_set != 0) {
    /* setattr: [mode, uid, gid, size, mtimeMs] */
    napi_value attrs;
    napi_create_array_with_length(env, 5, &attrs);
    double values[5] = { c->attr.st_mode, c->attr.st_uid, c->attr.st_gid, (double)c->attr.st_size,
                         (c->b & FUSE_SET_ATTR_MTIME_NOW) ? -1 : ms_of(c->attr.st_mtim) };
    for (uint32_t i = 0; i < 5; i++) napi_set_element(env, attrs, i, number(env, values[i]));
    argv[8] = attrs;
  }
  if (c->ino2 != 0) argv[4] = number(env, (double)c->ino2);
  napi_status status = napi_call_function(env, undefined, handler, 9, argv, &result);
  if (status == napi_pending_exception) {
    /* The adapter catches its own errors; anything reaching here is a bug: fail the request, say so. */
    napi_value err;
    napi_get_and_clear_last_exception(env, &err);
    fprintf(stderr, "cinderfs_fuse3: handler threw on %s\n", c->op);
    fuse_req_t req = c->id != 0 ? slot_take(c->id) : NULL;
    if (req != NULL) fuse_reply_err(req, EIO);
  }
  call_free(c);
}

/* ---- low-level operations --------------------------------------------- */

static void op_init(void *userdata, struct fuse_conn_info *conn) {
  (void)userdata;
  /* 1 MiB writes (libfuse asks the kernel for max_pages to match; reads follow max_pages). */
  conn->max_write = MiB;
  conn->max_readahead = MiB;
  /* Plain buffers: spliced writes would be copied into a fresh malloc per request. */
  conn->want &= ~(FUSE_CAP_SPLICE_READ | FUSE_CAP_SPLICE_WRITE | FUSE_CAP_SPLICE_MOVE);
  if (conn->capable & FUSE_CAP_READDIRPLUS) conn->want |= FUSE_CAP_READDIRPLUS;
  /* readdirplus on every listing, not only when the kernel guesses it helps: ls -l, rsync. */
  conn->want &= ~FUSE_CAP_READDIRPLUS_AUTO;
  if (conn->capable & FUSE_CAP_PARALLEL_DIROPS) conn->want |= FUSE_CAP_PARALLEL_DIROPS;
  /* O_DIRECT reads as plain requests: a reader then waits interruptibly, and a kill reaches us as an interrupt. */
  conn->want &= ~FUSE_CAP_ASYNC_DIO;
  /* An image's pages stay until we say otherwise: sealed images never change. */
  conn->want &= ~FUSE_CAP_AUTO_INVAL_DATA;
}

static void op_lookup(fuse_req_t req, fuse_ino_t parent, const char *name) {
  struct call *c = call_new("lookup", req, parent);
  c->name = copy_name(name);
  dispatch_interruptible(c, req);
}

static void op_forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup) {
  struct call *c = call_new("forget", NULL, ino);
  c->a = nlookup;
  dispatch(c);
  fuse_reply_none(req);
}

static void op_forget_multi(fuse_req_t req, size_t count, struct fuse_forget_data *forgets) {
  for (size_t i = 0; i < count; i++) {
    struct call *c = call_new("forget", NULL, forgets[i].ino);
    c->a = forgets[i].nlookup;
    dispatch(c);
  }
  fuse_reply_none(req);
}

static void with_fh(struct call *c, struct fuse_file_info *fi) {
  if (fi != NULL) c->fh = fi->fh;
}

static void op_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
  struct call *c = call_new("getattr", req, ino);
  with_fh(c, fi);
  dispatch_interruptible(c, req);
}

static void op_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int to_set, struct fuse_file_info *fi) {
  struct call *c = call_new("setattr", req, ino);
  with_fh(c, fi);
  c->a = fi != NULL;
  c->attr = *attr;
  c->b = (uint64_t)to_set;
  c->to_set = 1;
  dispatch(c);
}

static void op_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
  struct call *c = call_new("opendir", req, ino);
  c->a = fi->flags;
  dispatch(c);
}

static void readdir_common(const char *op, fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi) {
  struct call *c = call_new(op, req, ino);
  c->a = size;
  c->b = (uint64_t)off;
  with_fh(c, fi);
  dispatch_interruptible(c, req);
}

static void op_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi) {
  readdir_common("readdir", req, ino, size, off, fi);
}

static void op_readdirplus(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi) {
  readdir_common("readdirplus", req, ino, size, off, fi);
}

static void op_releasedir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
  struct call *c = call_new("releasedir", req, ino);
  with_fh(c, fi);
  dispatch(c);
}

static void op_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
  struct call *c = call_new("open", req, ino);
  c->a = fi->flags;
  dispatch_interruptible(c, req);
}

static void op_create(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode, struct fuse_file_info *fi) {
  struct call *c = call_new("create", req, parent);
  c->name = copy_name(name);
  c->a = fi->flags;
  c->b = mode;
  dispatch(c);
}

static void op_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi) {
  struct call *c = call_new("read", req, ino);
  c->a = size;
  c->b = (uint64_t)off;
  with_fh(c, fi);
  dispatch_interruptible(c, req);
}

static void op_write(fuse_req_t req, fuse_ino_t ino, const char *buf, size_t size, off_t off, struct fuse_file_info *fi) {
  struct call *c = calloc(1, sizeof *c);
  if (c == NULL) abort();
  c->op = "write";
  c->ino = ino;
  c->id = slot_open(req, 1);
  c->b = (uint64_t)off;
  c->data = buf;
  c->len = size;
  with_fh(c, fi);
  uint64_t id = c->id;
  dispatch(c);
  /* buf is this thread's receive buffer: keep it until JavaScript has answered. */
  slot_wait(id);
}

static void simple_fh_op(const char *op, fuse_req_t req, fuse_ino_t ino, uint64_t a, struct fuse_file_info *fi) {
  struct call *c = call_new(op, req, ino);
  c->a = a;
  with_fh(c, fi);
  dispatch(c);
}

static void op_flush(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
  simple_fh_op("flush", req, ino, 0, fi);
}

static void op_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
  simple_fh_op("release", req, ino, 0, fi);
}

static void op_fsync(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi) {
  simple_fh_op("fsync", req, ino, (uint64_t)datasync, fi);
}

static void named_op(const char *op, fuse_req_t req, fuse_ino_t parent, const char *name, const char *name2, uint64_t a) {
  struct call *c = call_new(op, req, parent);
  c->name = copy_name(name);
  if (name2 != NULL) c->name2 = copy_name(name2);
  c->a = a;
  dispatch(c);
}

static void op_unlink(fuse_req_t req, fuse_ino_t parent, const char *name) {
  named_op("unlink", req, parent, name, NULL, 0);
}

static void op_rmdir(fuse_req_t req, fuse_ino_t parent, const char *name) {
  named_op("rmdir", req, parent, name, NULL, 0);
}

static void op_mkdir(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode) {
  named_op("mkdir", req, parent, name, NULL, mode);
}

static void op_mknod(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode, dev_t rdev) {
  (void)rdev;
  named_op("mknod", req, parent, name, NULL, mode);
}

static void op_symlink(fuse_req_t req, const char *link, fuse_ino_t parent, const char *name) {
  named_op("symlink", req, parent, name, link, 0);
}

static void op_link(fuse_req_t req, fuse_ino_t ino, fuse_ino_t newparent, const char *newname) {
  named_op("link", req, newparent, newname, NULL, ino);
}

static void op_rename(fuse_req_t req, fuse_ino_t parent, const char *name, fuse_ino_t newparent, const char *newname, unsigned int flags) {
  struct call *c = call_new("rename", req, parent);
  c->name = copy_name(name);
  c->name2 = copy_name(newname);
  c->ino2 = newparent;
  c->a = flags;
  dispatch(c);
}

static void op_statfs(fuse_req_t req, fuse_ino_t ino) {
  dispatch(call_new("statfs", req, ino));
}

static void op_getxattr(fuse_req_t req, fuse_ino_t ino, const char *name, size_t size) {
  named_op("getxattr", req, ino, name, NULL, size);
}

static void op_listxattr(fuse_req_t req, fuse_ino_t ino, size_t size) {
  struct call *c = call_new("listxattr", req, ino);
  c->a = size;
  dispatch(c);
}

static void op_removexattr(fuse_req_t req, fuse_ino_t ino, const char *name) {
  named_op("removexattr", req, ino, name, NULL, 0);
}

static void op_setxattr(fuse_req_t req, fuse_ino_t ino, const char *name, const char *value, size_t size, int flags) {
  struct call *c = call_new("setxattr", req, ino);
  c->name = copy_name(name);
  /* A copy: the value is small and the request is answered asynchronously. */
  char *copy = malloc(size + 1);
  if (copy == NULL) abort();
  memcpy(copy, value, size);
  copy[size] = '\0';
  c->name2 = copy;
  c->a = (uint64_t)flags;
  c->b = size;
  dispatch(c);
}

static const struct fuse_lowlevel_ops ops = {
  .init = op_init,
  .lookup = op_lookup,
  .forget = op_forget,
  .forget_multi = op_forget_multi,
  .getattr = op_getattr,
  .setattr = op_setattr,
  .opendir = op_opendir,
  .readdir = op_readdir,
  .readdirplus = op_readdirplus,
  .releasedir = op_releasedir,
  .open = op_open,
  .create = op_create,
  .read = op_read,
  .write = op_write,
  .flush = op_flush,
  .release = op_release,
  .fsync = op_fsync,
  .unlink = op_unlink,
  .rmdir = op_rmdir,
  .mkdir = op_mkdir,
  .mknod = op_mknod,
  .symlink = op_symlink,
  .link = op_link,
  .rename = op_rename,
  .statfs = op_statfs,
  .getxattr = op_getxattr,
  .listxattr = op_listxattr,
  .setxattr = op_setxattr,
  .removexattr = op_removexattr,
};

/* ---- notifications ---------------------------------------------------- */

struct notice {
  struct notice *next;
  fuse_ino_t ino;
  char *name; /* NULL: invalidate the inode's data and attributes */
};

static void *notify_loop(void *unused) {
  (void)unused;
  pthread_mutex_lock(&S.nlock);
  for (;;) {
    while (S.head == NULL && !S.stopping) pthread_cond_wait(&S.ncond, &S.nlock);
    struct notice *n = S.head;
    if (n == NULL) break;
    S.head = n->next;
    if (S.head == NULL) S.tail = NULL;
    pthread_mutex_unlock(&S.nlock);
    /* ENOENT: the kernel no longer has it cached, which is what we wanted. */
    if (n->name != NULL) fuse_lowlevel_notify_inval_entry(S.se, n->ino, n->name, strlen(n->name));
    else fuse_lowlevel_notify_inval_inode(S.se, n->ino, 0, 0);
    free(n->name);
    free(n);
    pthread_mutex_lock(&S.nlock);
  }
  pthread_mutex_unlock(&S.nlock);
  return NULL;
}

static void on_wake(int sig) {
  (void)sig;
}

static void *session_loop(void *unused) {
  (void)unused;
  struct fuse_loop_config *config = fuse_loop_cfg_create();
  fuse_loop_cfg_set_clone_fd(config, 0);
  fuse_loop_cfg_set_max_threads(config, S.max_threads);
  fuse_loop_cfg_set_idle_threads(config, 4);
  int res = fuse_session_loop_mt(S.se, config);
  fuse_loop_cfg_destroy(config);
  __atomic_store_n(&S.running, 0, __ATOMIC_SEQ_CST);
  struct call *c = call_new("exit", NULL, 0);
  c->a = (uint64_t)(res < 0 ? -res : res);
  dispatch(c);
  return NULL;
}

/* ---- JavaScript API ---------------------------------------------------- */

static int get_args(napi_env env, napi_callback_info info, size_t want, napi_value *argv) {
  size_t argc = want;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < want) {
    napi_throw_type_error(env, NULL, "cinderfs_fuse3: too few arguments");
    return 0;
  }
  return 1;
}

static int get_double(napi_env env, napi_value value, double *out) {
  if (napi_get_value_double(env, value, out) != napi_ok) {
    napi_throw_type_error(env, NULL, "cinderfs_fuse3: expected a number");
    return 0;
  }
  return 1;
}

static int get_u64(napi_env env, napi_value value, uint64_t *out) {
  double d;
  if (!get_double(env, value, &d)) return 0;
  if (!(d >= 0 && d <= 9007199254740991.0)) {
    napi_throw_range_error(env, NULL, "cinderfs_fuse3: expected a non-negative integer");
    return 0;
  }
  *out = (uint64_t)d;
  return 1;
}

/* Copies a JS string into buf (NUL-terminated); fails when it does not fit. */
static int get_string(napi_env env, napi_value value, char *buf, size_t size) {
  size_t len;
  if (napi_get_value_string_utf8(env, value, NULL, 0, &len) != napi_ok || len + 1 > size) {
    napi_throw_type_error(env, NULL, "cinderfs_fuse3: expected a string that fits");
    return 0;
  }
  napi_get_value_string_utf8(env, value, buf, size, &len);
  return 1;
}

static int session_ready(napi_env env) {
  if (S.se == NULL) {
    napi_throw_error(env, NULL, "cinderfs_fuse3: not mounted");
    return 0;
  }
  return 1;
}

/* A request to answer, or a JS exception (stale id: answered already, or never ours). */
static fuse_req_t take(napi_env env, napi_value value) {
  uint64_t id;
  if (!get_u64(env, value, &id)) return NULL;
  fuse_req_t req = slot_take(id);
  if (req == NULL) napi_throw_error(env, "ESTALE", "cinderfs_fuse3: no request with this id is waiting for a reply");
  return req;
}

/* attr: [ino, mode, nlink, uid, gid, size, blocks, blksize, mtimeMs] */
static int get_attr(napi_env env, napi_value array, struct stat *st) {
  double v[9];
  for (uint32_t i = 0; i < 9; i++) {
    napi_value element;
    if (napi_get_element(env, array, i, &element) != napi_ok || !get_double(env, element, &v[i])) return 0;
  }
  memset(st, 0, sizeof *st);
  st->st_ino = (ino_t)v[0];
  st->st_mode = (mode_t)v[1];
  st->st_nlink = (nlink_t)v[2];
  st->st_uid = (uid_t)v[3];
  st->st_gid = (gid_t)v[4];
  st->st_size = (off_t)v[5];
  st->st_blocks = (blkcnt_t)v[6];
  st->st_blksize = (blksize_t)v[7];
  st->st_mtim.tv_sec = (time_t)(v[8] / 1000);
  st->st_mtim.tv_nsec = (long)((v[8] - (double)st->st_mtim.tv_sec * 1000) * 1e6);
  st->st_atim = st->st_mtim;
  st->st_ctim = st->st_mtim;
  return 1;
}

/* entry: [ino, generation, attr, entryTimeout, attrTimeout] */
static int get_entry(napi_env env, napi_value array, struct fuse_entry_param *e) {
  napi_value v[5];
  for (uint32_t i = 0; i < 5; i++) {
    if (napi_get_element(env, array, i, &v[i]) != napi_ok) return 0;
  }
  uint64_t ino, gen;
  memset(e, 0, sizeof *e);
  if (!get_u64(env, v[0], &ino) || !get_u64(env, v[1], &gen)) return 0;
  e->ino = ino;
  e->generation = gen;
  napi_valuetype type;
  if (napi_typeof(env, v[2], &type) != napi_ok) return 0;
  if (type != napi_null && !get_attr(env, v[2], &e->attr)) return 0;
  return get_double(env, v[3], &e->entry_timeout) && get_double(env, v[4], &e->attr_timeout);
}

/* mount(mountpoint, options, handler, maxThreads) */
static napi_value js_mount(napi_env env, napi_callback_info info) {
  napi_value argv[4];
  if (!get_args(env, info, 4, argv)) return NULL;
  if (S.se != NULL) {
    napi_throw_error(env, NULL, "cinderfs_fuse3: one mount per process");
    return NULL;
  }
  char mountpoint[4096], options[4096];
  double threads;
  if (!get_string(env, argv[0], mountpoint, sizeof mountpoint) || !get_string(env, argv[1], options, sizeof options)) return NULL;
  if (!get_double(env, argv[3], &threads)) return NULL;
  char *args_v[] = { "cinderfs", "-o", options, NULL };
  struct fuse_args args = FUSE_ARGS_INIT(3, args_v);
  struct fuse_session *se = fuse_session_new(&args, &ops, sizeof ops, NULL);
  if (se == NULL) {
    napi_throw_error(env, "EINVAL", "cinderfs_fuse3: fuse_session_new failed (bad mount options?)");
    return NULL;
  }
  if (fuse_session_mount(se, mountpoint) != 0) {
    fuse_session_destroy(se);
    napi_throw_error(env, "EIO", "cinderfs_fuse3: fuse_session_mount failed");
    return NULL;
  }
  napi_value name;
  CHECK(napi_create_string_utf8(env, "cinderfs_fuse3", NAPI_AUTO_LENGTH, &name));
  CHECK(napi_create_threadsafe_function(env, argv[2], NULL, name, 0, 1, NULL, NULL, NULL, call_js, &S.tsfn));
  S.se = se;
  S.max_threads = threads >= 1 && threads <= 64 ? (unsigned)threads : 8;
  S.stopping = 0;
  struct sigaction wake;
  memset(&wake, 0, sizeof wake);
  wake.sa_handler = on_wake;
  sigemptyset(&wake.sa_mask);
  sigaction(WAKE_SIGNAL, &wake, NULL);
  pthread_mutex_init(&S.nlock, NULL);
  pthread_cond_init(&S.ncond, NULL);
  S.running = 1;
  if (pthread_create(&S.notifier, NULL, notify_loop, NULL) != 0 || pthread_create(&S.loop, NULL, session_loop, NULL) != 0) abort();
  return NULL;
}

/*
 * unmount(): ends the session: a lazy unmount, then the loop is woken. Its
 * main thread sleeps in sem_wait until a worker posts; a signal ends that
 * sleep, it sees the session exited and cancels the workers (blocked in
 * read on /dev/fuse, which an unmount need not end: another mount namespace
 * may still hold the mount). The wake-up may land just before the sleep, so
 * the caller repeats this until the "exit" event.
 */
static napi_value js_unmount(napi_env env, napi_callback_info info) {
  (void)info;
  if (!session_ready(env)) return NULL;
  fuse_session_exit(S.se);
  fuse_session_unmount(S.se);
  if (__atomic_load_n(&S.running, __ATOMIC_SEQ_CST)) pthread_kill(S.loop, WAKE_SIGNAL);
  return NULL;
}

/* close(): after the "exit" event: joins the threads and frees the session. */
static napi_value js_close(napi_env env, napi_callback_info info) {
  (void)info;
  if (!session_ready(env)) return NULL;
  pthread_join(S.loop, NULL);
  pthread_mutex_lock(&S.nlock);
  S.stopping = 1;
  pthread_cond_signal(&S.ncond);
  pthread_mutex_unlock(&S.nlock);
  pthread_join(S.notifier, NULL);
  fuse_session_unmount(S.se);
  fuse_session_destroy(S.se);
  S.se = NULL;
  napi_release_threadsafe_function(S.tsfn, napi_tsfn_release);
  return NULL;
}

static napi_value js_reply_err(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  double errnum;
  if (!get_args(env, info, 2, argv) || !get_double(env, argv[1], &errnum)) return NULL;
  fuse_req_t req = take(env, argv[0]);
  if (req != NULL) fuse_reply_err(req, (int)errnum);
  return NULL;
}

/* replyEntry(id, [ino, gen, attr, entryTimeout, attrTimeout]) */
static napi_value js_reply_entry(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  struct fuse_entry_param e;
  if (!get_args(env, info, 2, argv) || !get_entry(env, argv[1], &e)) return NULL;
  fuse_req_t req = take(env, argv[0]);
  if (req != NULL) fuse_reply_entry(req, &e);
  return NULL;
}

static napi_value js_reply_attr(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  struct stat st;
  double timeout;
  if (!get_args(env, info, 3, argv) || !get_attr(env, argv[1], &st) || !get_double(env, argv[2], &timeout)) return NULL;
  fuse_req_t req = take(env, argv[0]);
  if (req != NULL) fuse_reply_attr(req, &st, timeout);
  return NULL;
}

/* false when the caller is gone (interrupted): nobody will release the handle, the adapter must. */
static napi_value delivered(napi_env env, bool ok) {
  napi_value out;
  napi_get_boolean(env, ok, &out);
  return out;
}

/* flags: 1 direct_io, 2 keep_cache */
static int get_open(napi_env env, napi_value fh_value, napi_value flags_value, struct fuse_file_info *fi) {
  uint64_t fh, flags;
  if (!get_u64(env, fh_value, &fh) || !get_u64(env, flags_value, &flags)) return 0;
  memset(fi, 0, sizeof *fi);
  fi->fh = fh;
  fi->direct_io = (flags & 1) != 0;
  fi->keep_cache = (flags & 2) != 0;
  return 1;
}

/* replyOpen(id, fh, flags) */
static napi_value js_reply_open(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  struct fuse_file_info fi;
  if (!get_args(env, info, 3, argv) || !get_open(env, argv[1], argv[2], &fi)) return NULL;
  fuse_req_t req = take(env, argv[0]);
  return delivered(env, req != NULL && fuse_reply_open(req, &fi) == 0);
}

/* replyCreate(id, entry, fh, flags) */
static napi_value js_reply_create(napi_env env, napi_callback_info info) {
  napi_value argv[4];
  struct fuse_entry_param e;
  struct fuse_file_info fi;
  if (!get_args(env, info, 4, argv) || !get_entry(env, argv[1], &e) || !get_open(env, argv[2], argv[3], &fi)) return NULL;
  fuse_req_t req = take(env, argv[0]);
  return delivered(env, req != NULL && fuse_reply_create(req, &e, &fi) == 0);
}

/* replyData(id, Buffer | Buffer[]): the bytes go to the kernel straight from the Buffers. */
static napi_value js_reply_data(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  if (!get_args(env, info, 2, argv)) return NULL;
  struct iovec iov[MAX_IOV];
  uint32_t count = 0;
  bool is_array = false;
  napi_is_array(env, argv[1], &is_array);
  if (is_array) {
    CHECK(napi_get_array_length(env, argv[1], &count));
    if (count > MAX_IOV) {
      napi_throw_range_error(env, NULL, "cinderfs_fuse3: too many buffers in one reply");
      return NULL;
    }
  } else {
    count = 1;
  }
  for (uint32_t i = 0; i < count; i++) {
    napi_value element = argv[1];
    bool is_buffer = false;
    if (is_array) CHECK(napi_get_element(env, argv[1], i, &element));
    napi_is_buffer(env, element, &is_buffer);
    if (!is_buffer) {
      napi_throw_type_error(env, NULL, "cinderfs_fuse3: replyData wants Buffers");
      return NULL;
    }
    CHECK(napi_get_buffer_info(env, element, &iov[i].iov_base, &iov[i].iov_len));
  }
  fuse_req_t req = take(env, argv[0]);
  if (req != NULL) fuse_reply_iov(req, iov, (int)count);
  return NULL;
}

/* (id, count) → a reply that carries one count: replyWrite, replyXattrSize. */
static napi_value reply_count(napi_env env, napi_callback_info info, int (*send)(fuse_req_t, size_t)) {
  napi_value argv[2];
  uint64_t count;
  if (!get_args(env, info, 2, argv) || !get_u64(env, argv[1], &count)) return NULL;
  fuse_req_t req = take(env, argv[0]);
  if (req != NULL) send(req, count);
  return NULL;
}

static napi_value js_reply_write(napi_env env, napi_callback_info info) {
  return reply_count(env, info, fuse_reply_write);
}

static napi_value js_reply_xattr_size(napi_env env, napi_callback_info info) {
  return reply_count(env, info, fuse_reply_xattr);
}

/* replyStatfs(id, [bsize, frsize, blocks, bfree, bavail, files, ffree, namemax]) */
static napi_value js_reply_statfs(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  if (!get_args(env, info, 2, argv)) return NULL;
  double v[8];
  for (uint32_t i = 0; i < 8; i++) {
    napi_value element;
    if (napi_get_element(env, argv[1], i, &element) != napi_ok || !get_double(env, element, &v[i])) return NULL;
  }
  struct statvfs st;
  memset(&st, 0, sizeof st);
  st.f_bsize = (unsigned long)v[0];
  st.f_frsize = (unsigned long)v[1];
  st.f_blocks = (fsblkcnt_t)v[2];
  st.f_bfree = (fsblkcnt_t)v[3];
  st.f_bavail = (fsblkcnt_t)v[4];
  st.f_files = (fsfilcnt_t)v[5];
  st.f_ffree = (fsfilcnt_t)v[6];
  st.f_favail = (fsfilcnt_t)v[6];
  st.f_namemax = (unsigned long)v[7];
  fuse_req_t req = take(env, argv[0]);
  if (req != NULL) fuse_reply_statfs(req, &st);
  return NULL;
}

/*
 * replyDirectory(id, size, plus, entries) → how many entries went in.
 * entries: [name, nextOffset, entry] with entry as for replyEntry (attr[1]
 * gives the type for plain readdir). Fills at most `size` bytes: for
 * readdirplus each entry that went in is a lookup the kernel now holds.
 */
static napi_value js_reply_directory(napi_env env, napi_callback_info info) {
  napi_value argv[4];
  uint64_t size;
  bool plus;
  uint32_t count;
  if (!get_args(env, info, 4, argv) || !get_u64(env, argv[1], &size)) return NULL;
  CHECK(napi_get_value_bool(env, argv[2], &plus));
  CHECK(napi_get_array_length(env, argv[3], &count));
  if (size > MiB) size = MiB;
  char *buf = malloc(size == 0 ? 1 : size);
  if (buf == NULL) abort();
  size_t used = 0;
  uint32_t added = 0;
  for (; added < count; added++) {
    napi_value item, name_v, off_v, entry_v;
    char name[1024];
    uint64_t next;
    struct fuse_entry_param e;
    if (napi_get_element(env, argv[3], added, &item) != napi_ok ||
        napi_get_element(env, item, 0, &name_v) != napi_ok ||
        napi_get_element(env, item, 1, &off_v) != napi_ok ||
        napi_get_element(env, item, 2, &entry_v) != napi_ok ||
        !get_string(env, name_v, name, sizeof name) || !get_u64(env, off_v, &next) || !get_entry(env, entry_v, &e)) {
      free(buf);
      return NULL;
    }
    size_t need = plus
      ? fuse_add_direntry_plus(NULL, NULL, 0, name, &e, (off_t)next)
      : fuse_add_direntry(NULL, NULL, 0, name, &e.attr, (off_t)next);
    if (used + need > size) break;
    if (plus) fuse_add_direntry_plus(NULL, buf + used, size - used, name, &e, (off_t)next);
    else fuse_add_direntry(NULL, buf + used, size - used, name, &e.attr, (off_t)next);
    used += need;
  }
  fuse_req_t req = take(env, argv[0]);
  if (req == NULL) {
    free(buf);
    return NULL;
  }
  fuse_reply_buf(req, buf, used);
  free(buf);
  napi_value out;
  CHECK(napi_create_uint32(env, added, &out));
  return out;
}

/* invalidate(ino, name | null): queued for the notifier thread. */
static napi_value js_invalidate(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  uint64_t ino;
  napi_valuetype type;
  if (!get_args(env, info, 2, argv) || !get_u64(env, argv[0], &ino) || !session_ready(env)) return NULL;
  struct notice *n = calloc(1, sizeof *n);
  if (n == NULL) abort();
  n->ino = ino;
  CHECK(napi_typeof(env, argv[1], &type));
  if (type == napi_string) {
    char name[1024];
    if (!get_string(env, argv[1], name, sizeof name)) {
      free(n);
      return NULL;
    }
    n->name = copy_name(name);
  }
  pthread_mutex_lock(&S.nlock);
  if (S.tail != NULL) S.tail->next = n;
  else S.head = n;
  S.tail = n;
  pthread_cond_signal(&S.ncond);
  pthread_mutex_unlock(&S.nlock);
  return NULL;
}

static napi_value init(napi_env env, napi_value exports) {
  const napi_property_descriptor props[] = {
    { "mount", NULL, js_mount, NULL, NULL, NULL, napi_default, NULL },
    { "unmount", NULL, js_unmount, NULL, NULL, NULL, napi_default, NULL },
    { "close", NULL, js_close, NULL, NULL, NULL, napi_default, NULL },
    { "replyErr", NULL, js_reply_err, NULL, NULL, NULL, napi_default, NULL },
    { "replyEntry", NULL, js_reply_entry, NULL, NULL, NULL, napi_default, NULL },
    { "replyAttr", NULL, js_reply_attr, NULL, NULL, NULL, napi_default, NULL },
    { "replyOpen", NULL, js_reply_open, NULL, NULL, NULL, napi_default, NULL },
    { "replyCreate", NULL, js_reply_create, NULL, NULL, NULL, napi_default, NULL },
    { "replyData", NULL, js_reply_data, NULL, NULL, NULL, napi_default, NULL },
    { "replyWrite", NULL, js_reply_write, NULL, NULL, NULL, napi_default, NULL },
    { "replyXattrSize", NULL, js_reply_xattr_size, NULL, NULL, NULL, napi_default, NULL },
    { "replyStatfs", NULL, js_reply_statfs, NULL, NULL, NULL, napi_default, NULL },
    { "replyDirectory", NULL, js_reply_directory, NULL, NULL, NULL, napi_default, NULL },
    { "invalidate", NULL, js_invalidate, NULL, NULL, NULL, napi_default, NULL },
  };
  napi_define_properties(env, exports, sizeof props / sizeof props[0], props);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
