/*
 * Snapshots through files. Saving writes a temporary file next to the target (mkstemp, so it is
 * on the same file system and created with mode 0600), fsyncs it, and renames it over the target:
 * a reader sees the old file or the new one, never a partial one. On failure the temporary is
 * removed and the target left alone.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <mla/cache.h>

#include "cache/snapshot.h"

static const char *errno_text(int err, char *buf, size_t n)
{
    if (strerror_r(err, buf, n) != 0)
        snprintf(buf, n, "errno %d", err);
    return buf;
}

typedef struct fd_sink {
    int fd;
    int err;
} fd_sink;

static int fd_write(void *user, const void *data, size_t n)
{
    fd_sink *f = user;
    const char *p = data;
    while (n) {
        ssize_t k = write(f->fd, p, n);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            return f->err = k < 0 ? errno : EIO;
        p += k;
        n -= (size_t)k;
    }
    return 0;
}

/* Make the rename durable; best effort, as some file systems refuse fsync on directories. */
static void sync_dir(const char *path)
{
    char *dir = strdup(path);
    if (!dir)
        return;
    char *slash = strrchr(dir, '/');
    if (slash == dir)
        slash[1] = '\0';
    else if (slash)
        *slash = '\0';
    int fd = open(slash ? dir : ".", O_RDONLY);
    if (fd >= 0) {
        (void)fsync(fd);
        close(fd);
    }
    free(dir);
}

MLA_API mla_status mla_cache_save_file(const mla_cache *c, int32_t seq, const char *path)
{
    if (!path || !*path)
        return mla_fail(MLA_ERR_INVALID_ARGUMENT, "mla_cache_save_file: path is %s",
                        path ? "empty" : "NULL");
    size_t size;
    mla_status st = mla__cache_save_stream(c, seq, &size, NULL, NULL); /* arguments first */
    if (st != MLA_OK)
        return st;
    size_t len = strlen(path);
    char *tmp = mla_alloc(len + sizeof ".tmp.XXXXXX");
    if (!tmp)
        return mla_fail(MLA_ERR_OUT_OF_MEMORY, "mla_cache_save_file: %s", path);
    memcpy(tmp, path, len);
    memcpy(tmp + len, ".tmp.XXXXXX", sizeof ".tmp.XXXXXX");
    char msg[128];
    int fd = mkstemp(tmp);
    if (fd < 0) {
        int err = errno;
        st = mla_fail(MLA_ERR_IO, "mla_cache_save_file: cannot create a temporary file for %s: "
                      "%s", path, errno_text(err, msg, sizeof msg));
        mla_free(tmp);
        return st;
    }
    fd_sink sink = {fd, 0};
    st = mla__cache_save_stream(c, seq, NULL, fd_write, &sink);
    const char *step = "write";
    int err = sink.err;
    if (st == MLA_OK && fsync(fd) != 0) {
        err = errno;
        step = "fsync";
    }
    if (close(fd) != 0 && !err && st == MLA_OK) {
        err = errno;
        step = "close";
    }
    if (st == MLA_OK && !err && rename(tmp, path) != 0) {
        err = errno;
        step = "rename";
    }
    if (st == MLA_OK && !err) {
        sync_dir(path);
        mla_free(tmp);
        return MLA_OK;
    }
    unlink(tmp);
    if (st == MLA_OK || st == MLA_ERR_IO)
        st = mla_fail(MLA_ERR_IO, "mla_cache_save_file: %s failed for %s (via %s): %s", step,
                      path, tmp, err ? errno_text(err, msg, sizeof msg) : "unknown error");
    else
        st = mla_fail_context(st, "mla_cache_save_file: %s: ", path);
    mla_free(tmp);
    return st;
}

MLA_API mla_status mla_cache_load_file(mla_cache *c, int32_t seq, const char *path)
{
    if (!c || !path)
        return mla_fail(MLA_ERR_INVALID_ARGUMENT, "mla_cache_load_file: %s is NULL",
                        !c ? "cache" : "path");
    char msg[128];
    int fd = open(path, O_RDONLY);
    if (fd < 0) {
        int err = errno;
        return mla_fail(MLA_ERR_IO, "mla_cache_load_file: cannot open %s: %s", path,
                        errno_text(err, msg, sizeof msg));
    }
    struct stat sb;
    if (fstat(fd, &sb) != 0 || sb.st_size < 0 || (uint64_t)sb.st_size > SIZE_MAX) {
        int err = errno;
        close(fd);
        return mla_fail(MLA_ERR_IO, "mla_cache_load_file: cannot stat %s: %s", path,
                        errno_text(err, msg, sizeof msg));
    }
    size_t size = (size_t)sb.st_size, got = 0;
    unsigned char *buf = mla_alloc(size);
    if (!buf) {
        close(fd);
        return mla_fail(MLA_ERR_OUT_OF_MEMORY, "mla_cache_load_file: %zu bytes for %s", size,
                        path);
    }
    while (got < size) {
        ssize_t k = read(fd, buf + got, size - got);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0) {
            int err = k < 0 ? errno : 0;
            close(fd);
            mla_free(buf);
            return mla_fail(MLA_ERR_IO, "mla_cache_load_file: reading %s: %s", path,
                            err ? errno_text(err, msg, sizeof msg) : "file shrank while read");
        }
        got += (size_t)k;
    }
    close(fd);
    mla_status st = mla_cache_load(c, seq, buf, size);
    mla_free(buf);
    if (st != MLA_OK)
        return mla_fail_context(st, "%s: ", path);
    return MLA_OK;
}
