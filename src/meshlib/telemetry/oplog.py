"""Operational log lines: the few state changes an operator wants in the service's log, once each.

Per-call outcomes belong in spans and metrics; a circuit breaker opening, an
endpoint ejected or back in rotation, a retry budget running dry or refilling
are rare state changes that someone reading the log at 3 a.m. needs to see,
with the destination and the reason. Each is logged once, when it happens
(WARNING for trouble, INFO for recovery), on the `meshlib.outbound` logger
(the policy store logs `policy <revision> from <source> is in force` on
`meshlib.policy`).

Example:
    ```text
    WARNING meshlib.outbound: circuit breaker for payments endpoint http://10.0.0.7:8080 opened (closed -> open) after 503
    INFO    meshlib.outbound: circuit breaker for payments endpoint http://10.0.0.7:8080 closed (half-open -> closed): a trial call succeeded
    ```
"""

from __future__ import annotations

import logging

__all__ = [
    "breaker_changed",
    "budget_exhausted",
    "budget_restored",
    "endpoint_ejected",
    "endpoint_readmitted",
    "logger",
]

logger = logging.getLogger("meshlib.outbound")


def breaker_changed(
    destination: str, endpoint: str, before: str, after: str, reason: object
) -> None:
    """A breaker changed state: opening is a WARNING with the outcome that tripped it, the rest INFO."""
    if after == "open":
        logger.warning(
            "circuit breaker for %s endpoint %s opened (%s -> open) after %s; calls to it fail fast",
            destination,
            endpoint,
            before,
            reason,
        )
    elif after == "closed":
        logger.info(
            "circuit breaker for %s endpoint %s closed (%s -> closed): a trial call succeeded",
            destination,
            endpoint,
            before,
        )
    else:
        logger.info(
            "circuit breaker for %s endpoint %s is %s (was %s) after %s",
            destination,
            endpoint,
            after,
            before,
            reason,
        )


def endpoint_ejected(destination: str, endpoint: str, seconds: float, reason: object) -> None:
    """Outlier detection took an endpoint out of rotation."""
    logger.warning(
        "outlier detection ejected %s endpoint %s for %.1f s: consecutive failures, the last %s",
        destination,
        endpoint,
        seconds,
        reason,
    )


def endpoint_readmitted(destination: str, endpoint: str) -> None:
    """An ejected endpoint's time is up and it takes traffic again."""
    logger.info(
        "%s endpoint %s is back in rotation: its ejection time is over", destination, endpoint
    )


def budget_exhausted(destination: str, reason: object) -> None:
    """The destination's retry budget refused a retry (the first refusal of a dry spell)."""
    logger.warning(
        "retry budget for %s exhausted: a retry after %s was refused, and retries stay off "
        "until the budget refills",
        destination,
        reason,
    )


def budget_restored(destination: str) -> None:
    """The retry budget allows retries again after a dry spell."""
    logger.info("retry budget for %s refilled: retries are allowed again", destination)
