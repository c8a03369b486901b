"""auth_svc: who is calling, for which tenants, with which scopes."""
