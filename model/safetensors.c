/* safetensors.c - a validating reader and an atomic writer for the safetensors container
 * (see safetensors.h). The reader checks every field of the header before anything uses it, so a
 * malformed or hostile file yields an error message, never a crash. */
#include "safetensors.h"
#include "atomic.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <limits.h>
#include <openssl/evp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors.c assumes a little-endian host"
#endif

#define ST_MAX_HEADER 100000000ULL

/* Formats an error message into err (when err and errlen allow). */
static void st_err(char *err, size_t errlen, const char *fmt, ...) {
    if (!err || errlen == 0) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* Copies an untrusted name into buf for messages: control bytes become '?', long names end in "...". */
static const char *st_safe(const char *s, char *buf, size_t cap) {
    size_t i = 0, limit = cap > 4 ? cap - 4 : 0;
    for (; s[i] && i < limit; i++) {
        unsigned char c = (unsigned char)s[i];
        buf[i] = (c < 0x20 || c == 0x7f) ? '?' : (char)c;
    }
    if (s[i]) { memcpy(buf + i, "...", 3); i += 3; }
    buf[i] = '\0';
    return buf;
}

/* Returns the element size of a safetensors dtype name, or 0 when unknown. */
static size_t st_dtype_size(const char *d) {
    static const struct { const char *name; size_t size; } tab[] = {
        {"F32", 4}, {"F16", 2}, {"BF16", 2}, {"F64", 8}, {"I8", 1}, {"U8", 1}, {"I16", 2},
        {"U16", 2}, {"I32", 4}, {"U32", 4}, {"I64", 8}, {"U64", 8}, {"BOOL", 1},
        {"F8_E4M3", 1}, {"F8_E5M2", 1},
    };
    for (size_t i = 0; i < sizeof tab / sizeof tab[0]; i++)
        if (strcmp(d, tab[i].name) == 0) return tab[i].size;
    return 0;
}

/* Unmaps and frees f; safe on a zeroed or already closed st_file. */
void st_close(st_file *f) {
    if (!f) return;
    if (f->map) munmap(f->map, f->len);
    free(f->t);
    if (f->meta_keys)
        for (int i = 0; i < f->n_meta; i++) free(f->meta_keys[i]);
    if (f->meta_vals)
        for (int i = 0; i < f->n_meta; i++) free(f->meta_vals[i]);
    free(f->meta_keys);
    free(f->meta_vals);
    memset(f, 0, sizeof *f);
}

/* Parses the __metadata__ object into f; returns 0 or -1 + err. */
static int st_parse_meta(st_file *f, json_t *meta, char *err, size_t errlen) {
    char nb[96];
    const char *key;
    json_t *val;
    if (!json_is_object(meta)) {
        st_err(err, errlen, "__metadata__ is not a JSON object; it must map strings to strings");
        return -1;
    }
    size_t n = json_object_size(meta);
    if (n > (size_t)INT_MAX / 2) {
        st_err(err, errlen, "__metadata__ has too many keys (%zu)", n);
        return -1;
    }
    f->meta_keys = calloc(n ? n : 1, sizeof *f->meta_keys);
    f->meta_vals = calloc(n ? n : 1, sizeof *f->meta_vals);
    if (!f->meta_keys || !f->meta_vals) {
        st_err(err, errlen, "out of memory reading __metadata__");
        return -1;
    }
    json_object_foreach(meta, key, val) {
        if (!json_is_string(val)) {
            st_err(err, errlen, "__metadata__ value of key '%s' is not a string; safetensors metadata "
                   "values must be strings (quote numbers, e.g. \"4\")", st_safe(key, nb, sizeof nb));
            return -1;
        }
        char *k = strdup(key), *v = strdup(json_string_value(val));
        if (!k || !v) {
            free(k);
            free(v);
            st_err(err, errlen, "out of memory reading __metadata__");
            return -1;
        }
        f->meta_keys[f->n_meta] = k;
        f->meta_vals[f->n_meta] = v;
        f->n_meta++;
    }
    return 0;
}

/* Validates one tensor entry of the header and fills *t; data_len is the data section length. */
static int st_parse_tensor(st_tensor *t, const char *name, json_t *ent, size_t data_len, char *err,
                           size_t errlen) {
    char nb[96];
    const char *sn = st_safe(name, nb, sizeof nb);
    if (strlen(name) >= sizeof t->name) {
        st_err(err, errlen, "tensor name '%s' is %zu bytes long; names are limited to %zu bytes", sn,
               strlen(name), sizeof t->name - 1);
        return -1;
    }
    if (name[0] == '\0') {
        st_err(err, errlen, "a tensor has an empty name; give every tensor a non-empty name");
        return -1;
    }
    snprintf(t->name, sizeof t->name, "%s", name);
    if (!json_is_object(ent)) {
        st_err(err, errlen, "tensor '%s': header entry is not a JSON object; expected "
               "{\"dtype\": ..., \"shape\": [...], \"data_offsets\": [begin, end]}", sn);
        return -1;
    }
    json_t *jd = json_object_get(ent, "dtype");
    if (!jd) {
        st_err(err, errlen, "tensor '%s': \"dtype\" is missing; add e.g. \"dtype\": \"F32\"", sn);
        return -1;
    }
    if (!json_is_string(jd)) {
        st_err(err, errlen, "tensor '%s': \"dtype\" is not a string; use e.g. \"F32\"", sn);
        return -1;
    }
    const char *ds = json_string_value(jd);
    size_t esize = st_dtype_size(ds);
    if (esize == 0 || strlen(ds) >= sizeof t->dtype) {
        char db[40];
        st_err(err, errlen, "tensor '%s': unknown dtype '%s'; use one of F32 F16 BF16 F64 I8 U8 I16 "
               "U16 I32 U32 I64 U64 BOOL", sn, st_safe(ds, db, sizeof db));
        return -1;
    }
    snprintf(t->dtype, sizeof t->dtype, "%s", ds);

    json_t *js = json_object_get(ent, "shape");
    if (!js || !json_is_array(js)) {
        st_err(err, errlen, "tensor '%s': \"shape\" is %s; it must be an array of non-negative "
               "integers, e.g. [30, 256]", sn, js ? "not an array" : "missing");
        return -1;
    }
    size_t nd = json_array_size(js);
    if (nd > ST_MAX_DIMS) {
        st_err(err, errlen, "tensor '%s': shape has %zu dimensions; at most %d are supported", sn, nd,
               ST_MAX_DIMS);
        return -1;
    }
    t->ndim = (int)nd;
    size_t numel = 1;
    for (size_t i = 0; i < nd; i++) {
        json_t *v = json_array_get(js, i);
        if (!json_is_integer(v) || json_integer_value(v) < 0) {
            st_err(err, errlen, "tensor '%s': shape[%zu] is not a non-negative integer", sn, i);
            return -1;
        }
        json_int_t dim = json_integer_value(v);
        t->shape[i] = (int64_t)dim;
        if ((unsigned long long)dim > SIZE_MAX ||
            __builtin_mul_overflow(numel, (size_t)dim, &numel)) {
            st_err(err, errlen, "tensor '%s': the element count of its shape overflows", sn);
            return -1;
        }
    }
    t->numel = numel;
    size_t nbytes;
    if (__builtin_mul_overflow(numel, esize, &nbytes)) {
        st_err(err, errlen, "tensor '%s': the byte size of its shape overflows", sn);
        return -1;
    }

    json_t *jo = json_object_get(ent, "data_offsets");
    if (!jo || !json_is_array(jo) || json_array_size(jo) != 2 ||
        !json_is_integer(json_array_get(jo, 0)) || !json_is_integer(json_array_get(jo, 1))) {
        st_err(err, errlen, "tensor '%s': \"data_offsets\" is %s; it must be [begin, end], two "
               "integers relative to the data section", sn, jo ? "malformed" : "missing");
        return -1;
    }
    json_int_t b = json_integer_value(json_array_get(jo, 0));
    json_int_t e = json_integer_value(json_array_get(jo, 1));
    if (b < 0 || e < 0 || b > e) {
        st_err(err, errlen, "tensor '%s': data_offsets [%lld, %lld] are invalid; need "
               "0 <= begin <= end", sn, (long long)b, (long long)e);
        return -1;
    }
    if ((unsigned long long)e > data_len) {
        st_err(err, errlen, "tensor '%s': data_offsets [%lld, %lld] end beyond the data section "
               "(%zu bytes); the file is truncated or the offsets are wrong", sn, (long long)b,
               (long long)e, data_len);
        return -1;
    }
    t->begin = (size_t)b;
    t->end = (size_t)e;
    if (t->end - t->begin != nbytes) {
        st_err(err, errlen, "tensor '%s': data_offsets span %zu bytes but dtype %s with %zu elements "
               "needs %zu bytes; fix the shape or the offsets", sn, t->end - t->begin, t->dtype,
               numel, nbytes);
        return -1;
    }
    return 0;
}

typedef struct { size_t begin, end; int idx; } st_span;

/* qsort comparator: by begin, then end. */
static int st_span_cmp(const void *a, const void *b) {
    const st_span *x = a, *y = b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return x->idx - y->idx;
}

/* Checks that the tensors tile the data section exactly (no overlap, no gap, no trailing bytes). */
static int st_check_layout(const st_file *f, size_t data_len, char *err, size_t errlen) {
    char n1[96], n2[96];
    int rc = -1;
    st_span *s = malloc((size_t)(f->n ? f->n : 1) * sizeof *s);
    if (!s) {
        st_err(err, errlen, "out of memory checking tensor offsets");
        return -1;
    }
    for (int i = 0; i < f->n; i++) s[i] = (st_span){f->t[i].begin, f->t[i].end, i};
    qsort(s, (size_t)f->n, sizeof *s, st_span_cmp);
    size_t pos = 0;
    int prev = -1;
    for (int i = 0; i < f->n; i++) {
        const st_tensor *t = &f->t[s[i].idx];
        if (s[i].begin < pos) {
            st_err(err, errlen, "tensors '%s' [%zu, %zu) and '%s' [%zu, %zu) overlap in the data "
                   "section; every byte must belong to exactly one tensor (rewrite the file)",
                   st_safe(f->t[s[prev].idx].name, n1, sizeof n1), s[prev].begin, s[prev].end,
                   st_safe(t->name, n2, sizeof n2), s[i].begin, s[i].end);
            goto cleanup;
        }
        if (s[i].begin > pos) {
            st_err(err, errlen, "data section bytes [%zu, %zu) before tensor '%s' belong to no "
                   "tensor; every byte must belong to exactly one tensor (rewrite the file)", pos,
                   s[i].begin, st_safe(t->name, n2, sizeof n2));
            goto cleanup;
        }
        pos = s[i].end;
        prev = i;
    }
    if (pos != data_len) {
        st_err(err, errlen, "data section has %zu bytes after the last tensor that belong to no "
               "tensor (data section %zu bytes, tensors end at %zu); truncate the file or fix the "
               "offsets", data_len - pos, data_len, pos);
        goto cleanup;
    }
    rc = 0;
cleanup:
    free(s);
    return rc;
}

/* mmaps path read-only and validates the whole container; returns 0 or -1 + err. */
int st_open(st_file *f, const char *path, char *err, size_t errlen) {
    int fd = -1, rc = -1;
    json_t *root = NULL;
    struct stat sb;
    memset(f, 0, sizeof *f);
    if (!path) {
        st_err(err, errlen, "no weights path given");
        return -1;
    }
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        st_err(err, errlen, "cannot open '%s': %s", path, strerror(errno));
        goto cleanup;
    }
    if (fstat(fd, &sb) != 0) {
        st_err(err, errlen, "cannot stat '%s': %s", path, strerror(errno));
        goto cleanup;
    }
    if (!S_ISREG(sb.st_mode)) {
        st_err(err, errlen, "'%s' is not a regular file", path);
        goto cleanup;
    }
    if (sb.st_size < 8) {
        st_err(err, errlen, "'%s' is %lld bytes long, shorter than the 8-byte safetensors header "
               "length; the file is truncated or not a safetensors file", path, (long long)sb.st_size);
        goto cleanup;
    }
    if ((unsigned long long)sb.st_size > SIZE_MAX) {
        st_err(err, errlen, "'%s' is too large to map", path);
        goto cleanup;
    }
    f->len = (size_t)sb.st_size;
    void *map = mmap(NULL, f->len, PROT_READ, MAP_PRIVATE, fd, 0);
    if (map == MAP_FAILED) {
        st_err(err, errlen, "cannot mmap '%s': %s", path, strerror(errno));
        f->len = 0;
        goto cleanup;
    }
    f->map = map;
    const unsigned char *p = map;
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | p[i];
    if (hlen == 0) {
        st_err(err, errlen, "'%s': header length is 0; a safetensors file starts with the length of "
               "its JSON header (not a safetensors file?)", path);
        goto cleanup;
    }
    if (hlen > ST_MAX_HEADER) {
        st_err(err, errlen, "'%s': header length %llu exceeds the limit of %llu bytes (not a "
               "safetensors file?)", path, (unsigned long long)hlen, ST_MAX_HEADER);
        goto cleanup;
    }
    if (hlen > f->len - 8) {
        st_err(err, errlen, "'%s': header length %llu extends beyond the end of the file (%zu "
               "bytes); the file is truncated", path, (unsigned long long)hlen, f->len);
        goto cleanup;
    }
    f->data_start = 8 + (size_t)hlen;
    size_t data_len = f->len - f->data_start;

    json_error_t jerr;
    root = json_loadb((const char *)p + 8, (size_t)hlen, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) {
        st_err(err, errlen, "'%s': header is not valid JSON (line %d, column %d: %s); the file is "
               "corrupt", path, jerr.line, jerr.column, jerr.text);
        goto cleanup;
    }
    if (!json_is_object(root)) {
        st_err(err, errlen, "'%s': header is JSON but not an object; it must map tensor names to "
               "entries", path);
        goto cleanup;
    }
    json_t *meta = json_object_get(root, "__metadata__");
    char msg[640];
    if (meta && st_parse_meta(f, meta, msg, sizeof msg) != 0) goto fail_msg;

    size_t nt = json_object_size(root) - (meta ? 1 : 0);
    if (nt > (size_t)INT_MAX / 2) {
        st_err(err, errlen, "'%s': too many tensors (%zu)", path, nt);
        goto cleanup;
    }
    f->t = calloc(nt ? nt : 1, sizeof *f->t);
    if (!f->t) {
        st_err(err, errlen, "out of memory reading the header of '%s'", path);
        goto cleanup;
    }
    const char *key;
    json_t *val;
    json_object_foreach(root, key, val) {
        if (strcmp(key, "__metadata__") == 0) continue;
        if (st_parse_tensor(&f->t[f->n], key, val, data_len, msg, sizeof msg) != 0) goto fail_msg;
        f->n++;
    }
    if (st_check_layout(f, data_len, msg, sizeof msg) != 0) goto fail_msg;
    for (int i = 0; i < f->n; i++) f->t[i].data = p + f->data_start + f->t[i].begin;
    rc = 0;
    goto cleanup;
fail_msg:
    st_err(err, errlen, "'%s': %s", path, msg);
cleanup:
    if (root) json_decref(root);
    if (fd >= 0) close(fd);
    if (rc != 0) st_close(f);
    return rc;
}

