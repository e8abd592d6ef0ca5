/*
 * cinderfs libiscsi binding: a userspace iSCSI initiator for Node, in plain
 * node_api.h C. No kernel initiator, no iscsiadm, no root.
 *
 * Everything runs on the JS thread. libiscsi is single-threaded and
 * non-blocking: its socket is watched with a uv_poll (events from
 * iscsi_which_events, work done by iscsi_service), and a uv_timer ticks
 * every 250 ms for libiscsi's own PDU timeouts, our per-request deadlines,
 * retries and reconnects. Completions are settled inside a callback scope,
 * so promise continuations run when the uv callback returns, never while
 * libiscsi is in the middle of iscsi_service.
 *
 * Reconnect is ours, not libiscsi's (iscsi_set_noautoreconnect): its own
 * reconnect blocks in sleep() and swaps the socket under the fd number we
 * poll. When the connection fails we destroy the context (libiscsi then
 * cancels the tasks in flight), log in again on the next path (multipath:
 * portal, target, LUN), and resubmit every request not yet completed.
 * Every request keeps the deadline it got when it was first submitted: past
 * it, it fails EIO, so nothing waits forever. A read reads straight into the
 * caller's buffer; one that is given up on is first cancelled in libiscsi,
 * which then no longer writes into that buffer.
 *
 * I/O is whole logical blocks (the JS connector aligns), bounds-checked
 * here against the LUN's capacity and the buffer.
 *
 * Errors are Error objects with `code` (the errno name) and `errno`
 * (negative), like Node's own system errors. CHAP secrets are kept only for
 * logins and never appear in messages.
 */
#define NAPI_VERSION 8
#include <errno.h>
#include <iscsi/iscsi.h>
#include <iscsi/scsi-lowlevel.h>
#include <node_api.h>
#include <poll.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "napi-util.h"

#define TICK_MS 250
/* Largest single transfer when the LUN's block limits name none. */
#define DEFAULT_MAX_TRANSFER (8u << 20)
/* Retries of a command the target asked to repeat (UNIT ATTENTION, BUSY). */
#define MAX_RETRIES 16
#define LOGOUT_MS 2000

#define CHECK(env, call)                                 \
  do {                                                   \
    if ((call) != napi_ok) return throw_last_error(env);    \
  } while (0)

static long live_luns, live_requests;
static napi_ref lun_ctor;

typedef struct {
  char *portal, *target;
  int lun;
} path_t;

typedef enum { ST_CONNECTING, ST_READY, ST_DOWN, ST_LOGOUT, ST_CLOSED } state_t;
typedef enum { OP_READ, OP_WRITE, OP_FLUSH, OP_UNMAP, OP_CAPACITY, OP_LIMITS } op_t;

struct lun;

typedef struct req {
  struct req *prev, *next;
  struct lun *l;
  op_t op;
  uint64_t lba;
  uint32_t blocks;
  unsigned char *data;
  struct scsi_task *task; /* NULL while waiting for a (re)connect or a retry */
  uint64_t deadline, retry_at;
  int retries;
  bool given_up; /* past its deadline: cancelled in libiscsi, failing EIO */
  napi_deferred deferred; /* NULL for the connect sequence's own commands */
  napi_ref self, buffer;
} req_t;

typedef struct lun {
  napi_env env;
  napi_async_context async;
  struct iscsi_context *iscsi; /* NULL while down */
  uv_poll_t *poll;
  int poll_events;
  uv_timer_t timer;
  bool timer_referenced;
  state_t state;
  path_t *paths;
  int npaths, path;   /* path: the one in use or being tried */
  int tried;          /* paths tried in this round of reconnects */
  bool need_reconnect;
  uint64_t connect_deadline, reconnect_at;
  char *initiator, *user, *password, *target_user, *target_password;
  int timeout_s;
  bool read_only, opened, thin;
  uint64_t blocks;
  uint32_t block_size, max_transfer;
  req_t *requests;
  int count;
  /* connect(): until the first login and READ CAPACITY */
  napi_deferred opening;
  int open_err;
  char open_msg[256];
  /* close() */
  napi_deferred closing;
  bool close_requested;
  uint64_t logout_deadline;
  napi_ref self_while_closing;
  int handles; /* open uv handles (timer, poll) plus the JS object; freed at 0 */
  /* inside a call into libiscsi, whose callbacks must not destroy its context */
  int in_libiscsi;
  bool close_pending;
} lun_t;

/* ------------------------------------------------------------- plumbing */

static uint64_t now_ms(void) { return uv_now(uv_default_loop()); }

static napi_value settled(napi_env env, int err, const char *what, double value) {
  napi_value promise, result;
  napi_deferred deferred;
  CHECK(env, napi_create_promise(env, &deferred, &promise));
  if (err < 0) {
    napi_reject_deferred(env, deferred, errno_error(env, what, NULL, err));
  } else {
    napi_create_double(env, value, &result);
    napi_resolve_deferred(env, deferred, result);
  }
  return promise;
}

/* A login failure in libiscsi's words mapped to errno (its API gives only text). */
static int login_errno(const char *text) {
  if (strstr(text, "Authentication failure") || strstr(text, "Authorization failure")) return -EACCES;
  if (strstr(text, "Target not found") || strstr(text, "Target removed")) return -ENOENT;
  if (strstr(text, "LOGICAL_UNIT_NOT_SUPPORTED") || strstr(text, "not supported")) return -ENXIO;
  if (strstr(text, "refused")) return -ECONNREFUSED;
  return -EIO;
}

