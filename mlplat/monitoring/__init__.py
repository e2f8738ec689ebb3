"""Service C: drift statistics, time buckets and drift runs (seed 000)."""
