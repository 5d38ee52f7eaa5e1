/* util.c - clocks, hex, random ids and SHA-256 helpers (see util.h). */
#include "util.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
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

/* Returns 1 when a equals b; compares SHA-256 digests with CRYPTO_memcmp (no length/content leak). */
int ut_secret_equal(const char *a, const char *b) {
    unsigned char da[32], db[32];
    unsigned int la = 0, lb = 0;
    EVP_Digest(a, strlen(a), da, &la, EVP_sha256(), NULL);
    EVP_Digest(b, strlen(b), db, &lb, EVP_sha256(), NULL);
    return la == 32 && lb == 32 && CRYPTO_memcmp(da, db, 32) == 0;
}
