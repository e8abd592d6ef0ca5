/*
 * cinderfs librbd binding: Ceph RBD image I/O from Node without a kernel
 * device, in plain node_api.h C.
 *
 * Threads:
 *  - Data I/O (read, write, discard, flush) uses rbd_aio_*. librbd calls the
 *    completion on one of its own threads; we hand the request to the JS
 *    thread through one threadsafe function per environment, which is ref'd
 *    only while I/O is in flight so idle handles never keep Node alive.
 *  - connect, open, close, refreshSize and shutdown block inside librados,
 *    so they run as napi_async_work on the libuv threadpool.
 *  - Finalizers (handles garbage-collected without close) hand the blocking
 *    rbd_close / rados_shutdown to a detached thread, except at exit.
 *
 * Lifetimes: a cluster is ref-counted natively (its JS object, plus one per
 * open image), so images and their cluster may be collected in any order and
 * rados_shutdown runs after the last image closed. Every request holds strong
 * references to its Image object and its Buffer until it completes, so
 * neither can be collected, nor the Buffer's memory freed, while librbd uses
 * them.
 *
 * Errors are Error objects with `code` (the errno name, as Node's own system
 * errors) and `errno` (negative).
 */
#define NAPI_VERSION 8
#include <errno.h>
#include <node_api.h>
#include <pthread.h>
#include <rados/librados.h>
#include <rbd/librbd.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>

#include "napi-util.h"


#define CHECK(env, call)                                   \
  do {                                                     \
    if ((call) != napi_ok) return throw_last_error(env);   \
  } while (0)

/* Process-wide counts of live native handles: what a leak test looks at. */
static atomic_long live_clusters, live_images, live_requests;
/* Finalizers' release threads still running. */
static atomic_int releasing;

typedef struct {
  napi_threadsafe_function tsfn;
  long aio_in_flight; /* JS thread only */
  bool tearing_down;
  napi_ref cluster_ctor, image_ctor;
} addon_t;

typedef struct {
  rados_t rados;
  atomic_int refs; /* the JS Cluster until shutdown/collected, plus one per open image */
} cluster_t;

typedef struct {
  cluster_t *cluster;
  bool shut_down;
} cluster_obj_t;

/* What must be released to close an image; copied for a finalizer's thread. */
typedef struct {
  cluster_t *cluster;
  rados_ioctx_t ioctx;
  rbd_image_t image;
} image_handles_t;

typedef struct {
  image_handles_t h;
  uint64_t size;
  int in_flight;           /* I/O and refreshSize not yet completed (JS thread only) */
  bool closing, closed;
  napi_deferred close_waiting; /* close() called while in_flight > 0 */
  napi_ref close_self;
} image_t;

static napi_value rejected(napi_env env, const char *what, int err) {
  napi_value promise;
  napi_deferred deferred;
  CHECK(env, napi_create_promise(env, &deferred, &promise));
  napi_reject_deferred(env, deferred, errno_error(env, what, NULL, err));
  return promise;
}

static napi_value resolved_number(napi_env env, double value) {
  napi_value promise, number;
  napi_deferred deferred;
  CHECK(env, napi_create_promise(env, &deferred, &promise));
  napi_create_double(env, value, &number);
  napi_resolve_deferred(env, deferred, number);
  return promise;
}

/* ------------------------------------------------------------- arguments */

/* A malloc'd copy of a string argument; NULL (with a TypeError thrown) if it is not one. */
static char *get_string(napi_env env, napi_value value, const char *name) {
  size_t length;
  char *s, message[128];
  if (napi_get_value_string_utf8(env, value, NULL, 0, &length) != napi_ok) {
    snprintf(message, sizeof message, "%s must be a string", name);
    napi_throw_type_error(env, NULL, message);
    return NULL;
  }
  s = malloc(length + 1);
  napi_get_value_string_utf8(env, value, s, length + 1, &length);
  return s;
}

/* An optional string property: *out stays NULL when absent or undefined. */
static bool get_optional_string(napi_env env, napi_value object, const char *name, char **out) {
  napi_value value;
  napi_valuetype type;
  *out = NULL;
  if (napi_get_named_property(env, object, name, &value) != napi_ok) return false;
  napi_typeof(env, value, &type);
  if (type == napi_undefined) return true;
  *out = get_string(env, value, name);
  return *out != NULL;
}

