/*
 * cinderfs block memory: anonymous mappings with MADV_HUGEPAGE, handed to
 * JavaScript as external ArrayBuffers (unmapped when collected).
 *
 * Why native: the block cache fills with memory the daemon never touched
 * before, and on the VMs we run on a first touch costs ~16 us per 4 KiB page
 * (512 MiB: ~2 s, measured); with 2 MiB transparent huge pages the same
 * touch is 2-4x cheaper. Only madvise() can ask for them where the system's
 * THP mode is "madvise" (Debian's default), and Node has no binding for it.
 * The mapping is page-aligned as well, which O_DIRECT needs.
 */
#define NAPI_VERSION 8
#include <node_api.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>

#define HUGE_PAGE ((size_t)2 << 20)

static void unmap(napi_env env, void *data, void *hint) {
  (void)env;
  munmap(data, (size_t)(uintptr_t)hint);
}

static napi_value throw_errno(napi_env env, const char *what, int err) {
  char message[160];
  napi_value error, code, text;
  snprintf(message, sizeof message, "%s: %s", what, strerror(err));
  napi_create_string_utf8(env, message, NAPI_AUTO_LENGTH, &text);
  napi_create_string_utf8(env, err == ENOMEM ? "ENOMEM" : "EIO", NAPI_AUTO_LENGTH, &code);
  napi_create_error(env, code, text, &error);
  napi_throw(env, error);
  return NULL;
}

/* hugePageMemory(bytes): a 2 MiB-aligned ArrayBuffer of `bytes` (a multiple of 2 MiB), advised for huge pages. */
static napi_value huge_page_memory(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1], result;
  int64_t bytes = 0;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc != 1 ||
      napi_get_value_int64(env, argv[0], &bytes) != napi_ok || bytes <= 0 ||
      (uint64_t)bytes % HUGE_PAGE != 0 || (uint64_t)bytes > ((uint64_t)1 << 40)) {
    napi_throw_range_error(env, NULL, "hugePageMemory: bytes must be a positive multiple of 2 MiB, at most 1 TiB");
    return NULL;
  }
  size_t length = (size_t)bytes;
  /* One huge page more, so the start can be moved to a 2 MiB boundary (THP maps aligned 2 MiB extents only). */
  char *raw = mmap(NULL, length + HUGE_PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (raw == MAP_FAILED) return throw_errno(env, "mmap", errno);
  char *start = (char *)(((uintptr_t)raw + HUGE_PAGE - 1) & ~(uintptr_t)(HUGE_PAGE - 1));
  if (start > raw) munmap(raw, (size_t)(start - raw));
  char *end = start + length;
  if (raw + length + HUGE_PAGE > end) munmap(end, (size_t)(raw + length + HUGE_PAGE - end));
  /* Best effort: where THP is off ("never") the memory still works, in 4 KiB pages. */
  madvise(start, length, MADV_HUGEPAGE);
  if (napi_create_external_arraybuffer(env, start, length, unmap, (void *)(uintptr_t)length, &result) != napi_ok) {
    munmap(start, length);
    napi_throw_error(env, NULL, "hugePageMemory: the runtime refused an external ArrayBuffer");
    return NULL;
  }
  return result;
}

NAPI_MODULE_INIT() {
  napi_value fn;
  if (napi_create_function(env, "hugePageMemory", NAPI_AUTO_LENGTH, huge_page_memory, NULL, &fn) != napi_ok ||
      napi_set_named_property(env, exports, "hugePageMemory", fn) != napi_ok)
    return NULL;
  return exports;
}
