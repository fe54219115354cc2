"""HTTP routers, one per resource. Handlers parse and answer; the domain modules decide."""
