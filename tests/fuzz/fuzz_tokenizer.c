/* fuzz_tokenizer.c - libFuzzer target: sequence text parsing (tok_encode) on arbitrary bytes; the
 * counting pass and the writing pass must agree and every id must be a residue or the mask. */
#include "tokenizer.h"

#include <stdint.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    size_t n = 0, n2 = 0;
    tok_error e;
    if (tok_encode((const char *)data, size, NULL, 0, &n, &e) != 0) return 0;
    int32_t *ids = malloc((n + 2) * sizeof *ids), *framed = malloc((n + 2) * sizeof *framed);
    if (!ids || !framed) abort();
    if (tok_encode((const char *)data, size, ids, n, &n2, &e) != 0 || n2 != n) abort();
    for (size_t i = 0; i < n; i++)
        if (!(ids[i] == TOK_MASK || tok_is_residue(ids[i]))) abort();
    if (tok_frame(ids, n, framed) != n + 2) abort();
    free(ids);
    free(framed);
    return 0;
}
