/* test_tokenizer.c - vocabulary, sequence parsing (valid and invalid inputs) and framing. */
#include "testutil.h"
#include "tokenizer.h"

#include <jansson.h>

/* Encodes a NUL-terminated string; returns tok_encode's result. */
static int enc(const char *s, int32_t *out, size_t cap, size_t *n, tok_error *e) {
    return tok_encode(s, strlen(s), out, cap, n, e);
}

/* Checks that text (len bytes) fails at 1-based position pos on byte ch, with msg containing sub. */
static void check_invalid(const char *text, size_t len, unsigned char ch, size_t pos, const char *sub) {
    tok_error e;
    size_t n = 99;
    int32_t out[64];
    int rc = tok_encode(text, len, out, 64, &n, &e);
    CHECKF(rc == -1, "input '%.*s' should fail", (int)len, text);
    CHECKF(e.ch == ch, "input '%.*s': ch %u, expected %u", (int)len, text, e.ch, ch);
    CHECKF(e.pos == pos, "input '%.*s': pos %zu, expected %zu", (int)len, text, e.pos, pos);
    CHECKF(strstr(e.msg, sub) != NULL, "input '%.*s': message '%s' lacks '%s'", (int)len, text, e.msg,
           sub);
}

int main(void) {
    int32_t out[64];
    size_t n = 0;
    tok_error e;

    /* vocabulary */
    CHECK(strcmp(tok_name(0), "<pad>") == 0);
    CHECK(strcmp(tok_name(TOK_MASK), "<mask>") == 0);
    CHECK(strcmp(tok_name(TOK_RES0), "A") == 0);
    CHECK(strcmp(tok_name(24), "Y") == 0);
    CHECK(strcmp(tok_name(29), "O") == 0);
    CHECK(tok_name(-1) == NULL && tok_name(30) == NULL);
    const char *std = "ACDEFGHIKLMNPQRSTVWY", *nonstd = "XBUZO";
    for (int i = 0; i < 20; i++) {
        CHECK(tok_residue_id(std[i]) == TOK_RES0 + i);
        CHECK(tok_residue_id(std[i] + 32) == TOK_RES0 + i);
        CHECK(tok_is_standard(TOK_RES0 + i) && tok_is_residue(TOK_RES0 + i));
    }
    for (int i = 0; i < 5; i++) {
        CHECK(tok_residue_id(nonstd[i]) == TOK_NONSTD0 + i);
        CHECK(!tok_is_standard(TOK_NONSTD0 + i) && tok_is_residue(TOK_NONSTD0 + i));
    }
    CHECK(tok_residue_id('J') == -1 && tok_residue_id('1') == -1 && tok_residue_id('<') == -1);
    CHECK(!tok_is_residue(TOK_MASK) && !tok_is_residue(TOK_UNK) && !tok_is_standard(TOK_PAD));

    /* vocab JSON: valid array of the 30 names in id order */
    json_t *v = json_loads(tok_vocab_json(), 0, NULL);
    CHECK(v && json_is_array(v) && json_array_size(v) == TOK_VOCAB);
    for (int i = 0; v && i < TOK_VOCAB; i++)
        CHECK(strcmp(json_string_value(json_array_get(v, (size_t)i)), tok_name(i)) == 0);
    json_decref(v);

    /* valid sequences */
    CHECK(enc("MKTAY", out, 64, &n, &e) == 0 && n == 5);
    CHECK(out[0] == tok_residue_id('M') && out[4] == tok_residue_id('Y'));
    CHECK(enc("mktay", out, 64, &n, &e) == 0 && n == 5 && out[1] == tok_residue_id('K'));
    CHECK(enc("  MK\tT\r\nA\vY\f\n", out, 64, &n, &e) == 0 && n == 5 && out[2] == tok_residue_id('T'));
    CHECK(enc("", out, 64, &n, &e) == 0 && n == 0);
    CHECK(enc(" \n\t ", out, 64, &n, &e) == 0 && n == 0);
    CHECK(enc("A<mask>C<MASK>d<MaSk>", out, 64, &n, &e) == 0 && n == 6);
    CHECK(out[0] == TOK_RES0 && out[1] == TOK_MASK && out[3] == TOK_MASK && out[5] == TOK_MASK);
    CHECK(out[4] == tok_residue_id('D'));
    CHECK(enc("xbuzo", out, 64, &n, &e) == 0 && n == 5 && out[0] == TOK_NONSTD0);
    /* counting only, and capacity smaller than the sequence */
    CHECK(enc("ACDEFG", NULL, 0, &n, &e) == 0 && n == 6);
    out[2] = -7;
    CHECK(enc("ACDEFG", out, 2, &n, &e) == 0 && n == 6 && out[1] == tok_residue_id('C') && out[2] == -7);

    /* invalid characters: byte and 1-based position */
    check_invalid("MKTAY1#", 7, '1', 6, "invalid residue '1' at position 6");
    check_invalid("MKTAYG#", 7, '#', 7, "invalid residue '#' at position 7");
    check_invalid("MK J", 4, 'J', 4, "'J' at position 4");
    check_invalid("AC\0DE", 5, 0, 3, "'\\x00' at position 3");
    check_invalid("AC<mas", 6, '<', 3, "position 3");
    check_invalid("AC<MASK", 7, '<', 3, "unterminated");
    check_invalid("AC<mat>", 7, 't', 6, "'t' at position 6");
    check_invalid("<cls>A", 6, '<', 1, "position 1");
    check_invalid(">sp|P1|X\nMKT", 12, '>', 1, "invalid residue '>' at position 1");
    check_invalid("MK\xc3\xa9", 4, 0xc3, 3, "'\\xC3' at position 3");
    check_invalid("A'", 2, '\'', 2, "'\\x27' at position 2");
    check_invalid("A-C", 3, '-', 2, "'-' at position 2");
    check_invalid("A*", 2, '*', 2, "'*'");
    CHECK(tok_encode("AB", 2, out, 64, &n, NULL) == 0);
    CHECK(tok_encode("A1", 2, out, 64, &n, NULL) == -1);

    /* framing */
    int32_t ids[3] = {5, 1, 24}, fr[5];
    CHECK(tok_frame(ids, 3, fr) == 5);
    CHECK(fr[0] == TOK_CLS && fr[1] == 5 && fr[2] == 1 && fr[3] == 24 && fr[4] == TOK_EOS);
    CHECK(tok_frame(NULL, 0, fr) == 2 && fr[0] == TOK_CLS && fr[1] == TOK_EOS);
    return TEST_DONE();
}
