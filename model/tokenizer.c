/* tokenizer.c - the v1 protein vocabulary and sequence text parsing (see tokenizer.h). */
#include "tokenizer.h"

#include <stdio.h>
#include <string.h>

static const char *const tok_names[TOK_VOCAB] = {
    "<pad>", "<mask>", "<cls>", "<eos>", "<unk>",
    "A", "C", "D", "E", "F", "G", "H", "I", "K", "L", "M", "N", "P", "Q", "R", "S", "T", "V", "W", "Y",
    "X", "B", "U", "Z", "O"
};

/* Returns the token string for id, or NULL when out of range. */
const char *tok_name(int id) {
    if (id < 0 || id >= TOK_VOCAB) return NULL;
    return tok_names[id];
}

/* Returns the id of a one-letter residue code (either case), or -1. */
int tok_residue_id(int ch) {
    if (ch >= 'a' && ch <= 'z') ch -= 'a' - 'A';
    if (ch < 'A' || ch > 'Z') return -1;
    for (int id = TOK_RES0; id < TOK_VOCAB; id++)
        if (tok_names[id][0] == ch) return id;
    return -1;
}

/* Returns 1 when id is one of the 20 standard residues. */
int tok_is_standard(int id) { return id >= TOK_RES0 && id < TOK_RES0 + TOK_NRES; }

/* Returns 1 when id is a residue token (standard or non-standard). */
int tok_is_residue(int id) { return id >= TOK_RES0 && id < TOK_VOCAB; }

/* Returns 1 for the whitespace bytes the tokenizer ignores. */
static int tok_is_space(unsigned char c) {
    return c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '\v' || c == '\f';
}

/* Fills *e for an invalid byte c at 0-based offset i. */
static void tok_set_error(tok_error *e, unsigned char c, size_t i, const char *what) {
    if (!e) return;
    e->ch = c;
    e->pos = i + 1;
    if (c > 0x20 && c < 0x7f && c != '\'')
        snprintf(e->msg, sizeof e->msg, "%s '%c' at position %zu", what, c, i + 1);
    else
        snprintf(e->msg, sizeof e->msg, "%s '\\x%02X' at position %zu", what, c, i + 1);
}

/* Parses residue text into ids (no framing); returns 0 or -1 with *e filled. */
int tok_encode(const char *text, size_t len, int32_t *out, size_t cap, size_t *n, tok_error *e) {
    size_t count = 0;
    if (e) { e->ch = 0; e->pos = 0; e->msg[0] = '\0'; }
    if (n) *n = 0;
    if (!text && len > 0) {
        if (e) snprintf(e->msg, sizeof e->msg, "no sequence text given");
        return -1;
    }
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)text[i];
        int id;
        if (tok_is_space(c)) continue;
        if (c == '<') {
            static const char mask[] = "<mask>";
            size_t k = 0;
            while (k < 6 && i + k < len) {
                unsigned char d = (unsigned char)text[i + k];
                if (d >= 'A' && d <= 'Z') d = (unsigned char)(d + ('a' - 'A'));
                if (d != (unsigned char)mask[k]) break;
                k++;
            }
            if (k < 6) {
                if (i + k >= len) {
                    if (e) {
                        e->ch = c;
                        e->pos = i + 1;
                        snprintf(e->msg, sizeof e->msg,
                                 "unterminated '<' at position %zu (only <mask> is allowed)", i + 1);
                    }
                    return -1;
                }
                if (k == 1) {
                    /* "<" followed by something other than "m": blame the '<'. */
                    tok_set_error(e, c, i, "invalid residue");
                    if (e)
                        snprintf(e->msg, sizeof e->msg,
                                 "invalid token starting with '<' at position %zu (only <mask> is allowed)",
                                 i + 1);
                } else {
                    tok_set_error(e, (unsigned char)text[i + k], i + k, "invalid character");
                    if (e) {
                        size_t used = strlen(e->msg);
                        snprintf(e->msg + used, sizeof e->msg - used, " (only <mask> is allowed)");
                    }
                }
                return -1;
            }
            id = TOK_MASK;
            i += 5;
        } else {
            id = tok_residue_id(c);
            if (id < 0) {
                tok_set_error(e, c, i, "invalid residue");
                return -1;
            }
        }
        if (out && count < cap) out[count] = id;
        count++;
    }
    if (n) *n = count;
    return 0;
}

/* Writes <cls> ids... <eos> to out and returns n + 2. */
size_t tok_frame(const int32_t *ids, size_t n, int32_t *out) {
    out[0] = TOK_CLS;
    if (n) memmove(out + 1, ids, n * sizeof *ids);
    out[n + 1] = TOK_EOS;
    return n + 2;
}

/* Returns the JSON text of the v1 vocabulary array (static storage). */
const char *tok_vocab_json(void) {
    return "[\"<pad>\",\"<mask>\",\"<cls>\",\"<eos>\",\"<unk>\","
           "\"A\",\"C\",\"D\",\"E\",\"F\",\"G\",\"H\",\"I\",\"K\",\"L\",\"M\",\"N\",\"P\",\"Q\",\"R\","
           "\"S\",\"T\",\"V\",\"W\",\"Y\",\"X\",\"B\",\"U\",\"Z\",\"O\"]";
}
