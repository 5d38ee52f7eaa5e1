/* page.c - the embedded web page and its Content-Security-Policy (see page.h). */
#include "page.h"
#include "util.h"

#include <stdio.h>
#include <string.h>

/* server/page.html, embedded by the assembler (the path is relative to the repository root, where
 * make runs the compiler); a NUL follows the last byte. */
__asm__(".pushsection .rodata\n"
        ".balign 16\n"
        "pd_page_start:\n"
        ".incbin \"server/page.html\"\n"
        "pd_page_end:\n"
        ".byte 0\n"
        ".popsection\n");
extern const char pd_page_start[] __asm__("pd_page_start");
extern const char pd_page_end[] __asm__("pd_page_end");

static char csp[512];
static char etag[24];

/* Appends the CSP source for the SHA-256 of the body of the first <tag>...</tag> element. */
static int hash_element(const char *html, size_t len, const char *tag, char *out, size_t cap) {
    char open[16], close[16];
    snprintf(open, sizeof open, "<%s>", tag);
    snprintf(close, sizeof close, "</%s>", tag);
    const char *a = memmem(html, len, open, strlen(open));
    if (!a) return -1;
    a += strlen(open);
    const char *b = memmem(a, len - (size_t)(a - html), close, strlen(close));
    if (!b) return -1;
    char h[45];
    ut_sha256_b64(a, (size_t)(b - a), h);
    snprintf(out, cap, "'sha256-%s'", h);
    return 0;
}

/* Computes the CSP and ETag. */
int pg_init(void) {
    size_t len;
    const char *html = pg_html(&len);
    char script[64], style[64], hex[65];
    if (hash_element(html, len, "script", script, sizeof script) ||
        hash_element(html, len, "style", style, sizeof style))
        return -1;
    snprintf(csp, sizeof csp,
             "default-src 'none'; script-src %s; style-src %s; img-src data:; connect-src 'self' http: https:; "
             "base-uri 'none'; form-action 'none'; frame-ancestors 'none'", script, style);
    ut_sha256_hex(html, len, hex);
    snprintf(etag, sizeof etag, "\"%.16s\"", hex);
    return 0;
}

/* Returns the page. */
const char *pg_html(size_t *len) {
    *len = (size_t)(pd_page_end - pd_page_start);
    return pd_page_start;
}

/* Returns the CSP. */
const char *pg_csp(void) { return csp; }

/* Returns the ETag. */
const char *pg_etag(void) { return etag; }
