/* The smallest libmla program: check the library matches the headers, show the error model. */
#include <stdio.h>

#include <mla/mla.h>

int main(void)
{
    if (mla_version() != MLA_VERSION_NUMBER) {
        fprintf(stderr, "built against libmla %s but running %s\n", MLA_VERSION_STRING,
                mla_version_string());
        return 1;
    }
    printf("libmla %s\n%s\n", mla_version_string(), mla_build_info());

    /* Every call returns a status; mla_last_error() says what was wrong and where. */
    mla_convert_params params;
    mla_status s = mla_convert_default_params(&params, 1);
    printf("a deliberate mistake: %s (%s)\n", mla_status_string(s), mla_last_error());
    return s == MLA_ERR_INVALID_ARGUMENT ? 0 : 1;
}
