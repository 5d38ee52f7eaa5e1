/* rng.h - small deterministic random number generators (prefix rng_): xoshiro256** seeded by
 * splitmix64, uniform floats and standard normals. Same seed, same stream, on every machine. */
#ifndef PF_RNG_H
#define PF_RNG_H
#include <math.h>
#include <stdint.h>

typedef struct { uint64_t s[4]; } rng_t;

/* Returns the next splitmix64 output and advances *x. */
static inline uint64_t rng_splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* Seeds r from a 64-bit seed. */
static inline void rng_seed(rng_t *r, uint64_t seed) {
    uint64_t x = seed;
    for (int i = 0; i < 4; i++) r->s[i] = rng_splitmix64(&x);
}

static inline uint64_t rng_rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

/* Returns 64 random bits. */
static inline uint64_t rng_u64(rng_t *r) {
    uint64_t *s = r->s, res = rng_rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0]; s[3] ^= s[1]; s[1] ^= s[2]; s[0] ^= s[3]; s[2] ^= t; s[3] = rng_rotl(s[3], 45);
    return res;
}

/* Returns a uniform double in [0, 1). */
static inline double rng_uniform(rng_t *r) { return (double)(rng_u64(r) >> 11) * 0x1.0p-53; }

/* Returns a uniform integer in [0, n) (n > 0). */
static inline uint64_t rng_below(rng_t *r, uint64_t n) { return (uint64_t)(rng_uniform(r) * (double)n); }

/* Returns a standard normal double (Box-Muller, one value per call). */
static inline double rng_normal(rng_t *r) {
    double u1 = rng_uniform(r), u2 = rng_uniform(r);
    if (u1 < 1e-300) u1 = 1e-300;
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}
#endif