/* What a failed SCSI command means to the caller; 0: ask again. */
static int sense_errno(const struct scsi_sense *sense) {
  switch (sense->key) {
  case SCSI_SENSE_UNIT_ATTENTION: return 0; /* reset, capacity changed...: the command was not run */
  case SCSI_SENSE_NOT_READY: return 0;
  case SCSI_SENSE_DATA_PROTECTION: return -EROFS;
  case SCSI_SENSE_ILLEGAL_REQUEST:
    if (sense->ascq == SCSI_SENSE_ASCQ_LOGICAL_UNIT_NOT_SUPPORTED) return -ENXIO;
    if (sense->ascq == SCSI_SENSE_ASCQ_LBA_OUT_OF_RANGE) return -EFBIG;
    if (sense->ascq == SCSI_SENSE_ASCQ_INVALID_OPERATION_CODE) return -EOPNOTSUPP;
    return -EINVAL;
  default: return -EIO;
  }
}

static const char *op_name(op_t op) {
  switch (op) {
  case OP_READ: return "iscsi read16";
  case OP_WRITE: return "iscsi write16";
  case OP_FLUSH: return "iscsi synchronizecache16";
  case OP_UNMAP: return "iscsi unmap";
  case OP_CAPACITY: return "iscsi readcapacity16";
  case OP_LIMITS: return "iscsi inquiry";
  }
  return "iscsi";
}

/* ------------------------------------------------------------ lifetimes */

static void lun_free(lun_t *l) {
  for (int i = 0; i < l->npaths; i++) {
    free(l->paths[i].portal);
    free(l->paths[i].target);
  }
  free(l->paths);
  free(l->initiator);
  free(l->user);
  free(l->password);
  free(l->target_user);
  free(l->target_password);
  if (l->async) napi_async_destroy(l->env, l->async);
  free(l);
  live_luns--;
}

static void lun_unref(lun_t *l) {
  if (--l->handles == 0) lun_free(l);
}

static void on_handle_closed(uv_handle_t *h) {
  lun_t *l = h->data;
  if ((void *)h != (void *)&l->timer) free(h);
  lun_unref(l);
}

static void on_poll(uv_poll_t *h, int status, int events);

/* Watches what libiscsi wants now; called after every call into libiscsi. */
static void update_poll(lun_t *l) {
  int want, events;
  if (!l->iscsi || !l->poll) return;
  want = iscsi_which_events(l->iscsi);
  events = (want & POLLIN ? UV_READABLE : 0) | (want & POLLOUT ? UV_WRITABLE : 0);
  if (events == l->poll_events) return;
  l->poll_events = events;
  if (events) uv_poll_start(l->poll, events, on_poll);
  else uv_poll_stop(l->poll); /* libiscsi waits for a reconnect timer: the tick calls back */
}

/* Tears the connection down; libiscsi cancels the commands in flight (our callback keeps them). */
static void drop_connection(lun_t *l) {
  struct iscsi_context *iscsi = l->iscsi;
  if (l->poll) {
    uv_close((uv_handle_t *)l->poll, on_handle_closed); /* before the fd is closed */
    l->poll = NULL;
    l->poll_events = 0;
  }
  l->iscsi = NULL;
  l->need_reconnect = false;
  if (iscsi) {
    l->in_libiscsi++;
    iscsi_destroy_context(iscsi);
    l->in_libiscsi--;
  }
}

/* Keeps Node alive only while something is pending, as a socket with a request would. */
static void update_ref(lun_t *l) {
  bool busy = l->count > 0 || l->opening || l->state == ST_LOGOUT;
  if (busy == l->timer_referenced) return;
  l->timer_referenced = busy;
  if (busy) uv_ref((uv_handle_t *)&l->timer);
  else uv_unref((uv_handle_t *)&l->timer);
  if (l->poll) {
    if (busy) uv_ref((uv_handle_t *)l->poll);
    else uv_unref((uv_handle_t *)l->poll);
  }
}

/* ------------------------------------------------------------- requests */

static void on_task(struct iscsi_context *iscsi, int status, void *command_data, void *private_data);
static void start_connect(lun_t *l);
static void opened(lun_t *l, int err, const char *detail);
static void finish_close(lun_t *l);

static void req_unlink(req_t *r) {
  lun_t *l = r->l;
  if (r->prev) r->prev->next = r->next;
  else l->requests = r->next;
  if (r->next) r->next->prev = r->prev;
  l->count--;
  live_requests--;
}

static req_t *req_new(lun_t *l, op_t op, uint64_t lba, uint32_t blocks, unsigned char *data) {
  req_t *r = calloc(1, sizeof *r);
  r->l = l;
  r->op = op;
  r->lba = lba;
  r->blocks = blocks;
  r->data = data;
  r->deadline = now_ms() + (uint64_t)l->timeout_s * 1000;
  r->next = l->requests;
  if (l->requests) l->requests->prev = r;
  l->requests = r;
  l->count++;
  live_requests++;
  return r;
}