static bool is_object(napi_env env, napi_value value) {
  napi_valuetype type;
  return napi_typeof(env, value, &type) == napi_ok && type == napi_object;
}

/* ---------------------------------------------------------------- cluster */

static void cluster_unref(cluster_t *c) {
  if (atomic_fetch_sub(&c->refs, 1) != 1) return;
  rados_shutdown(c->rados);
  free(c);
  atomic_fetch_sub(&live_clusters, 1);
}

static void image_release(const image_handles_t *h) {
  rbd_close(h->image);
  rados_ioctx_destroy(h->ioctx);
  cluster_unref(h->cluster);
  atomic_fetch_sub(&live_images, 1);
}

static void release_handles(image_handles_t *h) {
  if (h->image) image_release(h);
  else cluster_unref(h->cluster);
  free(h);
}

static void *release_thread(void *arg) {
  release_handles(arg);
  atomic_fetch_sub(&releasing, 1);
  return NULL;
}

/*
 * For finalizers: handles collected without close. rbd_close and
 * rados_shutdown block on the network, so they run on a detached thread, but
 * while the environment is torn down they run right here: librbd aborts if
 * exit() runs while it is closing (measured), and a writeback cache is
 * flushed only by a close that finishes.
 */
static void release_unclosed(image_handles_t h, const addon_t *addon) {
  pthread_t thread;
  pthread_attr_t attr;
  image_handles_t *copy = malloc(sizeof *copy);
  *copy = h;
  if (!addon->tearing_down) {
    atomic_fetch_add(&releasing, 1);
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    int err = pthread_create(&thread, &attr, release_thread, copy);
    pthread_attr_destroy(&attr);
    if (err == 0) return;
    atomic_fetch_sub(&releasing, 1);
  }
  release_handles(copy);
}

/* Runs before the environment's finalizers: they release synchronously from now on. */
static void addon_teardown(void *arg) {
  addon_t *addon = arg;
  addon->tearing_down = true;
  /* Release threads started earlier must also end before exit(); give them 30 s. */
  for (int i = 0; i < 3000 && atomic_load(&releasing) > 0; i++) usleep(10000);
}

/* Cluster and Image constructors: only the addon calls them, with the native state as an external. */
static napi_value construct(napi_env env, napi_callback_info info, const char *misuse, napi_finalize finalize) {
  size_t argc = 1;
  napi_value arg, self;
  napi_valuetype type;
  void *data, *addon;
  CHECK(env, napi_get_cb_info(env, info, &argc, &arg, &self, NULL));
  if (argc < 1 || napi_typeof(env, arg, &type) != napi_ok || type != napi_external) {
    napi_throw_type_error(env, NULL, misuse);
    return NULL;
  }
  CHECK(env, napi_get_value_external(env, arg, &data));
  CHECK(env, napi_get_instance_data(env, &addon));
  if (napi_wrap(env, self, data, finalize, addon, NULL) != napi_ok) {
    finalize(env, data, addon); /* never wrapped, so never finalized: release now */
    return throw_last_error(env);
  }
  return self;
}

/* ------------------------------------------------------------ async work */

typedef enum { OP_CONNECT, OP_OPEN, OP_CLOSE, OP_REFRESH, OP_SHUTDOWN } work_op_t;

typedef struct {
  work_op_t op;
  napi_async_work work;
  napi_deferred deferred;
  napi_ref self; /* the Image being closed or refreshed */
  int err;
  const char *failed; /* the librados/librbd call that set err, when not the op's main one */
  /* connect */
  char *cluster_name, *user, *conf_file, **option_names, **option_values;
  size_t option_count;
  cluster_t *cluster;
  /* open */
  char *pool, *image_name, *snapshot;
  bool read_only;
  image_handles_t handles;
  uint64_t size;
  image_t *img;
} work_t;

static void work_free(napi_env env, work_t *w) {
  for (size_t i = 0; i < w->option_count; i++) {
    free(w->option_names[i]);
    free(w->option_values[i]);
  }
  free(w->option_names);
  free(w->option_values);
  free(w->cluster_name);
  free(w->user);
  free(w->conf_file);
  free(w->pool);
  free(w->image_name);
  free(w->snapshot);
  if (w->self) napi_delete_reference(env, w->self);
  if (w->work) napi_delete_async_work(env, w->work);
  free(w);
}