/* Returns the tensor named name, or NULL. */
const st_tensor *st_find(const st_file *f, const char *name) {
    if (!f || !name) return NULL;
    for (int i = 0; i < f->n; i++)
        if (strcmp(f->t[i].name, name) == 0) return &f->t[i];
    return NULL;
}

/* Returns the metadata value for key, or NULL. */
const char *st_meta(const st_file *f, const char *key) {
    if (!f || !key) return NULL;
    for (int i = 0; i < f->n_meta; i++)
        if (strcmp(f->meta_keys[i], key) == 0) return f->meta_vals[i];
    return NULL;
}

/* Builds the header JSON text (compact, keys in the given order, __metadata__ first). */
static char *st_build_header(const st_out_tensor *t, int n, const char *const *mk,
                             const char *const *mv, int n_meta, char *err, size_t errlen) {
    char nb[96];
    char *text = NULL;
    json_t *root = json_object(), *meta = NULL;
    if (!root) goto oom;
    if (n_meta > 0) {
        meta = json_object();
        if (!meta || json_object_set_new(root, "__metadata__", meta) != 0) goto oom;
        for (int i = 0; i < n_meta; i++) {
            if (!mk[i] || !mv[i]) {
                st_err(err, errlen, "metadata entry %d has a NULL key or value", i);
                goto fail;
            }
            json_t *s = json_string(mv[i]);
            if (!s) {
                st_err(err, errlen, "metadata value of '%s' is not valid UTF-8",
                       st_safe(mk[i], nb, sizeof nb));
                goto fail;
            }
            if (json_object_get(meta, mk[i])) {
                json_decref(s);
                st_err(err, errlen, "metadata key '%s' is given twice", st_safe(mk[i], nb, sizeof nb));
                goto fail;
            }
            if (json_object_set_new(meta, mk[i], s) != 0) {
                st_err(err, errlen, "metadata key '%s' is not valid UTF-8", st_safe(mk[i], nb, sizeof nb));
                goto fail;
            }
        }
    }
    size_t off = 0;
    for (int i = 0; i < n; i++) {
        const char *name = t[i].name;
        if (!name || !*name || strlen(name) >= sizeof ((st_tensor *)0)->name ||
            strcmp(name, "__metadata__") == 0) {
            st_err(err, errlen, "tensor %d has an invalid name", i);
            goto fail;
        }
        if (json_object_get(root, name)) {
            st_err(err, errlen, "tensor '%s' is given twice", st_safe(name, nb, sizeof nb));
            goto fail;
        }
        if (t[i].ndim < 0 || t[i].ndim > ST_MAX_DIMS) {
            st_err(err, errlen, "tensor '%s' has %d dimensions (0..%d allowed)",
                   st_safe(name, nb, sizeof nb), t[i].ndim, ST_MAX_DIMS);
            goto fail;
        }
        size_t numel = 1, nbytes;
        for (int d = 0; d < t[i].ndim; d++)
            if (t[i].shape[d] < 0 || __builtin_mul_overflow(numel, (size_t)t[i].shape[d], &numel)) {
                st_err(err, errlen, "tensor '%s' has an invalid shape", st_safe(name, nb, sizeof nb));
                goto fail;
            }
        if (__builtin_mul_overflow(numel, sizeof(float), &nbytes) || off + nbytes < off ||
            off + nbytes > (size_t)INT64_MAX || (numel > 0 && !t[i].data)) {
            st_err(err, errlen, "tensor '%s' is too large or has no data", st_safe(name, nb, sizeof nb));
            goto fail;
        }
        /* Build the entry completely, then hand it to root (set_new steals it even on failure). */
        json_t *ent = json_object(), *shape = json_array(), *offs = json_array();
        int bad = !ent || !shape || !offs;
        for (int d = 0; !bad && d < t[i].ndim; d++)
            bad = json_array_append_new(shape, json_integer((json_int_t)t[i].shape[d])) != 0;
        if (!bad)
            bad = json_array_append_new(offs, json_integer((json_int_t)off)) != 0 ||
                  json_array_append_new(offs, json_integer((json_int_t)(off + nbytes))) != 0 ||
                  json_object_set_new(ent, "dtype", json_string("F32")) != 0;
        if (!bad) {
            bad = json_object_set_new(ent, "shape", shape) != 0;
            shape = NULL;
        }
        if (!bad) {
            bad = json_object_set_new(ent, "data_offsets", offs) != 0;
            offs = NULL;
        }
        json_decref(shape);
        json_decref(offs);
        if (bad) {
            json_decref(ent);
            goto oom;
        }
        if (json_object_set_new(root, name, ent) != 0) {
            st_err(err, errlen, "cannot add tensor '%s' to the header (invalid UTF-8 name?)",
                   st_safe(name, nb, sizeof nb));
            goto fail;
        }
        off += nbytes;
    }
    text = json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER);
    if (!text) goto oom;
    json_decref(root);
    return text;