/* Settles a request and forgets it. Only outside libiscsi callbacks' task (r->task is NULL). */
static void req_done(req_t *r, int err) {
  lun_t *l = r->l;
  napi_env env = l->env;
  napi_value value;
  req_unlink(r);
  if (r->deferred) {
    if (err < 0) {
      napi_reject_deferred(env, r->deferred, errno_error(env, op_name(r->op), NULL, err));
    } else {
      if (r->op == OP_FLUSH) napi_get_undefined(env, &value);
      else if (r->op == OP_CAPACITY) napi_create_double(env, (double)l->blocks * l->block_size, &value);
      else napi_create_double(env, (double)r->blocks * l->block_size, &value);
      napi_resolve_deferred(env, r->deferred, value);
    }
    if (r->buffer) napi_delete_reference(env, r->buffer);
    if (r->self) napi_delete_reference(env, r->self);
  } else if (err < 0) {
    opened(l, err, op_name(r->op)); /* the connect sequence's own command failed */
  }
  free(r);
  if (l->close_requested && l->count == 0 && l->state != ST_LOGOUT && l->state != ST_CLOSED) finish_close(l);
}

/* Hands a waiting request to libiscsi; false when it cannot take it now. */
static bool submit(req_t *r) {
  lun_t *l = r->l;
  struct scsi_task *task = NULL;
  uint32_t length = r->blocks * l->block_size;
  if (l->state != ST_READY && !(l->state == ST_CONNECTING && !r->deferred)) return false;
  switch (r->op) {
  case OP_READ:
    task = iscsi_read16_task(l->iscsi, l->paths[l->path].lun, r->lba, length, l->block_size, 0, 0, 0, 0, 0, on_task, r);
    /* straight into the caller's memory: libiscsi fills it as data-in PDUs arrive */
    if (task && scsi_task_add_data_in_buffer(task, length, r->data) != 0) {
      iscsi_scsi_cancel_task(l->iscsi, task);
      return true; /* the cancel completed it (EIO) */
    }
    break;
  case OP_WRITE:
    task = iscsi_write16_task(l->iscsi, l->paths[l->path].lun, r->lba, r->data, length, l->block_size, 0, 0, 0, 0, 0, on_task, r);
    break;
  case OP_FLUSH:
    task = iscsi_synchronizecache16_task(l->iscsi, l->paths[l->path].lun, 0, 0, 0, 0, on_task, r);
    break;
  case OP_UNMAP: {
    struct unmap_list range = {r->lba, r->blocks};
    task = iscsi_unmap_task(l->iscsi, l->paths[l->path].lun, 0, 0, &range, 1, on_task, r);
    break;
  }
  case OP_CAPACITY:
    task = iscsi_readcapacity16_task(l->iscsi, l->paths[l->path].lun, on_task, r);
    break;
  case OP_LIMITS:
    task = iscsi_inquiry_task(l->iscsi, l->paths[l->path].lun, 1, SCSI_INQUIRY_PAGECODE_BLOCK_LIMITS, 255, on_task, r);
    break;
  }
  if (!task) {
    /* libiscsi could not even queue it (out of memory, or the session is gone): reconnect */
    l->need_reconnect = true;
    return false;
  }
  r->task = task;
  return true;
}

/* Results of READ CAPACITY(16) and the block limits page. */
static int take_capacity(lun_t *l, struct scsi_task *task) {
  struct scsi_readcapacity16 *rc = scsi_datain_unmarshall(task);
  if (!rc || rc->block_length < 512 || rc->block_length > (1u << 20) || (rc->block_length & (rc->block_length - 1)))
    return -EIO;
  l->block_size = rc->block_length;
  l->blocks = rc->returned_lba + 1;
  l->thin = rc->lbpme;
  return 0;
}

static void take_limits(lun_t *l, struct scsi_task *task) {
  struct scsi_inquiry_block_limits *bl = scsi_datain_unmarshall(task);
  uint64_t max = DEFAULT_MAX_TRANSFER;
  if (bl && bl->max_xfer_len > 0 && (uint64_t)bl->max_xfer_len * l->block_size < max)
    max = (uint64_t)bl->max_xfer_len * l->block_size;
  l->max_transfer = max < l->block_size ? l->block_size : (uint32_t)max;
}

static void on_task(struct iscsi_context *iscsi, int status, void *command_data, void *private_data) {
  (void)command_data;
  req_t *r = private_data;
  lun_t *l = r->l;
  struct scsi_task *task = r->task;
  int err = 0;
  r->task = NULL;
  if (r->given_up) {
    err = -EIO;
  } else if (status == SCSI_STATUS_GOOD) {
    if (r->op == OP_CAPACITY) err = take_capacity(l, task);
    else if (r->op == OP_LIMITS) take_limits(l, task);
  } else if (status == SCSI_STATUS_CHECK_CONDITION) {
    err = sense_errno(&task->sense);
    /* a read capacity at connect time is how a missing LUN shows */
    if (err == 0 && ++r->retries > MAX_RETRIES) err = -EIO;
    if (err == -EOPNOTSUPP && r->op == OP_LIMITS) err = 0; /* no block limits page: the default */
  } else if (status == SCSI_STATUS_BUSY || status == SCSI_STATUS_TASK_SET_FULL) {
    if (++r->retries > MAX_RETRIES) err = -EIO;
  } else if (status == SCSI_STATUS_RESERVATION_CONFLICT) {
    err = -EBUSY;
  } else {
    /* CANCELLED (the context is being torn down), TIMEOUT, ERROR: a transport
     * failure, so reconnect and send it again, within its deadline. */
    if (iscsi == l->iscsi) l->need_reconnect = true;
    if (task) scsi_free_scsi_task(task);
    return;
  }
  if (task) scsi_free_scsi_task(task);
  if (err == 0 && status != SCSI_STATUS_GOOD) {
    r->retry_at = now_ms() + (uint64_t)(r->retries < 6 ? 1 << r->retries : 64) * 10;
    return; /* the tick sends it again */
  }
  if (!r->deferred && err == 0) {
    /* the connect sequence: READ CAPACITY(16), then the block limits, then ready */
    op_t op = r->op;
    req_done(r, 0);
    if (op == OP_CAPACITY) submit(req_new(l, OP_LIMITS, 0, 0, NULL));
    else opened(l, 0, NULL);
    return;
  }
  req_done(r, err);
}

