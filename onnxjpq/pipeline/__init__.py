"""The one compress path: find -> solve -> plan -> rewrite -> check, over in-memory or memory-mapped weights."""