static void work_execute(napi_env env, void *data) {
  (void)env;
  work_t *w = data;
  switch (w->op) {
  case OP_CONNECT: {
    rados_t rados;
    char client[256];
    snprintf(client, sizeof client, "client.%s", w->user);
    w->err = rados_create2(&rados, w->cluster_name ? w->cluster_name : "ceph", client, 0);
    if (w->err < 0) return;
    if (w->conf_file && (w->err = rados_conf_read_file(rados, w->conf_file)) < 0) w->failed = "rados_conf_read_file";
    for (size_t i = 0; w->err >= 0 && i < w->option_count; i++)
      if (w->option_values[i] && (w->err = rados_conf_set(rados, w->option_names[i], w->option_values[i])) < 0)
        w->failed = "rados_conf_set"; /* an unknown option name is ENOENT */
    if (w->err >= 0) w->err = rados_connect(rados);
    if (w->err < 0) {
      rados_shutdown(rados);
      return;
    }
    w->cluster = calloc(1, sizeof *w->cluster);
    w->cluster->rados = rados;
    atomic_init(&w->cluster->refs, 1);
    atomic_fetch_add(&live_clusters, 1);
    return;
  }
  case OP_OPEN:
    w->err = rados_ioctx_create(w->handles.cluster->rados, w->pool, &w->handles.ioctx);
    if (w->err < 0) {
      w->failed = "rados_ioctx_create"; /* ENOENT: no such pool */
      break;
    }
    w->err = w->read_only ? rbd_open_read_only(w->handles.ioctx, w->image_name, &w->handles.image, w->snapshot)
                          : rbd_open(w->handles.ioctx, w->image_name, &w->handles.image, w->snapshot);
    if (w->err < 0) {
      rados_ioctx_destroy(w->handles.ioctx);
      break;
    }
    atomic_fetch_add(&live_images, 1);
    w->err = rbd_get_size(w->handles.image, &w->size);
    if (w->err < 0) image_release(&w->handles);
    return;
  case OP_CLOSE:
    image_release(&w->img->h);
    return;
  case OP_REFRESH:
    /* librbd re-reads the header if its watch saw a change (an extend). */
    w->err = rbd_get_size(w->img->h.image, &w->size);
    return;
  case OP_SHUTDOWN:
    cluster_unref(w->cluster);
    return;
  }
  /* open failed: give back the cluster reference taken for it, off the JS thread */
  cluster_unref(w->handles.cluster);
}

static const char *work_name(work_op_t op) {
  switch (op) {
  case OP_CONNECT: return "rados_connect";
  case OP_OPEN: return "rbd_open";
  case OP_CLOSE: return "rbd_close";
  case OP_REFRESH: return "rbd_get_size";
  case OP_SHUTDOWN: return "rados_shutdown";
  }
  return "rbd";
}

static void image_io_done(napi_env env, image_t *img);

static void work_complete(napi_env env, napi_status status, void *data) {
  work_t *w = data;
  addon_t *addon;
  napi_value result = NULL, ctor, external;
  napi_get_instance_data(env, (void **)&addon);
  if (status != napi_ok && w->err == 0) w->err = -ECANCELED;
  if (w->err < 0) {
    napi_reject_deferred(env, w->deferred, errno_error(env, w->failed ? w->failed : work_name(w->op), NULL, w->err));
  } else {
    switch (w->op) {
    case OP_CONNECT: {
      cluster_obj_t *obj = calloc(1, sizeof *obj);
      obj->cluster = w->cluster;
      napi_get_reference_value(env, addon->cluster_ctor, &ctor);
      napi_create_external(env, obj, NULL, NULL, &external);
      napi_new_instance(env, ctor, 1, &external, &result);
      break;
    }
    case OP_OPEN: {
      image_t *img = calloc(1, sizeof *img);
      img->h = w->handles;
      img->size = w->size;
      napi_get_reference_value(env, addon->image_ctor, &ctor);
      napi_create_external(env, img, NULL, NULL, &external);
      napi_new_instance(env, ctor, 1, &external, &result);
      break;
    }
    case OP_CLOSE:
      w->img->closed = true;
      napi_get_undefined(env, &result);
      break;
    case OP_REFRESH:
      w->img->size = w->size;
      napi_create_double(env, (double)w->size, &result);
      break;
    case OP_SHUTDOWN:
      napi_get_undefined(env, &result);
      break;
    }
    napi_resolve_deferred(env, w->deferred, result);
  }
  if (w->op == OP_REFRESH) image_io_done(env, w->img);
  work_free(env, w);
}