/* ----------------------------------------------------------- connecting */

static void next_path_or_wait(lun_t *l) {
  l->path = (l->path + 1) % l->npaths;
  if (++l->tried >= l->npaths) {
    /* every path failed in this round */
    l->tried = 0;
    l->reconnect_at = now_ms() + 1000;
    if (l->opening) {
      opened(l, l->open_err ? l->open_err : -EIO, l->open_msg);
      return;
    }
  } else {
    l->reconnect_at = now_ms();
  }
  l->state = ST_DOWN;
}

static void on_login(struct iscsi_context *iscsi, int status, void *command_data, void *private_data) {
  (void)command_data;
  lun_t *l = private_data;
  if (iscsi != l->iscsi) return;
  if (status == SCSI_STATUS_GOOD && l->state == ST_CONNECTING) {
    l->tried = 0;
    if (l->opened) {
      /* the LUN is known: back to work, resubmitting what was in flight */
      l->state = ST_READY;
      for (req_t *r = l->requests; r; r = r->next)
        if (!r->task && !r->given_up) submit(r);
    } else {
      /* a connect sequence cut short by a failed path starts over */
      for (req_t *r = l->requests, *next; r; r = next) {
        next = r->next;
        if (!r->deferred) {
          if (r->task) continue; /* still libiscsi's: cannot be (the context was new) */
          req_unlink(r);
          free(r);
        }
      }
      submit(req_new(l, OP_CAPACITY, 0, 0, NULL));
    }
    return;
  }
  /* a failed login, or a session that failed later (the callback comes twice) */
  if (l->state == ST_CONNECTING && l->opening) {
    const char *text = iscsi_get_error(iscsi);
    l->open_err = login_errno(text);
    snprintf(l->open_msg, sizeof l->open_msg, "%s: %s", l->paths[l->path].portal, text);
  }
  l->need_reconnect = true;
}

static void start_connect(lun_t *l) {
  path_t *p = &l->paths[l->path];
  struct iscsi_context *iscsi = iscsi_create_context(l->initiator);
  if (!iscsi) {
    l->reconnect_at = now_ms() + 1000;
    return;
  }
  iscsi_set_targetname(iscsi, p->target);
  iscsi_set_session_type(iscsi, ISCSI_SESSION_NORMAL);
  iscsi_set_header_digest(iscsi, ISCSI_HEADER_DIGEST_NONE_CRC32C);
  iscsi_set_timeout(iscsi, l->timeout_s);
  iscsi_set_noautoreconnect(iscsi, 1);
  if (l->user) iscsi_set_initiator_username_pwd(iscsi, l->user, l->password ? l->password : "");
  if (l->target_user) iscsi_set_target_username_pwd(iscsi, l->target_user, l->target_password ? l->target_password : "");
  l->iscsi = iscsi;
  l->state = ST_CONNECTING;
  l->connect_deadline = now_ms() + (uint64_t)l->timeout_s * 1000;
  if (iscsi_full_connect_async(iscsi, p->portal, p->lun, on_login, l) != 0) {
    if (l->opening) {
      l->open_err = login_errno(iscsi_get_error(iscsi));
      snprintf(l->open_msg, sizeof l->open_msg, "%s: %s", p->portal, iscsi_get_error(iscsi));
    }
    l->need_reconnect = true;
    return;
  }
  l->poll = malloc(sizeof *l->poll);
  if (uv_poll_init(uv_default_loop(), l->poll, iscsi_get_fd(iscsi)) != 0) {
    free(l->poll);
    l->poll = NULL;
    l->need_reconnect = true;
    return;
  }
  l->poll->data = l;
  l->handles++;
  if (!l->timer_referenced) uv_unref((uv_handle_t *)l->poll);
  update_poll(l);
}

/* After libiscsi ran: what its callbacks asked for (they must not tear the context down themselves). */
static void after_service(lun_t *l) {
  if (l->close_pending) {
    l->close_pending = false;
    finish_close(l);
  }
  if (l->need_reconnect && l->state != ST_CLOSED) {
    drop_connection(l);
    if (l->state == ST_LOGOUT) {
      finish_close(l);
      return;
    }
    if (l->state == ST_CONNECTING) next_path_or_wait(l);
    else {
      /* a session that worked: try the same path first, at once */
      l->state = ST_DOWN;
      l->reconnect_at = now_ms();
    }
  }
  update_poll(l);
  update_ref(l);
}

/* uv callbacks run outside any JS frame: settle promises inside a callback scope. */
typedef struct {
  napi_handle_scope handles;
  napi_callback_scope callback;
} scope_t;

static void scope_open(lun_t *l, scope_t *s) {
  napi_value resource;
  napi_open_handle_scope(l->env, &s->handles);
  napi_create_object(l->env, &resource);
  napi_open_callback_scope(l->env, resource, l->async, &s->callback);
}

static void scope_close(lun_t *l, scope_t *s) {
  napi_close_callback_scope(l->env, s->callback);
  napi_close_handle_scope(l->env, s->handles);
}

