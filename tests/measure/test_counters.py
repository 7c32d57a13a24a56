"""Window differences of the app's counters: counters subtract, gauges and identities are dropped."""

from __future__ import annotations

from scalesim.measure.counters import numeric_delta, sum_counters


def test_delta_keeps_counters_and_drops_gauges() -> None:
    before = {"pid": 10, "queries": {"primary": 5, "replica-1": 1}, "cache": {"hits": 2, "misses": 1},
              "known_replay_lsn": {"replica-1": 100}, "query_cache": None}
    after = {"pid": 10, "queries": {"primary": 9, "replica-1": 4, "replica-2": 3}, "cache": {"hits": 7, "misses": 1},
             "known_replay_lsn": {"replica-1": 900}, "query_cache": None, "sessions_in_memory": 40}
    assert numeric_delta(before, after) == {"queries": {"primary": 4, "replica-1": 3, "replica-2": 3},
                                            "cache": {"hits": 5, "misses": 0}}


def test_sum_over_app_servers() -> None:
    parts = [{"cache": {"hits": 1, "misses": 2}}, {"cache": {"hits": 3, "misses": 0}, "lsn_probes": 4}]
    assert sum_counters(parts) == {"cache": {"hits": 4, "misses": 2}, "lsn_probes": 4}