/* Queues w; returns its promise. On failure w is freed and an exception is pending. */
static napi_value work_queue(napi_env env, work_t *w) {
  napi_value promise, name;
  if (napi_create_promise(env, &w->deferred, &promise) != napi_ok) goto fail;
  napi_create_string_utf8(env, work_name(w->op), NAPI_AUTO_LENGTH, &name);
  if (napi_create_async_work(env, NULL, name, work_execute, work_complete, w, &w->work) != napi_ok) goto fail;
  if (napi_queue_async_work(env, w->work) != napi_ok) goto fail;
  return promise;
fail:
  work_free(env, w);
  return throw_last_error(env);
}

/* ------------------------------------------------------------------- aio */

typedef enum { AIO_READ, AIO_WRITE, AIO_DISCARD, AIO_FLUSH } aio_op_t;

typedef struct {
  aio_op_t op;
  addon_t *addon;
  image_t *img;
  napi_ref img_ref, buf_ref;
  napi_deferred deferred;
  uint64_t length;
  ssize_t ret;
} aio_t;

static const char *aio_name(aio_op_t op) {
  switch (op) {
  case AIO_READ: return "rbd_aio_read";
  case AIO_WRITE: return "rbd_aio_write";
  case AIO_DISCARD: return "rbd_aio_discard";
  case AIO_FLUSH: return "rbd_aio_flush";
  }
  return "rbd_aio";
}

/* On a librbd thread. Releasing the completion inside its callback is allowed (QEMU does it). */
static void aio_callback(rbd_completion_t c, void *arg) {
  aio_t *r = arg;
  r->ret = rbd_aio_get_return_value(c);
  rbd_aio_release(c);
  /* Fails only when the environment is going away; Node then drops the queue. */
  napi_call_threadsafe_function(r->addon->tsfn, r, napi_tsfn_nonblocking);
}

static bool close_now(napi_env env, image_t *img, napi_deferred deferred, napi_ref self);

/* An operation counted in img->in_flight finished: a close that waited for it may start. */
static void image_io_done(napi_env env, image_t *img) {
  napi_value error;
  if (--img->in_flight > 0 || !img->close_waiting) return;
  napi_deferred deferred = img->close_waiting;
  napi_ref self = img->close_self;
  img->close_waiting = NULL;
  img->close_self = NULL;
  if (!close_now(env, img, deferred, self)) {
    napi_delete_reference(env, self);
    napi_get_and_clear_last_exception(env, &error);
    napi_reject_deferred(env, deferred, error);
  }
}

/* On the JS thread (env is NULL while the environment is torn down). */
static void aio_complete_js(napi_env env, napi_value js_cb, void *context, void *data) {
  (void)js_cb;
  (void)context;
  aio_t *r = data;
  napi_value value;
  atomic_fetch_sub(&live_requests, 1);
  if (env == NULL) {
    free(r);
    return;
  }
  if (r->ret < 0) {
    napi_reject_deferred(env, r->deferred, errno_error(env, aio_name(r->op), NULL, (int)r->ret));
  } else {
    if (r->op == AIO_FLUSH) napi_get_undefined(env, &value);
    /* rbd_aio_write and _discard return 0, not a byte count */
    else napi_create_double(env, r->op == AIO_READ ? (double)r->ret : (double)r->length, &value);
    napi_resolve_deferred(env, r->deferred, value);
  }
  if (r->buf_ref) napi_delete_reference(env, r->buf_ref);
  napi_delete_reference(env, r->img_ref);
  if (--r->addon->aio_in_flight == 0) napi_unref_threadsafe_function(env, r->addon->tsfn);
  image_io_done(env, r->img);
  free(r);
}

