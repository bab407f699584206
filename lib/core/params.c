/* The struct_size convention of params structs (doc/api.md, "Parameters"). */
#include <string.h>

#include "core.h"

mla_status mla_params_read(void *full, size_t full_size, const void *caller, const char *what)
{
    if (!caller)
        return mla_fail(MLA_ERR_INVALID_ARGUMENT, "%s is NULL", what);
    size_t size;
    memcpy(&size, caller, sizeof size);
    if (size < sizeof(size_t))
        return mla_fail(MLA_ERR_INVALID_ARGUMENT,
                        "%s.struct_size is %zu: set it with the matching *_default_params call",
                        what, size);
    size_t n = size < full_size ? size : full_size;
    memcpy((char *)full + sizeof(size_t), (const char *)caller + sizeof(size_t),
           n - sizeof(size_t));
    memcpy(full, &full_size, sizeof full_size);
    return MLA_OK;
}

mla_status mla_params_write(void *caller, size_t struct_size, const void *full, size_t full_size,
                            const char *what)
{
    if (!caller)
        return mla_fail(MLA_ERR_INVALID_ARGUMENT, "%s is NULL", what);
    if (struct_size < sizeof(size_t))
        return mla_fail(MLA_ERR_INVALID_ARGUMENT, "%s: struct_size %zu is too small", what,
                        struct_size);
    size_t n = struct_size < full_size ? struct_size : full_size;
    memcpy(caller, full, n);
    /* A caller built against a newer header gets zeros in the fields this library lacks. */
    memset((char *)caller + n, 0, struct_size - n);
    memcpy(caller, &struct_size, sizeof struct_size);
    return MLA_OK;
}
