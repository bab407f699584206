/*
 * libmla: Multi-head Latent Attention for pretrained transformers (MHA2MLA).
 *
 * The umbrella header: include this one. The API is C11 and C++ compatible; see doc/api.md for its
 * conventions and doc/README.md for the rest of the documentation.
 */
#ifndef MLA_MLA_H
#define MLA_MLA_H

#include <mla/version.h>
#include <mla/common.h>
#include <mla/convert.h>
#include <mla/cache.h>
#include <mla/attn.h>

#endif /* MLA_MLA_H */
