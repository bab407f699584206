/* Every status has its own non-empty message; unknown values still get a string. */
#include <stdlib.h>
#include <string.h>

#include <mla/mla.h>

#include "../tap.h"

int main(void)
{
    for (int s = 0; s < MLA_STATUS_COUNT; s++) {
        const char *msg = mla_status_string((mla_status)s);
        CHECK(msg && msg[0], "status %d has a message (%s)", s, msg ? msg : "NULL");
        if (strcmp(msg, "unknown status") == 0)
            CHECK(0, "status %d is not described", s);
        for (int t = 0; t < s; t++)
            CHECK(strcmp(msg, mla_status_string((mla_status)t)) != 0,
                  "status %d and %d have distinct messages", s, t);
    }
    CHECK(strcmp(mla_status_string((mla_status)MLA_STATUS_COUNT), "unknown status") == 0,
          "a value past the last status is unknown, not NULL");
    CHECK(strcmp(mla_status_string((mla_status)-1), "unknown status") == 0,
          "a negative status is unknown, not NULL");

    CHECK(mla_version() == MLA_VERSION_NUMBER, "library version %d matches header %d",
          mla_version(), MLA_VERSION_NUMBER);
    CHECK(strcmp(mla_version_string(), MLA_VERSION_STRING) == 0, "version string %s",
          mla_version_string());
    CHECK(strstr(mla_build_info(), "BLIS") != NULL, "build info names BLIS: %s", mla_build_info());
    /* The attention kernels chosen at run time; MLA_ATTN_KERNELS=portable (core/status-portable)
     * forces the oracle. */
    const char *force = getenv("MLA_ATTN_KERNELS");
    const char *want = force && strcmp(force, "portable") == 0
                           ? "; attention kernels: portable, bf16 products: portable"
                           : "; attention kernels: ";
    CHECK(strstr(mla_build_info(), want) != NULL, "build info has \"%s\": %s", want,
          mla_build_info());

    for (int d = 0; d <= MLA_DTYPE_F64; d++)
        CHECK(mla_dtype_bits((mla_dtype)d) > 0 && strcmp(mla_dtype_name((mla_dtype)d), "?") != 0,
              "dtype %d is described (%s, %d bits)", d, mla_dtype_name((mla_dtype)d),
              mla_dtype_bits((mla_dtype)d));
    CHECK(mla_dtype_bits((mla_dtype)99) == 0 && strcmp(mla_dtype_name((mla_dtype)99), "?") == 0,
          "unknown dtype gives 0 bits and \"?\"");
    return tap_done();
}
