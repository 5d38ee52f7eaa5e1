/* util.c - clocks, hex, random ids and SHA-256 helpers (see util.h). */
#include "util.h"
#include "gemm.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Returns a monotonic clock in seconds. */
double ut_mono(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Returns the wall clock in seconds since the Unix epoch. */
double ut_wall(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Writes hex of n bytes at b to out (2n+1 bytes). */
static void to_hex(const unsigned char *b, size_t n, char *out) {
    static const char hx[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = hx[b[i] >> 4];
        out[2 * i + 1] = hx[b[i] & 15];
    }
    out[2 * n] = '\0';
}

/* Writes 2*n random hex digits plus NUL to out. */
void ut_random_hex(char *out, size_t n) {
    unsigned char buf[64];
    if (n > sizeof buf) n = sizeof buf;
    if (RAND_bytes(buf, (int)n) != 1) {
        /* RAND_bytes practically never fails; fall back to a clock-seeded value so ids stay unique. */
        static unsigned long ctr;
        double t = ut_wall();
        for (size_t i = 0; i < n; i++) buf[i] = (unsigned char)(((unsigned long)(t * 1e6) >> (i % 8)) ^ ++ctr);
    }
    to_hex(buf, n, out);
}

/* Writes the lower-case hex SHA-256 of len bytes at data to out[65]. */
void ut_sha256_hex(const void *data, size_t len, char out[65]) {
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    if (EVP_Digest(data, len, md, &mdlen, EVP_sha256(), NULL) != 1 || mdlen != 32) {
        memset(out, '0', 64);
        out[64] = '\0';
        return;
    }
    to_hex(md, 32, out);
}

/* Returns 1 when s is exactly 64 hex digits. */
int ut_is_hex64(const char *s) {
    size_t i = 0;
    for (; s[i]; i++) {
        char c = s[i];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'))) return 0;
        if (i >= 64) return 0;
    }
    return i == 64;
}

/* See util.h. */
int ut_etag_match(const char *header, const char *etag) {
    if (!header || !etag) return 0;
    if (etag[0] == 'W' && etag[1] == '/') etag += 2;
    const size_t el = strlen(etag);
    const char *p = header;
    for (;;) {
        while (*p == ' ' || *p == '\t' || *p == ',') p++;
        if (!*p) return 0;
        if (*p == '*') {
            const char *q = p + 1;
            while (*q == ' ' || *q == '\t') q++;
            if (!*q || *q == ',') return 1;
        }
        if (p[0] == 'W' && p[1] == '/') p += 2;
        if (*p == '"') {                       /* a quoted tag: compare it whole, then go past it */
            const char *q = strchr(p + 1, '"');
            if (!q) return 0;
            if ((size_t)(q + 1 - p) == el && !memcmp(p, etag, el)) return 1;
            p = q + 1;
        }
        while (*p && *p != ',') p++;           /* skip the rest of a malformed entry */
    }
}

/* Returns 1 when a equals b; compares SHA-256 digests with CRYPTO_memcmp (no length/content leak). */
int ut_secret_equal(const char *a, const char *b) {
    unsigned char da[32], db[32];
    unsigned int la = 0, lb = 0;
    EVP_Digest(a, strlen(a), da, &la, EVP_sha256(), NULL);
    EVP_Digest(b, strlen(b), db, &lb, EVP_sha256(), NULL);
    return la == 32 && lb == 32 && CRYPTO_memcmp(da, db, 32) == 0;
}

/* Writes the base64 SHA-256 of data to out[45]. */
void ut_sha256_b64(const void *data, size_t len, char out[45]) {
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    out[0] = '\0';
    if (EVP_Digest(data, len, md, &mdlen, EVP_sha256(), NULL) != 1 || mdlen != 32) return;
    EVP_EncodeBlock((unsigned char *)out, md, 32);
}

/* Ensures room for n more bytes plus the NUL; returns 0 or -1 (oom set). */
static int buf_reserve(ut_buf *b, size_t n) {
    if (b->oom) return -1;
    if (b->len + n + 1 <= b->cap) return 0;
    size_t nc = b->cap ? b->cap : 4096;
    while (nc < b->len + n + 1) nc *= 2;
    char *p = realloc(b->s, nc);
    if (!p) {
        b->oom = 1;
        return -1;
    }
    b->s = p;
    b->cap = nc;
    return 0;
}

/* Appends n bytes. */
void ut_put(ut_buf *b, const char *s, size_t n) {
    if (buf_reserve(b, n)) return;
    memcpy(b->s + b->len, s, n);
    b->len += n;
    b->s[b->len] = '\0';
}

/* Appends a C string. */
void ut_str(ut_buf *b, const char *s) { ut_put(b, s, strlen(s)); }

/* Appends printf-formatted text, however long (formatted in place; the buffer grown and the text
 * formatted again when it does not fit). */
void ut_printf(ut_buf *b, const char *fmt, ...) {
    if (buf_reserve(b, 255)) return;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(b->s + b->len, b->cap - b->len, fmt, ap);
    va_end(ap);
    if (n <= 0) {
        b->s[b->len] = '\0';   /* an encoding error may have written part of the text */
        return;
    }
    if ((size_t)n >= b->cap - b->len) {
        if (buf_reserve(b, (size_t)n)) {
            b->s[b->len] = '\0';
            return;
        }
        va_start(ap, fmt);
        vsnprintf(b->s + b->len, b->cap - b->len, fmt, ap);
        va_end(ap);
    }
    b->len += (size_t)n;
}

/* Appends a finite JSON number with 6 significant digits. */
void ut_num(ut_buf *b, double x) {
    if (!isfinite(x)) x = x > 0 ? 1e308 : -1e308;
    ut_printf(b, "%.6g", x);
}

/* Appends a JSON string literal (s must be valid UTF-8; controls are escaped). */
void ut_json_str(ut_buf *b, const char *s) {
    ut_put(b, "\"", 1);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\') {
            char e[2] = {'\\', (char)*p};
            ut_put(b, e, 2);
        } else if (*p < 0x20 || *p == 0x7f) {
            ut_printf(b, "\\u%04x", *p);
        } else {
            ut_put(b, (const char *)p, 1);
        }
    }
    ut_put(b, "\"", 1);
}

struct timespec ut_deadline_in(double seconds) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    double t = (double)ts.tv_sec + ts.tv_nsec * 1e-9 + seconds;
    ts.tv_sec = (time_t)t;
    ts.tv_nsec = (long)((t - (double)ts.tv_sec) * 1e9);
    return ts;
}

/* The cache identity of a model's results in this process (see util.h). */
const char *ut_model_key(const char *sha256) {
    static _Thread_local char key[80];
    snprintf(key, sizeof key, "%s%s", sha256, gm_precision() == GM_BF16 ? "+bf16" : "");
    return key;
}

/* See util.h. */
int ut_json_int(const json_t *v, long long *out) {
    if (json_is_integer(v)) {
        *out = (long long)json_integer_value(v);
        return 1;
    }
    if (!json_is_real(v)) return 0;
    const double d = json_real_value(v);
    if (!(fabs(d) <= 9007199254740992.0) || d != floor(d)) return 0;   /* NaN fails the first test */
    *out = (long long)d;
    return 1;
}