oom:
    st_err(err, errlen, "out of memory building the safetensors header");
fail:
    json_decref(root);
    return NULL;
}

/* Writes F32 tensors + metadata to path atomically (temp file, fsync, rename, fsync dir). */
int st_write(const char *path, const st_out_tensor *t, int n, const char *const *meta_keys,
             const char *const *meta_vals, int n_meta, char *err, size_t errlen) {
    int rc = -1;
    char *hdr = NULL;
    if (!path || !*path || n < 0 || n_meta < 0 || (n > 0 && !t) ||
        (n_meta > 0 && (!meta_keys || !meta_vals))) {
        st_err(err, errlen, "st_write: invalid arguments");
        return -1;
    }
    hdr = st_build_header(t, n, meta_keys, meta_vals, n_meta, err, errlen);
    if (!hdr) goto cleanup;
    size_t hl = strlen(hdr), padded = (hl + 7) & ~(size_t)7;
    char *h2 = realloc(hdr, padded + 1);
    if (!h2) {
        st_err(err, errlen, "out of memory building the safetensors header");
        goto cleanup;
    }
    hdr = h2;
    memset(hdr + hl, ' ', padded - hl);
    hdr[padded] = '\0';

    af_file af;
    if (af_open(&af, path, err, errlen) != 0) goto cleanup;
    unsigned char lenb[8];
    for (int i = 0; i < 8; i++) lenb[i] = (unsigned char)(((uint64_t)padded >> (8 * i)) & 0xff);
    int ok = af_write(&af, lenb, 8) == 0 && af_write(&af, hdr, padded) == 0;
    for (int i = 0; ok && i < n; i++) {
        size_t numel = 1;
        for (int d = 0; d < t[i].ndim; d++) numel *= (size_t)t[i].shape[d];
        if (numel) ok = af_write(&af, t[i].data, numel * sizeof(float)) == 0;
    }
    if (!ok) {
        st_err(err, errlen, "cannot write '%s': %s", path, strerror(errno));
        af_abort(&af);
        goto cleanup;
    }
    rc = af_commit(&af, err, errlen);
cleanup:
    free(hdr);
    return rc;
}

