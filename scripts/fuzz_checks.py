"""Schemathesis checks for the DRaaS API fuzz run (crates/draas/tests/api_fuzz.rs).

A 5xx is a failure unless it is one the contract documents for the
situation (no live worker for a platform that is off, a state not reached
within the asked-for wait, ...): then it must be a problem+json naming
that code. 500 is always a failure.
"""

import schemathesis

# 5xx answers that describe the world, not a bug.
EXPLAINED = {
    "NO_LIVE_WORKER",
    "NO_FREE_PORT",
    "STATE_NOT_REACHED",
    "START_TIMEOUT",
    "WORKER_TIMEOUT",
    "WORKER_DEADLINE_EXCEEDED",
}


@schemathesis.check
def only_explained_server_errors(ctx, response, case):
    if response.status_code < 500:
        return None
    try:
        code = response.json().get("code")
    except Exception:  # noqa: BLE001 - any unparsable body is the failure
        code = None
    if response.status_code == 500 or code not in EXPLAINED:
        raise AssertionError(
            f"{response.status_code} {code}: {response.text[:300]}"
        )
    return None


@schemathesis.hook
def map_query(ctx, query):
    """Keeps `?wait=` short: a wait for a state that never comes holds the
    request for its whole timeout, which would make the run's length depend
    on luck. Values the API refuses (0, over 300, not a number) are kept."""
    if query and isinstance(query.get("timeout"), int) and 1 < query["timeout"] <= 300:
        query["timeout"] = 1
    return query
