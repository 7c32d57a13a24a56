"""Measuring the nodes of a running stage: CPU budgets and CPU seconds, app counters, replication lag."""
