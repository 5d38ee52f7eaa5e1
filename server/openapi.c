/* openapi.c - the OpenAPI 3 document served at /openapi.json (see openapi.h). */
#include "openapi.h"

#include <jansson.h>
#include <stdio.h>

/* The document (every route, schema and error) is server/openapi.json, embedded by the assembler
 * (path relative to the repository root, where make runs the compiler); a NUL follows the last
 * byte, so it reads as one C string. */
__asm__(".pushsection .rodata\n"
        ".balign 16\n"
        "pd_openapi_start:\n"
        ".incbin \"server/openapi.json\"\n"
        ".byte 0\n"
        ".popsection\n");
extern const char spec[] __asm__("pd_openapi_start");

/* Sets obj.path... (dot-separated keys) to value (stolen); ignores missing parents. */
static void set_path(json_t *root, const char *const *keys, json_t *value) {
    json_t *o = root;
    for (; keys[1]; keys++) o = json_object_get(o, keys[0]);
    if (json_is_object(o)) json_object_set_new(o, keys[0], value);
    else json_decref(value);
}

/* Returns the document with the configured limits filled in (malloc'd), or NULL. */
char *api_openapi(const cfg *c) {
    json_t *root = json_loads(spec, 0, NULL);
    if (!root) return NULL;
    static const char *const reqs[] = {"PredictRequest", "EmbedRequest", "LogitsRequest"};
    for (size_t i = 0; i < sizeof reqs / sizeof reqs[0]; i++) {
        const char *batch[] = {"components", "schemas", reqs[i], "properties", "sequences", "maxItems", NULL};
        set_path(root, batch, json_integer(c->max_batch));
    }
    char desc[768];
    snprintf(desc, sizeof desc, "Limits of this server: body %ld bytes, %ld residues per sequence, %ld sequences per"
             " request, queue %ld, deadline %ld s; pseudo-likelihood up to %ld residues, %ld tokens per /score; jobs:"
             " body %ld bytes, %ld sequences.", c->max_body, c->max_length, c->max_batch, c->queue, c->timeout,
             c->max_pll_length, c->max_score_tokens, c->max_job_body, c->max_job_sequences);
    const char *lim[] = {"info", "x-limits", NULL};
    set_path(root, lim, json_string(desc));
    char *s = json_dumps(root, JSON_INDENT(1));
    json_decref(root);
    return s;
}
