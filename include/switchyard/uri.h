/* Request-target path normalisation before routing (RFC 3986 §6.2.2): the
 * route is chosen, and the upstream addressed, by one canonical spelling of
 * the path, so "/x/../admin", "//admin" and "/%61dmin" cannot walk around a
 * route that guards "/admin". Pure: no allocation, no I/O. */
#ifndef SWITCHYARD_URI_H
#define SWITCHYARD_URI_H

#include <stddef.h>

#include "switchyard/router.h"

/* Flags for sy_path_normalize. */
enum {
  SY_PATH_MERGE_SLASHES = 1,          /* "a//b" -> "a/b" (nginx merge_slashes) */
  SY_PATH_REJECT_ESCAPED_SLASHES = 2, /* %2F or %5C in the path -> refused */
};

typedef enum sy_path_result {
  SY_PATH_OK = 0,
  SY_PATH_NOT_ABSOLUTE,  /* empty, or does not start with '/' */
  SY_PATH_BAD_ESCAPE,    /* '%' not followed by two hex digits */
  SY_PATH_ABOVE_ROOT,    /* a ".." segment would leave "/" */
  SY_PATH_ESCAPED_SLASH, /* %2F / %5C with SY_PATH_REJECT_ESCAPED_SLASHES */
  SY_PATH_NO_ROOM,       /* cap < path.len + 1 */
} sy_path_result;

/* Normalises `path` (the request target up to '?', which the caller keeps
 * apart) into out[0..*outlen), NUL-terminated:
 *   - %XX of an unreserved character (ALPHA DIGIT - . _ ~) is decoded, every
 *     other escape is kept with its hex upper-cased (%2f -> %2F);
 *   - "." and ".." segments are resolved after that decoding, so %2e%2e is
 *     "..", while "..%2F" is an ordinary segment (an escaped slash is no
 *     separator);
 *   - empty segments are dropped with SY_PATH_MERGE_SLASHES.
 * The result is never longer than the input: cap >= path.len + 1 is enough.
 * Any result but SY_PATH_OK means the request is answered 400; *outlen is
 * then 0. */
sy_path_result sy_path_normalize(sy_str path, unsigned flags, char *out, size_t cap,
                                 size_t *outlen);

/* The flags a configuration's `paths` group asks for. */
static inline unsigned sy_path_flags(const sy_paths *p) {
  return (p->merge_slashes ? SY_PATH_MERGE_SLASHES : 0u) |
         (p->reject_escaped_slashes ? SY_PATH_REJECT_ESCAPED_SLASHES : 0u);
}

/* A short text for logs ("bad percent-escape", ...). */
const char *sy_path_result_str(sy_path_result r);

#endif
