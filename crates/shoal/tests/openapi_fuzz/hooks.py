"""schemathesis hooks for crates/shoal/tests/openapi_fuzz.rs.

One check replaces schemathesis' `positive_data_acceptance`, which takes any 4xx but 401,
403, 404, 409 and 429 as a refused valid request: shoal answers 422 with a stable code, and
some of those codes name rules no JSON Schema can state, because they depend on what exists
(a sandbox, a job file, a node, a tag) or on meaning (a cron expression that never fires, a
time zone name, a glob). Those codes are accepted here by name; any other refusal of a request
the document allows (400 of any code, 422 `invalid_request`, ...) is a finding.
"""

import json

import schemathesis

# Codes whose rule is about what exists or what a value means, not its shape. Each is in the
# error table of shoal-wire (`ErrorCode`).
SEMANTIC = {
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