/*
 * Sends what libiscsi has queued now (new commands, the data-out PDUs an R2T
 * asked for) instead of on a later turn of the event loop: watching for
 * POLLOUT costs an epoll_ctl on, a wake-up and an epoll_ctl off per batch,
 * and a logged-in socket nearly always has room. What does not fit stays
 * queued and update_poll watches for POLLOUT as before. Only when logged in:
 * while a connect is in progress, POLLOUT is how libiscsi learns it finished.
 */
static void send_queued(lun_t *l) {
  if (l->state != ST_READY || !l->iscsi || !(iscsi_which_events(l->iscsi) & POLLOUT)) return;
  l->in_libiscsi++;
  if (iscsi_service(l->iscsi, POLLOUT) < 0) l->need_reconnect = true;
  l->in_libiscsi--;
}

static void on_poll(uv_poll_t *h, int status, int events) {
  lun_t *l = h->data;
  scope_t scope;
  int revents = status < 0 ? POLLERR : (events & UV_READABLE ? POLLIN : 0) | (events & UV_WRITABLE ? POLLOUT : 0);
  if (l->poll != h || !l->iscsi) return;
  scope_open(l, &scope);
  l->in_libiscsi++;
  if (iscsi_service(l->iscsi, revents) < 0) l->need_reconnect = true;
  l->in_libiscsi--;
  if (!(revents & POLLOUT) && !l->need_reconnect) send_queued(l);
  after_service(l);
  scope_close(l, &scope);
}

static void on_tick(uv_timer_t *t) {
  lun_t *l = t->data;
  uint64_t now = now_ms();
  scope_t scope;
  req_t *r, *next;
  scope_open(l, &scope);
  l->in_libiscsi++;
  if (l->iscsi && iscsi_service(l->iscsi, 0) < 0) l->need_reconnect = true; /* libiscsi's PDU timeouts */
  l->in_libiscsi--;
  if (l->state == ST_CONNECTING && now >= l->connect_deadline) {
    if (l->opening && !l->open_err) snprintf(l->open_msg, sizeof l->open_msg, "%s: no login within %d s", l->paths[l->path].portal, l->timeout_s);
    if (l->opening && !l->open_err) l->open_err = -ETIMEDOUT;
    l->need_reconnect = true;
  }
  if (l->state == ST_LOGOUT && now >= l->logout_deadline) l->need_reconnect = true;
  for (r = l->requests; r; r = next) {
    next = r->next;
    if (r->given_up || now < r->deadline) continue;
    r->given_up = true;
    /* the cancel calls on_task at once, which fails it; the buffer is libiscsi's no more */
    if (r->task) {
      l->in_libiscsi++;
      /* not found: tearing the context down cancels it */
      if (iscsi_scsi_cancel_task(l->iscsi, r->task) != 0) l->need_reconnect = true;
      l->in_libiscsi--;
    } else {
      req_done(r, -EIO);
    }
    next = l->requests; /* the list changed */
  }
  after_service(l);
  if (l->state == ST_READY)
    for (r = l->requests; r; r = r->next)
      if (!r->task && !r->given_up && r->retry_at <= now) submit(r);
  if (l->state == ST_DOWN && !l->close_requested && (l->count > 0 || l->opening) && now >= l->reconnect_at) start_connect(l);
  after_service(l);
  scope_close(l, &scope);
}

/* The connect sequence ended: login, READ CAPACITY(16), block limits (or a failure). */
static void opened(lun_t *l, int err, const char *detail) {
  napi_env env = l->env;
  napi_deferred deferred = l->opening;
  napi_value ctor, external, lun;
  if (!deferred) return;
  l->opening = NULL;
  if (err < 0) {
    napi_reject_deferred(env, deferred, errno_error(env, "iscsi connect", detail, err));
    l->close_requested = true;
    finish_close(l);
    return;
  }
  l->opened = true;
  l->state = ST_READY;
  napi_get_reference_value(env, lun_ctor, &ctor);
  napi_create_external(env, l, NULL, NULL, &external);
  if (napi_new_instance(env, ctor, 1, &external, &lun) != napi_ok) {
    napi_get_and_clear_last_exception(env, &lun);
    napi_reject_deferred(env, deferred, lun);
    l->close_requested = true;
    finish_close(l);
    return;
  }
  napi_resolve_deferred(env, deferred, lun);
}

/* ---------------------------------------------------------------- close */

static void on_logout(struct iscsi_context *iscsi, int status, void *command_data, void *private_data) {
  (void)status;
  (void)command_data;
  lun_t *l = private_data;
  if (iscsi == l->iscsi) l->need_reconnect = true; /* i.e. tear it down: after_service finishes the close */
}

/* No request left: log out (briefly), then release everything. */
static void finish_close(lun_t *l) {
  napi_env env = l->env;
  if (l->in_libiscsi) {
    l->close_pending = true; /* after_service comes back here */
    return;
  }
  if (l->state == ST_CLOSED) return;
  if (l->state == ST_READY && l->iscsi && iscsi_logout_async(l->iscsi, on_logout, l) == 0) {
    l->state = ST_LOGOUT;
    l->logout_deadline = now_ms() + LOGOUT_MS;
    update_poll(l);
    update_ref(l);
    return;
  }
  l->state = ST_CLOSED;
  drop_connection(l);
  uv_timer_stop(&l->timer);
  uv_close((uv_handle_t *)&l->timer, on_handle_closed);
  if (l->closing) {
    napi_value undefined;
    napi_get_undefined(env, &undefined);
    napi_resolve_deferred(env, l->closing, undefined);
    l->closing = NULL;
  }
  if (l->self_while_closing) {
    napi_delete_reference(env, l->self_while_closing);
    l->self_while_closing = NULL;
  }
}

