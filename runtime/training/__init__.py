"""The work inside a lease.

- ``worker``: the Ray actor in one slot of a lease; follows its directive step by step;
- ``ingest``: datasets of slices, row ranges (the ledger) and the rate-limited token bucket;
- ``checkpoint``: atomic checkpoints with data offsets, on local disk or any ``pyarrow.fs`` URI;
- ``trainers``: scikit-learn ``partial_fit`` and PyTorch trainers behind one interface;
- ``isolation``: a worker's nice level and CPU pinning (a second line of defence);
- ``datagen``: synthetic regression slices for the demo and the tests.
"""
