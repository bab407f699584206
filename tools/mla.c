/* mla: libmla's command line. Each subcommand is one function; `mla help` lists them. */
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <mla/mla.h>

#include "tool.h"

double tool_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmd_info(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    printf("libmla %s (headers %s)\n", mla_version_string(), MLA_VERSION_STRING);
    printf("%s\n", mla_build_info());
    return mla_version() == MLA_VERSION_NUMBER ? 0 : 1;
}

static int cmd_help(int argc, char **argv);

static const struct command {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *summary;
} commands[] = {
    {"info", cmd_info, "version, BLAS/LAPACK in use, CPU features detected"},
    {"demo", tool_demo, "convert a random SmolLM-135M-shaped layer and run it with its cache"},
    {"help", cmd_help, "this list"},
};

static int cmd_help(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    printf("usage: mla <command> [options]\n\ncommands:\n");
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        printf("  %-10s %s\n", commands[i].name, commands[i].summary);
    return 0;
}

int main(int argc, char **argv)
{
    const char *name = argc > 1 ? argv[1] : "help";
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (strcmp(name, commands[i].name) == 0)
            return commands[i].run(argc - 1, argv + 1);
    fprintf(stderr, "mla: unknown command '%s' (try 'mla help')\n", name);
    return 2;
}