/* Writes the lower-case hex of a 32-byte digest into out (65 bytes). */
static void st_hex(const unsigned char *md, char out[65]) {
    static const char hx[] = "0123456789abcdef";
    for (int i = 0; i < 32; i++) {
        out[2 * i] = hx[md[i] >> 4];
        out[2 * i + 1] = hx[md[i] & 15];
    }
    out[64] = '\0';
}

/* Computes the lower-case hex SHA-256 of len bytes at data ("" on a libcrypto failure). */
void st_sha256_hex(const void *data, size_t len, char out[65]) {
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    static const char empty = 0;
    if (!data) data = &empty;
    if (EVP_Digest(data, len, md, &mdlen, EVP_sha256(), NULL) != 1 || mdlen != 32) {
        out[0] = '\0';
        return;
    }
    st_hex(md, out);
}

/* Computes the lower-case hex SHA-256 of the file at path; returns 0 or -1 + err. */
int st_sha256_file(const char *path, char out[65], char *err, size_t errlen) {
    int rc = -1, fd = -1;
    EVP_MD_CTX *ctx = NULL;
    unsigned char *buf = NULL, md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    out[0] = '\0';
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        st_err(err, errlen, "cannot open '%s': %s", path, strerror(errno));
        goto cleanup;
    }
    buf = malloc(1 << 20);
    ctx = EVP_MD_CTX_new();
    if (!buf || !ctx || EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) != 1) {
        st_err(err, errlen, "cannot start SHA-256 (out of memory?)");
        goto cleanup;
    }
    for (;;) {
        ssize_t r = read(fd, buf, 1 << 20);
        if (r < 0) {
            if (errno == EINTR) continue;
            st_err(err, errlen, "cannot read '%s': %s", path, strerror(errno));
            goto cleanup;
        }
        if (r == 0) break;
        if (EVP_DigestUpdate(ctx, buf, (size_t)r) != 1) {
            st_err(err, errlen, "SHA-256 failed");
            goto cleanup;
        }
    }
    if (EVP_DigestFinal_ex(ctx, md, &mdlen) != 1 || mdlen != 32) {
        st_err(err, errlen, "SHA-256 failed");
        goto cleanup;
    }
    st_hex(md, out);
    rc = 0;
cleanup:
    EVP_MD_CTX_free(ctx);
    free(buf);
    if (fd >= 0) close(fd);
    return rc;
}
