"""Adapters for services we do not own: identity (JWKS); registration, scheduling, providers and
terminology to come."""