/* Starts one aio request on img; `buf` is NULL for discard and flush. */
static napi_value aio_start(napi_env env, napi_value self, image_t *img, aio_op_t op, napi_value buf, char *data,
                            uint64_t position, uint64_t length) {
  addon_t *addon;
  rbd_completion_t c;
  napi_value promise;
  int err;
  aio_t *r = calloc(1, sizeof *r);
  napi_get_instance_data(env, (void **)&addon);
  r->op = op;
  r->addon = addon;
  r->img = img;
  r->length = length;
  if (napi_create_promise(env, &r->deferred, &promise) != napi_ok) {
    free(r);
    return throw_last_error(env);
  }
  err = rbd_aio_create_completion(r, aio_callback, &c);
  if (err >= 0) {
    switch (op) {
    case AIO_READ: err = rbd_aio_read(img->h.image, position, length, data, c); break;
    case AIO_WRITE: err = rbd_aio_write(img->h.image, position, length, data, c); break;
    case AIO_DISCARD: err = rbd_aio_discard(img->h.image, position, length, c); break;
    case AIO_FLUSH: err = rbd_aio_flush(img->h.image, c); break;
    }
    if (err < 0) rbd_aio_release(c);
  }
  if (err < 0) {
    napi_reject_deferred(env, r->deferred, errno_error(env, aio_name(op), NULL, err));
    free(r);
    return promise;
  }
  napi_create_reference(env, self, 1, &r->img_ref);
  if (buf) napi_create_reference(env, buf, 1, &r->buf_ref);
  if (addon->aio_in_flight++ == 0) napi_ref_threadsafe_function(env, addon->tsfn);
  img->in_flight++;
  atomic_fetch_add(&live_requests, 1);
  return promise;
}

/* ----------------------------------------------------------------- Image */

static void image_finalize(napi_env env, void *data, void *addon) {
  (void)env;
  image_t *img = data;
  if (!img->closed) release_unclosed(img->h, addon);
  free(img);
}

static napi_value image_construct(napi_env env, napi_callback_info info) {
  return construct(env, info, "Images come from cluster.open()", image_finalize);
}

/* this, its image_t, and up to 4 arguments. NULL (exception pending) if this is not a live Image. */
static image_t *image_this(napi_env env, napi_callback_info info, napi_value *self, napi_value *argv, size_t argc_wanted) {
  size_t argc = argc_wanted;
  image_t *img;
  if (napi_get_cb_info(env, info, &argc, argv, self, NULL) != napi_ok ||
      napi_unwrap(env, *self, (void **)&img) != napi_ok) {
    napi_throw_type_error(env, NULL, "not an Image");
    return NULL;
  }
  return img;
}

static napi_value image_size(napi_env env, napi_callback_info info) {
  napi_value self, result;
  image_t *img = image_this(env, info, &self, NULL, 0);
  if (!img) return NULL;
  CHECK(env, napi_create_double(env, (double)img->size, &result));
  return result;
}

static napi_value image_refresh_size(napi_env env, napi_callback_info info) {
  napi_value self;
  image_t *img = image_this(env, info, &self, NULL, 0);
  if (!img) return NULL;
  if (img->closing) return rejected(env, "rbd_get_size", -EBADF);
  work_t *w = calloc(1, sizeof *w);
  w->op = OP_REFRESH;
  w->img = img;
  CHECK(env, napi_create_reference(env, self, 1, &w->self));
  napi_value promise = work_queue(env, w);
  if (promise) img->in_flight++;
  return promise;
}

