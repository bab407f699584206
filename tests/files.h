/* Files as the tests of failed writes see them: a directory's entries and a file's bytes. */
#ifndef MLA_TESTS_FILES_H
#define MLA_TESTS_FILES_H

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>

/* Entries of dir other than the hidden ones (. and .. included); 0 if it cannot be opened. */
static inline int count_files(const char *dir)
{
    DIR *d = opendir(dir);
    int n = 0;
    struct dirent *e;
    while (d && (e = readdir(d)))
        n += e->d_name[0] != '.';
    if (d)
        closedir(d);
    return n;
}

/* The bytes of a file, *size of them (NULL and 0 if it cannot be read). */
static inline unsigned char *read_all(const char *path, size_t *size)
{
    *size = 0;
    FILE *h = fopen(path, "rb");
    if (!h)
        return NULL;
    unsigned char *buf = NULL;
    size_t n = 0, cap = 0, k;
    do {
        if (n == cap) {
            cap = cap ? 2 * cap : 4096;
            unsigned char *nb = realloc(buf, cap);
            if (!nb) {
                free(buf);
                fclose(h);
                return NULL;
            }
            buf = nb;
        }
        k = fread(buf + n, 1, cap - n, h);
        n += k;
    } while (k > 0);
    fclose(h);
    *size = n;
    return buf;
}

#endif /* MLA_TESTS_FILES_H */
