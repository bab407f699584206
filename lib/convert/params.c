/* Defaults of the conversion parameter structs. */
#include <string.h>

#include <mla/convert.h>

#include "core/core.h"

MLA_API mla_status mla_geometry_default_params(mla_geometry *g, size_t struct_size)
{
    mla_geometry d;
    memset(&d, 0, sizeof d);
    d.struct_size = sizeof d;
    d.rope_theta = 10000.0;
    d.rope_scaling = MLA_ROPE_SCALING_NONE;
    d.rope_scaling_factor = 1.0;
    return mla_params_write(g, struct_size, &d, sizeof d, "geometry");
}

MLA_API mla_status mla_layer_weights_default_params(mla_layer_weights *w, size_t struct_size)
{
    mla_layer_weights d;
    memset(&d, 0, sizeof d);
    d.struct_size = sizeof d;
    d.dtype = MLA_DTYPE_F32;
    return mla_params_write(w, struct_size, &d, sizeof d, "weights");
}

MLA_API mla_status mla_calib_default_params(mla_calib_params *p, size_t struct_size)
{
    mla_calib_params d;
    memset(&d, 0, sizeof d);
    d.struct_size = sizeof d;
    d.qk_norms = 1;
    d.covariance = 1;
    return mla_params_write(p, struct_size, &d, sizeof d, "calib params");
}

MLA_API mla_status mla_convert_default_params(mla_convert_params *p, size_t struct_size)
{
    mla_convert_params d;
    memset(&d, 0, sizeof d);
    d.struct_size = sizeof d;
    d.rope_strategy = MLA_ROPE_HIGH;
    d.rope_dim = 8;
    d.uniform_start = 0;
    d.factorization = MLA_FACTOR_JOINT;
    d.d_kv = 16;
    d.damping = 1e-3;
    return mla_params_write(p, struct_size, &d, sizeof d, "convert params");
}
