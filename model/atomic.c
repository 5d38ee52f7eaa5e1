/* atomic.c - atomic file replacement (see atomic.h). */
#include "atomic.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int af_open(af_file *af, const char *path, char *err, size_t errlen) {
    size_t plen = strlen(path);
    af->fd = -1;
    af->path = strdup(path);
    af->tmp = malloc(plen + 16);
    if (!af->path || !af->tmp) {
        snprintf(err, errlen, "'%s': out of memory", path);
        af_abort(af);
        return -1;
    }
    snprintf(af->tmp, plen + 16, "%s.tmp.XXXXXX", path);
    af->fd = mkstemp(af->tmp);
    if (af->fd < 0) {
        snprintf(err, errlen, "cannot create a temporary file beside '%s': %s", path, strerror(errno));
        free(af->tmp);
        af->tmp = NULL;             /* nothing to unlink */
        af_abort(af);
        return -1;
    }
    if (fchmod(af->fd, 0644) != 0) {
        snprintf(err, errlen, "cannot set permissions of '%s': %s", af->tmp, strerror(errno));
        af_abort(af);
        return -1;
    }
    return 0;
}

int af_write(af_file *af, const void *buf, size_t n) {
    const char *p = buf;
    while (n > 0) {
        ssize_t w = write(af->fd, p, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

int af_commit(af_file *af, char *err, size_t errlen) {
    int rc = -1;
    if (fsync(af->fd) != 0 || close(af->fd) != 0) {
        af->fd = -1;
        snprintf(err, errlen, "cannot write '%s': %s", af->tmp, strerror(errno));
        goto done;
    }
    af->fd = -1;
    if (rename(af->tmp, af->path) != 0) {
        snprintf(err, errlen, "cannot rename '%s' to '%s': %s", af->tmp, af->path, strerror(errno));
        goto done;
    }
    free(af->tmp);
    af->tmp = NULL;                 /* renamed: nothing to unlink */
    char *slash = strrchr(af->path, '/');   /* make the rename durable: fsync the directory */
    if (!slash) snprintf(af->path, 2, ".");
    else if (slash == af->path) slash[1] = '\0';
    else *slash = '\0';
    int dfd = open(af->path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0 || fsync(dfd) != 0) {
        snprintf(err, errlen, "wrote the file but cannot fsync its directory '%s': %s", af->path, strerror(errno));
        if (dfd >= 0) close(dfd);
        goto done;
    }
    close(dfd);
    rc = 0;
done:
    af_abort(af);
    return rc;
}

void af_abort(af_file *af) {
    if (af->fd >= 0) close(af->fd);
    if (af->tmp) unlink(af->tmp);
    free(af->tmp);
    free(af->path);
    af->fd = -1;
    af->tmp = af->path = NULL;
}
