/* fuzz_request.c - libFuzzer target: the POST /predict JSON parser and validator (pr_parse) on
 * arbitrary bytes. Any crash, leak, or sanitizer report is a bug. */
#include "predict.h"

#include <stddef.h>
#include <stdint.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    pr_limits lim = { .max_length = 4096, .max_batch = 8 };
    pr_request *req = NULL;
    pr_error e = {0};
    if (pr_parse((const char *)data, size, &lim, "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
                 &req, &e) == 0) {
        pr_free(req);
    } else if (e.details) {
        json_decref(e.details);
    }
    return 0;
}
