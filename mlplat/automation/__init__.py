"""Service D: model specs, training, evaluation, promotion policies, lifecycle (seeds 000 and 004)."""