/* ------------------------------------------------------------ arguments */

/* A malloc'd copy of object[name]: NULL with *ok still true when absent and optional. */
static char *get_string_prop(napi_env env, napi_value object, const char *name, bool required, bool *ok) {
  napi_value value;
  napi_valuetype type;
  size_t length;
  char *s, message[96];
  if (napi_get_named_property(env, object, name, &value) != napi_ok || napi_typeof(env, value, &type) != napi_ok) {
    *ok = false;
    return NULL;
  }
  if (type == napi_undefined && !required) return NULL;
  if (type != napi_string) {
    snprintf(message, sizeof message, "%s must be a string", name);
    napi_throw_type_error(env, NULL, message);
    *ok = false;
    return NULL;
  }
  napi_get_value_string_utf8(env, value, NULL, 0, &length);
  s = malloc(length + 1);
  napi_get_value_string_utf8(env, value, s, length + 1, &length);
  if (strlen(s) != length || length == 0 || length > 223) { /* 223: iSCSI names and CHAP fields */
    snprintf(message, sizeof message, "%s must be 1 to 223 characters without NUL", name);
    napi_throw_range_error(env, NULL, message);
    free(s);
    *ok = false;
    return NULL;
  }
  return s;
}

static bool get_number_prop(napi_env env, napi_value object, const char *name, double min, double max, double *out) {
  napi_value value;
  napi_valuetype type;
  char message[96];
  if (napi_get_named_property(env, object, name, &value) != napi_ok) return false;
  napi_typeof(env, value, &type);
  if (type == napi_undefined) return true; /* keeps the default in *out */
  if (napi_get_value_double(env, value, out) != napi_ok || !(*out >= min && *out <= max) || *out != (double)(int64_t)*out) {
    snprintf(message, sizeof message, "%s must be an integer from %.0f to %.0f", name, min, max);
    napi_throw_range_error(env, NULL, message);
    return false;
  }
  return true;
}

/* connect({paths: [{portal, target, lun}], initiator, username?, password?, targetUsername?, targetPassword?, timeoutSeconds?, readOnly?}) */
static napi_value iscsi_connect(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value options, paths, item, promise, name;
  napi_valuetype type = napi_undefined;
  bool ok = true, is_array = false;
  uint32_t npaths = 0;
  double timeout = 30, lun_number;
  lun_t *l;
  CHECK(env, napi_get_cb_info(env, info, &argc, &options, NULL, NULL));
  if (argc >= 1) napi_typeof(env, options, &type);
  if (type != napi_object) {
    napi_throw_type_error(env, NULL, "connect needs an options object");
    return NULL;
  }
  CHECK(env, napi_get_named_property(env, options, "paths", &paths));
  napi_is_array(env, paths, &is_array);
  if (is_array) napi_get_array_length(env, paths, &npaths);
  if (!is_array || npaths == 0 || npaths > 16) {
    napi_throw_type_error(env, NULL, "paths must be a list of 1 to 16 {portal, target, lun}");
    return NULL;
  }
  l = calloc(1, sizeof *l);
  live_luns++;
  l->env = env;
  l->handles = 1; /* the timer, initialised below; the JS object takes its own */
  l->paths = calloc(npaths, sizeof *l->paths);
  for (uint32_t i = 0; ok && i < npaths; i++) {
    napi_get_element(env, paths, i, &item);
    napi_typeof(env, item, &type);
    if (type != napi_object) {
      napi_throw_type_error(env, NULL, "paths must be a list of 1 to 16 {portal, target, lun}");
      ok = false;
      break;
    }
    l->npaths = i + 1;
    l->paths[i].portal = get_string_prop(env, item, "portal", true, &ok);
    if (ok) l->paths[i].target = get_string_prop(env, item, "target", true, &ok);
    lun_number = 0;
    if (ok && (ok = get_number_prop(env, item, "lun", 0, 16383, &lun_number))) l->paths[i].lun = (int)lun_number;
  }
  if (ok) l->initiator = get_string_prop(env, options, "initiator", true, &ok);
  if (ok) l->user = get_string_prop(env, options, "username", false, &ok);
  if (ok) l->password = get_string_prop(env, options, "password", false, &ok);
  if (ok) l->target_user = get_string_prop(env, options, "targetUsername", false, &ok);
  if (ok) l->target_password = get_string_prop(env, options, "targetPassword", false, &ok);
  if (ok) ok = get_number_prop(env, options, "timeoutSeconds", 1, 3600, &timeout);
  if (ok) ok = get_optional_bool(env, options, "readOnly", &l->read_only);
  if (ok && (!l->user) != (!l->password)) {
    napi_throw_type_error(env, NULL, "username and password come together");
    ok = false;
  }
  if (!ok) {
    lun_free(l);
    return NULL;
  }
  l->timeout_s = (int)timeout;
  CHECK(env, napi_create_promise(env, &l->opening, &promise));
  napi_create_string_utf8(env, "cinderfs iscsi", NAPI_AUTO_LENGTH, &name);
  napi_async_init(env, NULL, name, &l->async);
  uv_timer_init(uv_default_loop(), &l->timer);
  l->timer.data = l;
  l->timer_referenced = true;
  uv_timer_start(&l->timer, on_tick, TICK_MS, TICK_MS);
  start_connect(l);
  if (l->need_reconnect) after_service(l); /* failed before any I/O: the tick tries the next path */
  return promise;
}

