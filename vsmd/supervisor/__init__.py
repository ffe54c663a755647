"""Process pool: the fork server that forks and reaps VSMs, and the daemon's handle on it."""
