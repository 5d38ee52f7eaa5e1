/* fuzz_safetensors.c - libFuzzer target: the weights loader (st_open + pf_model_load) fed arbitrary
 * files through an in-memory file descriptor. A malformed file must be an error, never a crash. */
#include "model.h"
#include "safetensors.h"

#include <stdint.h>
#include <stdio.h>
#include <sys/mman.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    int fd = memfd_create("fuzz-weights", 0);
    if (fd < 0) return 0;
    if (size && write(fd, data, size) != (ssize_t)size) { close(fd); return 0; }
    char path[64], err[512];
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    st_file f = {0};
    if (st_open(&f, path, err, sizeof err) == 0) st_close(&f);
    pf_model *m = NULL;
    if (pf_model_load(&m, path, err, sizeof err) == 0) pf_model_free(m);
    close(fd);
    return 0;
}