/* ---------------------------------------------------------------- Lun */

static void lun_finalize(napi_env env, void *data, void *hint) {
  (void)env;
  (void)hint;
  lun_t *l = data;
  /* collected without close(): no request holds it, so nothing is in flight */
  if (l->state != ST_CLOSED) {
    l->close_requested = true;
    l->state = ST_DOWN; /* no logout: the session ends with the socket */
    finish_close(l);
  }
  lun_unref(l);
}

static napi_value lun_construct(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value arg, self;
  napi_valuetype type;
  void *l;
  CHECK(env, napi_get_cb_info(env, info, &argc, &arg, &self, NULL));
  if (argc < 1 || napi_typeof(env, arg, &type) != napi_ok || type != napi_external) {
    napi_throw_type_error(env, NULL, "Luns come from connect()");
    return NULL;
  }
  CHECK(env, napi_get_value_external(env, arg, &l));
  CHECK(env, napi_wrap(env, self, l, lun_finalize, NULL, NULL));
  ((lun_t *)l)->handles++;
  return self;
}

static lun_t *lun_this(napi_env env, napi_callback_info info, napi_value *self, napi_value *argv, size_t wanted) {
  size_t argc = wanted;
  lun_t *l;
  if (napi_get_cb_info(env, info, &argc, argv, self, NULL) != napi_ok || napi_unwrap(env, *self, (void **)&l) != napi_ok) {
    napi_throw_type_error(env, NULL, "not a Lun");
    return NULL;
  }
  return l;
}

static napi_value number(napi_env env, double value) {
  napi_value result;
  napi_create_double(env, value, &result);
  return result;
}

static napi_value lun_size(napi_env env, napi_callback_info info) {
  napi_value self;
  lun_t *l = lun_this(env, info, &self, NULL, 0);
  return l ? number(env, (double)l->blocks * l->block_size) : NULL;
}

static napi_value lun_block_size(napi_env env, napi_callback_info info) {
  napi_value self;
  lun_t *l = lun_this(env, info, &self, NULL, 0);
  return l ? number(env, l->block_size) : NULL;
}

static napi_value lun_max_transfer(napi_env env, napi_callback_info info) {
  napi_value self;
  lun_t *l = lun_this(env, info, &self, NULL, 0);
  return l ? number(env, l->max_transfer) : NULL;
}

/* Which portal the session uses now (it changes on failover). */
static napi_value lun_portal(napi_env env, napi_callback_info info) {
  napi_value self, result;
  lun_t *l = lun_this(env, info, &self, NULL, 0);
  if (!l) return NULL;
  CHECK(env, napi_create_string_utf8(env, l->paths[l->path].portal, NAPI_AUTO_LENGTH, &result));
  return result;
}

/* Queues a request for JS; libiscsi gets it now or after the reconnect. */
static napi_value start(napi_env env, napi_value self, lun_t *l, op_t op, napi_value buffer, unsigned char *data, uint64_t lba, uint32_t blocks) {
  napi_value promise;
  req_t *r = req_new(l, op, lba, blocks, data);
  if (napi_create_promise(env, &r->deferred, &promise) != napi_ok) {
    req_unlink(r);
    free(r);
    return throw_last_error(env);
  }
  napi_create_reference(env, self, 1, &r->self);
  if (buffer) napi_create_reference(env, buffer, 1, &r->buffer);
  if (l->state == ST_DOWN) l->reconnect_at = 0; /* idle and down: reconnect on the next tick */
  submit(r);
  if (!l->need_reconnect) send_queued(l);
  after_service(l);
  return promise;
}

/* read/write(buffer, offset, length, position): whole blocks, the caller's memory. */
static napi_value lun_rw(napi_env env, napi_callback_info info, op_t op) {
  napi_value self, argv[4];
  uint64_t offset, length, position, size;
  unsigned char *data;
  size_t buffer_length;
  bool is_buffer = false;
  lun_t *l = lun_this(env, info, &self, argv, 4);
  if (!l) return NULL;
  if (napi_is_buffer(env, argv[0], &is_buffer) != napi_ok || !is_buffer) {
    napi_throw_type_error(env, NULL, "buffer must be a Buffer");
    return NULL;
  }
  CHECK(env, napi_get_buffer_info(env, argv[0], (void **)&data, &buffer_length));
  if (!get_offset(env, argv[1], "offset", &offset) || !get_offset(env, argv[2], "length", &length) || !get_offset(env, argv[3], "position", &position))
    return NULL;
  if (offset > buffer_length || length > buffer_length - offset) {
    napi_throw_range_error(env, NULL, "offset + length is beyond the end of the buffer");
    return NULL;
  }
  if (l->close_requested) return settled(env, -EBADF, op_name(op), 0);
  if (op == OP_WRITE && l->read_only) return settled(env, -EROFS, op_name(op), 0);
  if (position % l->block_size || length % l->block_size) return settled(env, -EINVAL, op_name(op), 0);
  if (length > l->max_transfer) return settled(env, -E2BIG, op_name(op), 0);
  size = l->blocks * l->block_size;
  if (op == OP_READ) {
    if (position >= size) return settled(env, 0, op_name(op), 0);
    if (length > size - position) length = size - position; /* short at the end, as pread */
  } else if (position > size || length > size - position) {
    return settled(env, -EFBIG, op_name(op), 0); /* a write crossing the end is refused whole */
  }
  if (length == 0) return settled(env, 0, op_name(op), 0);
  return start(env, self, l, op, argv[0], data + offset, position / l->block_size, (uint32_t)(length / l->block_size));
}