/* read/write(buffer, offset, length, position): the caller's buffer, no copy. */
static napi_value image_rw(napi_env env, napi_callback_info info, aio_op_t op) {
  napi_value self, argv[4];
  uint64_t offset, length, position;
  char *data;
  size_t buffer_length;
  bool is_buffer = false;
  image_t *img = image_this(env, info, &self, argv, 4);
  if (!img) return NULL;
  if (napi_is_buffer(env, argv[0], &is_buffer) != napi_ok || !is_buffer) {
    napi_throw_type_error(env, NULL, "buffer must be a Buffer");
    return NULL;
  }
  CHECK(env, napi_get_buffer_info(env, argv[0], (void **)&data, &buffer_length));
  if (!get_offset(env, argv[1], "offset", &offset) || !get_offset(env, argv[2], "length", &length) ||
      !get_offset(env, argv[3], "position", &position))
    return NULL;
  if (offset + length > buffer_length) {
    napi_throw_range_error(env, NULL, "offset + length is beyond the end of the buffer");
    return NULL;
  }
  if (img->closing) return rejected(env, aio_name(op), -EBADF);
  if (op == AIO_READ) {
    /* short read at the end, as pread; librbd would also clip, but 0 bytes needs no round trip */
    if (position >= img->size) return resolved_number(env, 0);
    if (length > img->size - position) length = img->size - position;
  } else if (position > img->size || length > img->size - position) {
    /* librbd clips a write that crosses the end and reports success: refuse it whole */
    return rejected(env, aio_name(op), -EFBIG);
  }
  if (length == 0) return resolved_number(env, 0);
  return aio_start(env, self, img, op, argv[0], data + offset, position, length);
}

static napi_value image_read(napi_env env, napi_callback_info info) { return image_rw(env, info, AIO_READ); }
static napi_value image_write(napi_env env, napi_callback_info info) { return image_rw(env, info, AIO_WRITE); }

static napi_value image_discard(napi_env env, napi_callback_info info) {
  napi_value self, argv[2];
  uint64_t position, length;
  image_t *img = image_this(env, info, &self, argv, 2);
  if (!img) return NULL;
  if (!get_offset(env, argv[0], "position", &position) || !get_offset(env, argv[1], "length", &length)) return NULL;
  if (img->closing) return rejected(env, "rbd_aio_discard", -EBADF);
  if (position > img->size || length > img->size - position) return rejected(env, "rbd_aio_discard", -EFBIG);
  if (length == 0) return resolved_number(env, 0);
  return aio_start(env, self, img, AIO_DISCARD, NULL, NULL, position, length);
}

static napi_value image_flush(napi_env env, napi_callback_info info) {
  napi_value self;
  image_t *img = image_this(env, info, &self, NULL, 0);
  if (!img) return NULL;
  if (img->closing) return rejected(env, "rbd_aio_flush", -EBADF);
  return aio_start(env, self, img, AIO_FLUSH, NULL, NULL, 0, 0);
}

/* Queues the close; false (exception pending, `self` still the caller's) if it could not. */
static bool close_now(napi_env env, image_t *img, napi_deferred deferred, napi_ref self) {
  napi_value name;
  work_t *w = calloc(1, sizeof *w);
  w->op = OP_CLOSE;
  w->img = img;
  w->deferred = deferred;
  w->self = self;
  napi_create_string_utf8(env, "rbd_close", NAPI_AUTO_LENGTH, &name);
  if (napi_create_async_work(env, NULL, name, work_execute, work_complete, w, &w->work) != napi_ok ||
      napi_queue_async_work(env, w->work) != napi_ok) {
    w->self = NULL;
    work_free(env, w);
    throw_last_error(env);
    return false;
  }
  return true;
}

/* Waits for the image's in-flight I/O, then closes; later I/O gets EBADF. */
static napi_value image_close(napi_env env, napi_callback_info info) {
  napi_value self, promise;
  napi_deferred deferred;
  napi_ref ref;
  image_t *img = image_this(env, info, &self, NULL, 0);
  if (!img) return NULL;
  if (img->closing) return rejected(env, "rbd_close", -EBADF);
  img->closing = true;
  CHECK(env, napi_create_promise(env, &deferred, &promise));
  CHECK(env, napi_create_reference(env, self, 1, &ref));
  if (img->in_flight > 0) {
    img->close_waiting = deferred;
    img->close_self = ref;
    return promise;
  }
  if (!close_now(env, img, deferred, ref)) {
    napi_delete_reference(env, ref);
    return NULL;
  }
  return promise;
}

/* --------------------------------------------------------------- Cluster */

static void cluster_finalize(napi_env env, void *data, void *addon) {
  (void)env;
  cluster_obj_t *obj = data;
  if (!obj->shut_down) release_unclosed((image_handles_t){.cluster = obj->cluster}, addon);
  free(obj);
}

