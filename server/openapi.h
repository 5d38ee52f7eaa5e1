/* openapi.h - the OpenAPI 3 description of the performerd HTTP API (prefix api_). */
#ifndef PD_OPENAPI_H
#define PD_OPENAPI_H

#include "config.h"

/* Returns the OpenAPI document as JSON text with c's limits filled in (malloc'd), or NULL. */
char *api_openapi(const cfg *c);

#endif
