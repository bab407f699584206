/* mla: libmla's command line. Each subcommand is one function; `mla help` lists them. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
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

int tool_int_option(const char *cmd, const char *opt, const char *s, long lo, long hi, int *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (end == s || *end != '\0') {
        fprintf(stderr, "mla %s: %s '%s' is not an integer\n", cmd, opt, s);
        return 0;
    }
    if (errno == ERANGE || v < lo || v > hi) {
        fprintf(stderr, "mla %s: %s %s is out of range (%ld .. %ld)\n", cmd, opt, s, lo, hi);
        return 0;
    }
    *out = (int)v;
    return 1;
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
    if (strcmp(name, "--help") == 0 || strcmp(name, "-h") == 0)
        name = "help";
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (strcmp(name, commands[i].name) == 0)
            return commands[i].run(argc - 1, argv + 1);
    fprintf(stderr, "mla: unknown command '%s' (try 'mla help')\n", name);
    return 2;
}