static napi_value lun_read(napi_env env, napi_callback_info info) { return lun_rw(env, info, OP_READ); }
static napi_value lun_write(napi_env env, napi_callback_info info) { return lun_rw(env, info, OP_WRITE); }

static napi_value lun_discard(napi_env env, napi_callback_info info) {
  napi_value self, argv[2];
  uint64_t position, length, size;
  lun_t *l = lun_this(env, info, &self, argv, 2);
  if (!l) return NULL;
  if (!get_offset(env, argv[0], "position", &position) || !get_offset(env, argv[1], "length", &length)) return NULL;
  if (l->close_requested) return settled(env, -EBADF, "iscsi unmap", 0);
  if (l->read_only) return settled(env, -EROFS, "iscsi unmap", 0);
  if (!l->thin) return settled(env, -EOPNOTSUPP, "iscsi unmap", 0);
  if (position % l->block_size || length % l->block_size || length / l->block_size > UINT32_MAX) return settled(env, -EINVAL, "iscsi unmap", 0);
  size = l->blocks * l->block_size;
  if (position > size || length > size - position) return settled(env, -EFBIG, "iscsi unmap", 0);
  if (length == 0) return settled(env, 0, "iscsi unmap", 0);
  return start(env, self, l, OP_UNMAP, NULL, NULL, position / l->block_size, (uint32_t)(length / l->block_size));
}

static napi_value lun_flush(napi_env env, napi_callback_info info) {
  napi_value self;
  lun_t *l = lun_this(env, info, &self, NULL, 0);
  if (!l) return NULL;
  if (l->close_requested) return settled(env, -EBADF, "iscsi synchronizecache16", 0);
  return start(env, self, l, OP_FLUSH, NULL, NULL, 0, 0);
}

/* READ CAPACITY(16) again (after the volume was extended); resolves with the size in bytes. */
static napi_value lun_refresh_size(napi_env env, napi_callback_info info) {
  napi_value self;
  lun_t *l = lun_this(env, info, &self, NULL, 0);
  if (!l) return NULL;
  if (l->close_requested) return settled(env, -EBADF, "iscsi readcapacity16", 0);
  return start(env, self, l, OP_CAPACITY, NULL, NULL, 0, 0);
}

/* Waits for in-flight requests (each ends by its deadline), logs out, closes; later calls fail EBADF. */
static napi_value lun_close(napi_env env, napi_callback_info info) {
  napi_value self, promise;
  lun_t *l = lun_this(env, info, &self, NULL, 0);
  if (!l) return NULL;
  if (l->close_requested) return settled(env, -EBADF, "iscsi close", 0);
  l->close_requested = true;
  CHECK(env, napi_create_promise(env, &l->closing, &promise));
  CHECK(env, napi_create_reference(env, self, 1, &l->self_while_closing));
  if (l->count == 0) finish_close(l);
  return promise;
}

static napi_value iscsi_stats(napi_env env, napi_callback_info info) {
  (void)info;
  napi_value result;
  CHECK(env, napi_create_object(env, &result));
  napi_set_named_property(env, result, "luns", number(env, (double)live_luns));
  napi_set_named_property(env, result, "requests", number(env, (double)live_requests));
  return result;
}

static napi_value init(napi_env env, napi_value exports) {
  napi_value lun_class, fn;
  napi_property_descriptor methods[] = {
    {"size", NULL, lun_size, NULL, NULL, NULL, napi_default_method, NULL},
    {"blockSize", NULL, lun_block_size, NULL, NULL, NULL, napi_default_method, NULL},
    {"maxTransfer", NULL, lun_max_transfer, NULL, NULL, NULL, napi_default_method, NULL},
    {"portal", NULL, lun_portal, NULL, NULL, NULL, napi_default_method, NULL},
    {"read", NULL, lun_read, NULL, NULL, NULL, napi_default_method, NULL},
    {"write", NULL, lun_write, NULL, NULL, NULL, napi_default_method, NULL},
    {"discard", NULL, lun_discard, NULL, NULL, NULL, napi_default_method, NULL},
    {"flush", NULL, lun_flush, NULL, NULL, NULL, napi_default_method, NULL},
    {"refreshSize", NULL, lun_refresh_size, NULL, NULL, NULL, napi_default_method, NULL},
    {"close", NULL, lun_close, NULL, NULL, NULL, napi_default_method, NULL},
  };
  CHECK(env, napi_define_class(env, "Lun", NAPI_AUTO_LENGTH, lun_construct, NULL, sizeof methods / sizeof methods[0], methods, &lun_class));
  CHECK(env, napi_create_reference(env, lun_class, 1, &lun_ctor));
  CHECK(env, napi_create_function(env, "connect", NAPI_AUTO_LENGTH, iscsi_connect, NULL, &fn));
  CHECK(env, napi_set_named_property(env, exports, "connect", fn));
  CHECK(env, napi_create_function(env, "stats", NAPI_AUTO_LENGTH, iscsi_stats, NULL, &fn));
  CHECK(env, napi_set_named_property(env, exports, "stats", fn));
  CHECK(env, napi_set_named_property(env, exports, "Lun", lun_class));
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
