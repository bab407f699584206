/* Shared by the subcommands of tools/mla. */
#ifndef MLA_TOOLS_TOOL_H
#define MLA_TOOLS_TOOL_H

int tool_demo(int argc, char **argv);

double tool_now(void);

/* The integer value of option `opt` from text `s`, whole and within [lo, hi]; otherwise a message
 * on stderr naming the option and 0. */
int tool_int_option(const char *cmd, const char *opt, const char *s, long lo, long hi, int *out);

#endif
