// LD_PRELOAD probe for scripts/hot-text.sh. In the process whose executable is $HOT_PROBE_EXE,
// $HOT_PROBE_AFTER seconds (7) after start, once start-up is over: every other page of the
// executable's code gets MADV_RANDOM, which splits the mapping into one VMA per page (the
// flags of neighbours differ), then the whole code is dropped (MADV_DONTNEED). Fault-around is
// clipped to the VMA (Linux mm/memory.c, do_fault_around), so from then on a page is resident
// only if the process ran code on it: /proc/<pid>/pagemap then shows exactly the code the
// steady state runs. Measurement only; never linked into fieldgate.
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static char exe[4096];

static void *probe(void *unused) {
    (void)unused;
    const char *after = getenv("HOT_PROBE_AFTER");
    sleep(after ? (unsigned)atoi(after) : 7);
    // The ranges first: splitting the mapping while reading /proc/self/maps would show its
    // pieces as further lines.
    unsigned long ranges[16][2];
    int count = 0;
    FILE *maps = fopen("/proc/self/maps", "r");
    if (!maps) return NULL;
    char line[8192];
    while (count < 16 && fgets(line, sizeof line, maps)) {
        unsigned long a, b;
        char perms[8], path[4096] = "";
        if (sscanf(line, "%lx-%lx %7s %*s %*s %*s %4095s", &a, &b, perms, path) >= 3 &&
            strcmp(path, exe) == 0 && perms[2] == 'x') {
            ranges[count][0] = a;
            ranges[count][1] = b;
            count++;
        }
    }
    fclose(maps);
    long page = sysconf(_SC_PAGESIZE);
    for (int i = 0; i < count; i++) {
        unsigned long a = ranges[i][0], b = ranges[i][1];
        for (unsigned long p = a; p < b; p += 2 * (unsigned long)page)
            madvise((void *)p, (size_t)page, MADV_RANDOM);
        madvise((void *)a, b - a, MADV_DONTNEED);
    }
    fprintf(stderr, "hot-text probe: code of %s dropped, one VMA per page\n", exe);
    return NULL;
}

__attribute__((constructor)) static void start(void) {
    const char *want = getenv("HOT_PROBE_EXE");
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (!want || n <= 0) return;
    exe[n] = 0;
    if (strcmp(exe, want) != 0) return;
    pthread_t t;
    if (pthread_create(&t, NULL, probe, NULL) == 0) pthread_detach(t);
}
