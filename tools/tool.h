/* Shared by the subcommands of tools/mla. */
#ifndef MLA_TOOLS_TOOL_H
#define MLA_TOOLS_TOOL_H

int tool_demo(int argc, char **argv);

double tool_now(void);

#endif
