"""The real servers a stage runs on, one module per kind.

Each module knows how to find its binary, start it on a free loopback port inside a run folder,
tell when it is ready, and stop it: `postgres` (primary and streaming replicas), `keyvalue`
(Valkey or Redis), `balancer` (Caddy), `appserver` (uvicorn processes of the reference app) and
`workers` (the app's background workers). `process` holds what they share: starting a process in
its own process group with its log in the run folder, waiting for readiness, and stopping the
whole group.
"""
