/*
 * N-API helpers the cinderfs addons share (native/rbd, native/iscsi): the
 * pending-error throw, Node-system-error-shaped errno errors, and argument
 * checks. Header-only, static: each addon is one translation unit.
 */
#ifndef CINDERFS_NAPI_UTIL_H
#define CINDERFS_NAPI_UTIL_H

#include <node_api.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <uv.h>

#define MAX_SAFE_INTEGER 9007199254740991.0

/* Throws the last N-API error unless an exception is already pending; returns NULL for callers to return. */
static napi_value throw_last_error(napi_env env) {
  const napi_extended_error_info *info = NULL;
  bool pending = false;
  napi_get_last_error_info(env, &info);
  napi_is_exception_pending(env, &pending);
  if (!pending) napi_throw_error(env, NULL, info && info->error_message ? info->error_message : "N-API call failed");
  return NULL;
}

/* An Error for a negative errno: `code` (the errno name, EIO for what libuv cannot name) and `errno`. */
static napi_value errno_error(napi_env env, const char *what, const char *detail, int err) {
  char name[64], text[256], message[640];
  napi_value msg, error, code, number;
  uv_err_name_r(err, name, sizeof name);
  if (strncmp(name, "Unknown", 7) == 0) strcpy(name, "EIO");
  uv_strerror_r(err, text, sizeof text);
  if (detail && *detail) snprintf(message, sizeof message, "%s: %s (%s)", what, text, detail);
  else snprintf(message, sizeof message, "%s: %s", what, text);
  napi_create_string_utf8(env, message, NAPI_AUTO_LENGTH, &msg);
  napi_create_error(env, NULL, msg, &error);
  napi_create_string_utf8(env, name, NAPI_AUTO_LENGTH, &code);
  napi_create_int32(env, err, &number);
  napi_set_named_property(env, error, "code", code);
  napi_set_named_property(env, error, "errno", number);
  return error;
}

/* A byte offset or length: a safe non-negative integer (RangeError otherwise). */
static bool get_offset(napi_env env, napi_value value, const char *name, uint64_t *out) {
  double d;
  char message[128];
  if (napi_get_value_double(env, value, &d) != napi_ok || !(d >= 0 && d <= MAX_SAFE_INTEGER) || d != (double)(uint64_t)d) {
    snprintf(message, sizeof message, "%s must be a non-negative safe integer", name);
    napi_throw_range_error(env, NULL, message);
    return false;
  }
  *out = (uint64_t)d;
  return true;
}

/* An optional boolean property: *out stays false when absent (TypeError when not a boolean). */
static bool get_optional_bool(napi_env env, napi_value object, const char *name, bool *out) {
  napi_value value;
  napi_valuetype type;
  char message[128];
  *out = false;
  if (napi_get_named_property(env, object, name, &value) != napi_ok) return false;
  napi_typeof(env, value, &type);
  if (type == napi_undefined) return true;
  if (napi_get_value_bool(env, value, out) != napi_ok) {
    snprintf(message, sizeof message, "%s must be a boolean", name);
    napi_throw_type_error(env, NULL, message);
    return false;
  }
  return true;
}

#endif
