"""schemathesis hooks for crates/shoal/tests/openapi_fuzz.rs.

One check replaces schemathesis' `positive_data_acceptance`, which takes any 4xx but 401,
403, 404, 409 and 429 as a refused valid request: shoal answers 422 with a stable code for
rules about what exists (a sandbox, a job file, a node, a tag) or what a value means (a cron
expression that never fires, a duration, a time zone name, a glob, a field that needs
another), which a JSON Schema states only in part. 422 is accepted here; a 400 of any code
(the request's shape: JSON, query, path, headers) for a request the document allows is a
finding, as is any other 4xx outside 401, 404 and 409. The cross-field rules the document
can state, it states (see `crates/api/src/openapi.rs`, `refine`), and the fuzzer found
each of them missing once.
"""

import json

import schemathesis

# 422 codes: rules about what exists or what a value means, not the request's shape. Each is
# in the error table of shoal-wire (`ErrorCode`).
SEMANTIC = {
    "invalid_request",
    "unknown_sandbox",
    "unknown_job",
    "invalid_job",
    "missing_parameter",
    "unknown_parameter",
    "invalid_parameter",
    "unknown_node",
    "unknown_tag",
    "invalid_cron",
    "unknown_time_zone",
    "invalid_pattern",
    "invalid_partitions",
    "idempotency_key_reused",
}
# Statuses a valid request may get for what it refers to rather than its shape.
ACCEPTED_STATUSES = {401, 404, 409}


@schemathesis.check
def schema_valid_requests_are_not_refused_for_their_shape(ctx, response, case):
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive:
        return None
    status = response.status_code
    if status < 400 or status >= 500 or status in ACCEPTED_STATUSES:
        return None
    try:
        code = json.loads(response.content)["error"]["code"]
    except Exception:
        code = None
    if status == 422 and code in SEMANTIC:
        return None
    raise AssertionError(
        f"A request the document allows was refused with {status} `{code}`: "
        f"{response.content[:300]!r}"
    )
