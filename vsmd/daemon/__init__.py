"""Everything that runs in the daemon process: control plane, spawn manager, lifecycle,
registry, admission, quotas sampler, journal, events and the state store."""