static napi_value cluster_construct(napi_env env, napi_callback_info info) {
  return construct(env, info, "Clusters come from connect()", cluster_finalize);
}

static cluster_obj_t *cluster_this(napi_env env, napi_callback_info info, napi_value *argv, size_t argc_wanted) {
  size_t argc = argc_wanted;
  napi_value self;
  cluster_obj_t *obj;
  if (napi_get_cb_info(env, info, &argc, argv, &self, NULL) != napi_ok || napi_unwrap(env, self, (void **)&obj) != napi_ok) {
    napi_throw_type_error(env, NULL, "not a Cluster");
    return NULL;
  }
  return obj;
}

/* open(pool, image, { readOnly?, snapshot? }) */
static napi_value cluster_open(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  cluster_obj_t *obj = cluster_this(env, info, argv, 3);
  if (!obj) return NULL;
  work_t *w = calloc(1, sizeof *w);
  w->op = OP_OPEN;
  if (!(w->pool = get_string(env, argv[0], "pool")) || !(w->image_name = get_string(env, argv[1], "image")) ||
      (is_object(env, argv[2]) && (!get_optional_bool(env, argv[2], "readOnly", &w->read_only) ||
                                   !get_optional_string(env, argv[2], "snapshot", &w->snapshot)))) {
    work_free(env, w);
    return NULL;
  }
  if (obj->shut_down) {
    work_free(env, w);
    return rejected(env, "rbd_open", -EBADF);
  }
  /* taken on the JS thread, where the Cluster's own reference keeps the count above 0 */
  atomic_fetch_add(&obj->cluster->refs, 1);
  w->handles.cluster = obj->cluster;
  napi_value promise = work_queue(env, w);
  if (!promise) cluster_unref(obj->cluster); /* cannot be the last reference, see above */
  return promise;
}

/* Drops this Cluster's reference; librados shuts down once its last image is closed. */
static napi_value cluster_shutdown(napi_env env, napi_callback_info info) {
  cluster_obj_t *obj = cluster_this(env, info, NULL, 0);
  if (!obj) return NULL;
  if (obj->shut_down) return rejected(env, "rados_shutdown", -EBADF);
  obj->shut_down = true;
  work_t *w = calloc(1, sizeof *w);
  w->op = OP_SHUTDOWN;
  w->cluster = obj->cluster;
  return work_queue(env, w);
}

/* ---------------------------------------------------------------- module */

/* connect({ user, cluster?, conf?, monHost?, key?, keyring?, options? }): the named
 * fields are librados settings too, applied after the conf file, before `options`. */
static napi_value rbd_connect(napi_env env, napi_callback_info info) {
  static const char *const named[][2] = {{"monHost", "mon_host"}, {"key", "key"}, {"keyring", "keyring"}};
  const size_t n_named = sizeof named / sizeof named[0];
  size_t argc = 1;
  napi_value arg, options, names, name, value;
  uint32_t count = 0;
  CHECK(env, napi_get_cb_info(env, info, &argc, &arg, NULL, NULL));
  if (argc < 1 || !is_object(env, arg)) {
    napi_throw_type_error(env, NULL, "connect() takes an options object");
    return NULL;
  }
  work_t *w = calloc(1, sizeof *w);
  w->op = OP_CONNECT;
  if (!get_optional_string(env, arg, "user", &w->user) || !get_optional_string(env, arg, "cluster", &w->cluster_name) ||
      !get_optional_string(env, arg, "conf", &w->conf_file))
    goto invalid;
  if (!w->user) {
    napi_throw_type_error(env, NULL, "user is required");
    goto invalid;
  }
  if (napi_get_named_property(env, arg, "options", &options) != napi_ok) goto invalid;
  if (is_object(env, options)) {
    if (napi_get_property_names(env, options, &names) != napi_ok || napi_get_array_length(env, names, &count) != napi_ok)
      goto invalid;
  }
  w->option_count = n_named + count;
  w->option_names = calloc(w->option_count, sizeof(char *));
  w->option_values = calloc(w->option_count, sizeof(char *));
  for (size_t i = 0; i < n_named; i++) {
    if (!get_optional_string(env, arg, named[i][0], &w->option_values[i])) goto invalid;
    w->option_names[i] = strdup(named[i][1]);
  }
  for (uint32_t i = 0; i < count; i++) {
    napi_get_element(env, names, i, &name);
    napi_get_property(env, options, name, &value);
    if (!(w->option_names[n_named + i] = get_string(env, name, "option name")) ||
        !(w->option_values[n_named + i] = get_string(env, value, "option value")))
      goto invalid;
  }
  return work_queue(env, w);
invalid:
  work_free(env, w);
  return NULL;
}

