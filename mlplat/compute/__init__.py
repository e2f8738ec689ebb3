"""The balancer: every service hands work to it instead of running heavy code on the event loop."""
