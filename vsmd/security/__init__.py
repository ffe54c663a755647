"""The trust boundary: broker identities for VSMs and operators, and what each may do."""