/* Live native handles in this process: for leak tests and diagnostics. */
static napi_value rbd_stats(napi_env env, napi_callback_info info) {
  (void)info;
  napi_value result, n;
  CHECK(env, napi_create_object(env, &result));
  napi_create_int64(env, atomic_load(&live_clusters), &n);
  napi_set_named_property(env, result, "clusters", n);
  napi_create_int64(env, atomic_load(&live_images), &n);
  napi_set_named_property(env, result, "images", n);
  napi_create_int64(env, atomic_load(&live_requests), &n);
  napi_set_named_property(env, result, "requests", n);
  return result;
}

static void addon_finalize(napi_env env, void *data, void *hint) {
  (void)hint;
  addon_t *addon = data;
  napi_delete_reference(env, addon->cluster_ctor);
  napi_delete_reference(env, addon->image_ctor);
  free(addon);
}

static napi_value init(napi_env env, napi_value exports) {
  napi_value name, cluster_class, image_class, fn;
  addon_t *addon = calloc(1, sizeof *addon);
  napi_property_descriptor cluster_methods[] = {
    {"open", NULL, cluster_open, NULL, NULL, NULL, napi_default_method, NULL},
    {"shutdown", NULL, cluster_shutdown, NULL, NULL, NULL, napi_default_method, NULL},
  };
  napi_property_descriptor image_methods[] = {
    {"size", NULL, image_size, NULL, NULL, NULL, napi_default_method, NULL},
    {"refreshSize", NULL, image_refresh_size, NULL, NULL, NULL, napi_default_method, NULL},
    {"read", NULL, image_read, NULL, NULL, NULL, napi_default_method, NULL},
    {"write", NULL, image_write, NULL, NULL, NULL, napi_default_method, NULL},
    {"discard", NULL, image_discard, NULL, NULL, NULL, napi_default_method, NULL},
    {"flush", NULL, image_flush, NULL, NULL, NULL, napi_default_method, NULL},
    {"close", NULL, image_close, NULL, NULL, NULL, napi_default_method, NULL},
  };
  CHECK(env, napi_define_class(env, "Cluster", NAPI_AUTO_LENGTH, cluster_construct, NULL, 2, cluster_methods, &cluster_class));
  CHECK(env, napi_define_class(env, "Image", NAPI_AUTO_LENGTH, image_construct, NULL, 7, image_methods, &image_class));
  CHECK(env, napi_create_reference(env, cluster_class, 1, &addon->cluster_ctor));
  CHECK(env, napi_create_reference(env, image_class, 1, &addon->image_ctor));
  CHECK(env, napi_create_string_utf8(env, "cinderfs rbd completions", NAPI_AUTO_LENGTH, &name));
  CHECK(env, napi_create_threadsafe_function(env, NULL, NULL, name, 0, 1, NULL, NULL, NULL, aio_complete_js, &addon->tsfn));
  CHECK(env, napi_unref_threadsafe_function(env, addon->tsfn));
  CHECK(env, napi_set_instance_data(env, addon, addon_finalize, NULL));
  /* registered after the environment's own cleanup, so it runs before the finalizers */
  CHECK(env, napi_add_env_cleanup_hook(env, addon_teardown, addon));
  CHECK(env, napi_create_function(env, "connect", NAPI_AUTO_LENGTH, rbd_connect, NULL, &fn));
  CHECK(env, napi_set_named_property(env, exports, "connect", fn));
  CHECK(env, napi_create_function(env, "stats", NAPI_AUTO_LENGTH, rbd_stats, NULL, &fn));
  CHECK(env, napi_set_named_property(env, exports, "stats", fn));
  CHECK(env, napi_set_named_property(env, exports, "Cluster", cluster_class));
  CHECK(env, napi_set_named_property(env, exports, "Image", image_class));
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
