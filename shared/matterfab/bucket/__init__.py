"""The bucket, typed: every object key (`keys`), every stored JSON object's model (`models`),
and the typed reads and writes services use (`objects`).

The bucket is the durable contract of the pipeline (docs/objects-and-messages.md): a service
never builds a key or parses a stored object itself. Import the submodules
(`from matterfab.bucket import keys, objects`); this package imports nothing itself, so that
`matterfab.messages` can import `bucket.keys` without a cycle.
"""
