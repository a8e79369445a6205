/*
 * replay-main.c: a stand-in for libFuzzer's main() that runs a target
 * over saved inputs, so the corpus and every crash reproducer are
 * replayed by `make check` with the ordinary (gcc, ASan) builds.
 *
 *   fuzz-replay-TARGET [--prefix=P] [--skip=NAME]... [--repeat=N] PATH...
 *
 * Each PATH is a file or a directory (every regular file in it, sorted
 * by name; hidden files skipped).  --prefix=P restricts the directories
 * named after it to files whose name starts with P (the shared
 * regressions directory holds every target's reproducers as
 * TARGET-what); --skip=NAME leaves out files of that name (reproducers
 * of bugs not fixed yet, which meson.build runs as expected failures);
 * --repeat=N runs each input N times, each in a fresh child process
 * (for a reproducer that fails only most of the time); the first
 * failure ends the replay with the same status.  A crash or failed invariant aborts with the name of
 * the input on stderr; otherwise exits 0 after printing how many inputs
 * ran.  A missing directory counts as empty.
 */
#include "fuzz.h"

#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

__attribute__((weak)) int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    return 0;
}

static unsigned long ran;
static int repeat = 1;
static const char *skip[64];
static int nskip;

static int skipped(const char *name)
{
    int i;

    for (i = 0; i < nskip; i++) {
        if (strcmp(skip[i], name) == 0) {
            return 1;
        }
    }
    return 0;
}

static void run_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    uint8_t *buf = NULL;
    size_t len = 0, cap = 0, n;

    if (!f) {
        fprintf(stderr, "replay: cannot open %s: %s\n", path,
                strerror(errno));
        exit(1);
    }
    do {
        if (len == cap) {
            cap = cap ? cap * 2 : 4096;
            buf = realloc(buf, cap);
            if (!buf) {
                fprintf(stderr, "replay: out of memory\n");
                exit(1);
            }
        }
        n = fread(buf + len, 1, cap - len, f);
        len += n;
    } while (n > 0);
    if (ferror(f)) {
        fprintf(stderr, "replay: cannot read %s\n", path);
        exit(1);
    }
    fclose(f);
    /* fd 2 directly: a target may point stderr elsewhere. */
    dprintf(2, "replay: %s (%zu bytes)\n", path, len);
    /* An exactly sized copy, so ASan sees reads past the end. */
    {
        uint8_t *copy = malloc(len ? len : 1);

        if (!copy) {
            fprintf(stderr, "replay: out of memory\n");
            exit(1);
        }
        memcpy(copy, buf, len);
        if (repeat == 1) {
            LLVMFuzzerTestOneInput(copy, len);
        }
        for (int i = 0; repeat > 1 && i < repeat; i++) {
            pid_t pid = fork();
            int st;

            if (pid < 0) {
                fprintf(stderr, "replay: fork: %s\n", strerror(errno));
                exit(1);
            }
            if (pid == 0) {
                LLVMFuzzerTestOneInput(copy, len);
                _exit(0);
            }
            if (waitpid(pid, &st, 0) < 0) {
                fprintf(stderr, "replay: waitpid: %s\n", strerror(errno));
                exit(1);
            }
            if (WIFSIGNALED(st)) {
                signal(WTERMSIG(st), SIG_DFL);
                raise(WTERMSIG(st));
            }
            if (WEXITSTATUS(st) != 0) {
                exit(WEXITSTATUS(st));
            }
        }
        free(copy);
    }
    free(buf);
    ran++;
}

static int cmp_names(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void run_dir(const char *dir, const char *prefix)
{
    DIR *d = opendir(dir);
    struct dirent *de;
    char **names = NULL;
    size_t n = 0, cap = 0, i;

    if (!d) {
        if (errno == ENOENT) {
            return;
        }
        fprintf(stderr, "replay: cannot open %s: %s\n", dir,
                strerror(errno));
        exit(1);
    }
    while ((de = readdir(d))) {
        if (de->d_name[0] == '.' || skipped(de->d_name) ||
            (prefix && strncmp(de->d_name, prefix, strlen(prefix)) != 0)) {
            continue;
        }
        if (n == cap) {
            cap = cap ? cap * 2 : 64;
            names = realloc(names, cap * sizeof(*names));
            if (!names) {
                fprintf(stderr, "replay: out of memory\n");
                exit(1);
            }
        }
        names[n] = malloc(strlen(dir) + strlen(de->d_name) + 2);
        if (!names[n]) {
            fprintf(stderr, "replay: out of memory\n");
            exit(1);
        }
        sprintf(names[n], "%s/%s", dir, de->d_name);
        n++;
    }
    closedir(d);
    if (n) {
        qsort(names, n, sizeof(*names), cmp_names);
    }
    for (i = 0; i < n; i++) {
        struct stat st;

        if (stat(names[i], &st) == 0 && S_ISREG(st.st_mode)) {
            run_file(names[i]);
        }
        free(names[i]);
    }
    free(names);
}

int main(int argc, char **argv)
{
    const char *prefix = NULL;
    int i;

    LLVMFuzzerInitialize(&argc, &argv);
    for (i = 1; i < argc; i++) {
        struct stat st;

        if (strncmp(argv[i], "--prefix=", 9) == 0) {
            prefix = argv[i] + 9;
            continue;
        }
        if (strncmp(argv[i], "--repeat=", 9) == 0) {
            repeat = atoi(argv[i] + 9) > 0 ? atoi(argv[i] + 9) : 1;
            continue;
        }
        if (strncmp(argv[i], "--skip=", 7) == 0) {
            if (nskip == (int)(sizeof(skip) / sizeof(skip[0]))) {
                fprintf(stderr, "replay: too many --skip\n");
                return 1;
            }
            skip[nskip++] = argv[i] + 7;
            continue;
        }
        if (stat(argv[i], &st) == 0 && S_ISDIR(st.st_mode)) {
            run_dir(argv[i], prefix);
        } else if (stat(argv[i], &st) == 0) {
            run_file(argv[i]);
        } else if (errno != ENOENT) {
            fprintf(stderr, "replay: %s: %s\n", argv[i], strerror(errno));
            return 1;
        }
    }
    printf("replayed %lu inputs\n", ran);
    return 0;
}
