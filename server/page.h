/* page.h - the web page served at GET / (prefix pg_): server/page.html, one self-contained file of
 * HTML, CSS and JavaScript that uses only the public API, embedded in the binary at build time
 * (assembler .incbin: no generator step), and the Content-Security-Policy that lets exactly its
 * inline script and style run (their SHA-256 hashes). */
#ifndef PD_PAGE_H
#define PD_PAGE_H

#include <stddef.h>

/* Computes the page's CSP and ETag (call once at start-up). Returns 0, or -1 when the embedded
 * page lacks its <script> or <style> element. */
int pg_init(void);

/* Returns the page's bytes and *len. */
const char *pg_html(size_t *len);

/* Returns the Content-Security-Policy header value of the page. */
const char *pg_csp(void);

/* Returns the page's ETag (quoted SHA-256 prefix). */
const char *pg_etag(void);

#endif
