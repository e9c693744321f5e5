"""schemathesis hooks for crates/shoal/tests/openapi_fuzz.rs.

One check replaces schemathesis' `positive_data_acceptance`, which takes any 4xx but 401,
403, 404, 409 and 429 as a refused valid request. Here a request the document allows may be
refused only
- with 401, 404 or 409 (a credential, something missing, a conflict with what is stored);
- with 422 and a code that names what the request refers to (a sandbox, job file, node or
  tag that does not exist, a job's parameters, an idempotency key used before, a sandbox
  folder outside the node's `sandboxes.allowed_roots`) or a value
  whose meaning only the server can judge: a cron expression that does not parse or never
  fires (`invalid_cron`), a glob that does not compile (`invalid_pattern`);
- with 429 `too_many_attempts`: a login after five that failed from the same address (what
  was sent before, not this request's shape);
- for the rules a JSON Schema cannot state: a duration out of range (422
  `invalid_request`: more than 100 years, or zero where more than zero is needed; its syntax
  is in the document as a `pattern`, but not the range of a sum of parts; 400
  `invalid_query` for the audit trail's `since` and `until`), a file or
  folder name over 255 bytes or a path over 4096 (400 `invalid_path`: the document's
  lengths count characters, the file system counts bytes of UTF-8), and a new user's
  password over 1024 bytes (422 `invalid_request`; its minimum, 12 characters, is there).
Anything else is a finding: every 400, and every other 422, in particular `invalid_request`
(the rules that tie fields together are in the document, see `crates/api/src/openapi.rs`,
`refine`) and `unknown_time_zone` (the zones are an enum there).
"""


import json

import schemathesis

# 422 codes: rules about what exists or what a value means, not the request's shape. Each is
# in the error table of shoal-wire (`ErrorCode`).
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
    "invalid_pattern",
    "invalid_partitions",
    "idempotency_key_reused",
    "root_not_allowed",
}


def beyond_a_schema(status, code, message):
    """The server's words for the rules no JSON Schema can state (see the module's text)."""
    if status == 400 and code == "invalid_query" and "is too long; the longest accepted is 100 years" in message:
        return True
    if status == 422 and code == "invalid_request":
        return (
            "is too long; the longest accepted is 100 years" in message
            or "must be more than zero" in message
            or "the password is over 1024 bytes" in message
        )
    if status == 400 and code == "invalid_path":
        return "has a name longer than 255 bytes" in message or "the limit is 4096 bytes" in message
    return False


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
        error = json.loads(response.content)["error"]
        code, message = error["code"], error["message"]
    except Exception:
        code, message = None, ""
    if status == 422 and code in SEMANTIC:
        return None
    if status == 429 and code == "too_many_attempts":
        return None
    if beyond_a_schema(status, code, message):
        return None
    raise AssertionError(
        f"A request the document allows was refused with {status} `{code}`: "
        f"{response.content[:300]!r}"
    )
