"""Streaming inference and the action loop (seed 004): predictions on arriving events, side effects apart."""
