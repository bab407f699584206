/* Snapshot writing through a callback, shared by the memory and file writers. */
#ifndef MLA_CACHE_SNAPSHOT_H
#define MLA_CACHE_SNAPSHOT_H

#include "cache/internal.h"

/* Write n bytes; return 0, or an errno value to stop the writer. */
typedef int (*mla__cache_write_fn)(void *user, const void *data, size_t n);

/* Snapshot of seq (< 0: the whole cache). *size (if not NULL) receives the byte count; with fn
 * NULL nothing is written. A failing fn gives MLA_ERR_IO (the errno is in the message). */
MLA_INTERNAL mla_status mla__cache_save_stream(const mla_cache *c, int32_t seq, size_t *size,
                                               mla__cache_write_fn fn, void *user);

#endif /* MLA_CACHE_SNAPSHOT_H */
