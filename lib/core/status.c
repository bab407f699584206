/* Status messages and the thread-local last error. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "core.h"

#define MLA_ERROR_MAX 1024

static _Thread_local char last_error[MLA_ERROR_MAX];

static const char *const status_strings[MLA_STATUS_COUNT] = {
    [MLA_OK] = "success",
    [MLA_ERR_INVALID_ARGUMENT] = "invalid argument",
    [MLA_ERR_SHAPE_MISMATCH] = "shape mismatch",
    [MLA_ERR_OUT_OF_MEMORY] = "out of memory",
    [MLA_ERR_IO] = "input/output error",
    [MLA_ERR_BAD_FORMAT] = "bad format",
    [MLA_ERR_UNSUPPORTED] = "unsupported",
    [MLA_ERR_CAPACITY] = "capacity exhausted",
    [MLA_ERR_NUMERICAL] = "numerical failure",
    [MLA_ERR_INTERNAL] = "internal error",
    [MLA_ERR_CANCELLED] = "cancelled",
};

MLA_API const char *mla_status_string(mla_status status)
{
    if ((unsigned)status < MLA_STATUS_COUNT && status_strings[status])
        return status_strings[status];
    return "unknown status";
}

MLA_API const char *mla_last_error(void)
{
    return last_error;
}

MLA_API void mla_clear_error(void)
{
    last_error[0] = '\0';
}

mla_status mla_fail(mla_status status, const char *fmt, ...)
{
    int n = snprintf(last_error, sizeof last_error, "%s: ", mla_status_string(status));
    if (n < 0 || (size_t)n >= sizeof last_error)
        n = 0;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_error + n, sizeof last_error - (size_t)n, fmt, ap);
    va_end(ap);
    return status;
}

mla_status mla_fail_context(mla_status status, const char *fmt, ...)
{
    char prefix[256];
    char old[MLA_ERROR_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    /* Keep "status: " in front; the context goes after it. */
    const char *tail = last_error;
    const char *head = mla_status_string(status);
    size_t hl = strlen(head);
    if (strncmp(last_error, head, hl) == 0 && last_error[hl] == ':' && last_error[hl + 1] == ' ')
        tail = last_error + hl + 2;
    size_t tl = strlen(tail);
    memcpy(old, tail, tl + 1);
    /* head + ": " + prefix + old, cut to the buffer */
    size_t n = 0;
    const char *parts[4] = {head, ": ", prefix, old};
    for (int i = 0; i < 4; i++) {
        size_t len = strlen(parts[i]);
        if (len > sizeof last_error - 1 - n)
            len = sizeof last_error - 1 - n;
        memcpy(last_error + n, parts[i], len);
        n += len;
    }
    last_error[n] = '\0';
    return status;
}
