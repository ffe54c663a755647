"""Broker plumbing: reachability probes and a private RabbitMQ node for tests and outages."""
