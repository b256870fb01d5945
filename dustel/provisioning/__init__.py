"""Provisioning: schema, domain rules and repositories for tenants, accounts,
numbers, features.  Rules the database can hold live in the migrations
(constraints, triggers); the Python modules validate input shape and
orchestrate."""
