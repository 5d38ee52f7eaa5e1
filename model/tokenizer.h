/* tokenizer.h - the v1 protein vocabulary and sequence text parsing (prefix tok_).
 *
 * Vocabulary (weights/FORMAT.md): 0 <pad>, 1 <mask>, 2 <cls>, 3 <eos>, 4 <unk>,
 * 5..24 the 20 standard residues "ACDEFGHIKLMNPQRSTVWY", 25..29 "XBUZO". */
#ifndef PF_TOKENIZER_H
#define PF_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#define TOK_VOCAB 30
#define TOK_PAD 0
#define TOK_MASK 1
#define TOK_CLS 2
#define TOK_EOS 3
#define TOK_UNK 4
#define TOK_RES0 5          /* first standard residue id ('A') */
#define TOK_NRES 20         /* standard residues = output classes of the head */
#define TOK_NONSTD0 25      /* first non-standard residue id ('X') */

/* Error detail from tok_encode: the offending byte and its 1-based position in the input text. */
typedef struct {
    unsigned char ch;       /* offending byte (0 when the error is not about one character) */
    size_t pos;             /* 1-based byte offset in the input text */
    char msg[160];          /* human-readable, e.g. "invalid residue '#' at position 7" */
} tok_error;

/* Returns the token string for id (e.g. "A", "<mask>"), or NULL when id is out of range. */
const char *tok_name(int id);

/* Returns the id for a one-letter residue code (either case), or -1 when it is not a residue. */
int tok_residue_id(int ch);

/* Returns 1 when id is one of the 20 standard residues. */
int tok_is_standard(int id);

/* Returns 1 when id is a residue token (standard or non-standard). */
int tok_is_residue(int id);

/* Parses text (case-insensitive; whitespace ignored; "<mask>" in any case is the mask token) into
 * residue ids without framing. Writes at most cap ids to out (out may be NULL to count only) and
 * sets *n to the number of residues found. Returns 0, or -1 with *e filled on an invalid character
 * (an unknown letter, a digit, punctuation, a NUL byte, an unterminated "<mask"). */
int tok_encode(const char *text, size_t len, int32_t *out, size_t cap, size_t *n, tok_error *e);

/* Writes "<cls> ids... <eos>" (n + 2 tokens) to out. Returns the framed length n + 2. */
size_t tok_frame(const int32_t *ids, size_t n, int32_t *out);

/* Returns the JSON text of the v1 vocabulary array (static storage). */
const char *tok_vocab_json(void);

#endif
