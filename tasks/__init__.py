"""SeqIO task and mixture registrations, one module per dataset family.

Importing a module registers its tasks; a user adds a module (or calls
`dss_jax.data.tasks.register_cache_task`) to add a task.
"""
