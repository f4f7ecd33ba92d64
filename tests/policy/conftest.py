"""Policy documents shared by the policy tests."""

from __future__ import annotations

GOOD_YAML = """\
version: 1
trust_domain: example.org
defaults:
  timeouts: {connect: 1s, attempt: 2s, total: 10s}
  retry:
    attempts: 3
    backoff: {base: 25ms, max: 1s}
    retry_on: [connect-failure, reset, 502, 503, 504]
    budget: {ratio: 0.2, min_per_second: 10}
services:
  payments:
    endpoints: ["http://127.0.0.1:8001", {url: "http://127.0.0.1:8002", zone: b}]
    identity: spiffe://example.org/payments
    retry: {attempts: 2}
    routes:
      - name: refunds
        match: {path_prefix: /v1/refunds, methods: [POST]}
        timeouts: {total: 30s}
        retry: {backoff: {max: 2s}}
      - match: {path_template: "/v1/charges/{id}", headers: {X-Canary: "yes"}}
        split: [{service: payments, weight: 90}, {service: payments-v2, weight: 10}]
    fault: {abort: {status: 503, percent: 5}}
    inbound:
      authz:
        default: deny
        rules: [{path_prefix: /v1/, allow: [spiffe://example.org/orders]}]
      rate_limit: {requests_per_second: 200, burst: 400}
      concurrency_limit: 64
  payments-v2:
    endpoints: ["http://127.0.0.1:8003"]
"""
